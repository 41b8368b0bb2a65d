"""Labelled sequences converted into a Parquet classification task
(pipelines.labelled_sequences): the .ts reader, the long-table reader, the checks, the
stratified validation split and the written splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.errors import DataError
from pipelines.labelled_sequences import (
    Labelled,
    checked,
    convert,
    fetch_archive,
    read_classes,
    read_long_table,
    read_ts,
    split_off,
)
from pipelines.parquet import read_task_info

TS = """@problemName tiny
@timeStamps false
@missing false
@univariate false
@dimensions 2
@equalLength false
@classLabel true walk run
@data
1.0,2.0,3.0:4.0,5.0,6.0:walk
7.0,8.0:9.0,10.0:run
"""


def test_a_ts_file_is_read_case_by_case_with_its_channels_side_by_side(tmp_path):
    (tmp_path / "tiny.ts").write_text(TS)
    data = read_ts(tmp_path / "tiny.ts")
    assert data.labels == ["walk", "run"]
    assert data.sequences[0].tolist() == [[1, 4], [2, 5], [3, 6]]
    assert data.sequences[1].shape == (2, 2) and data.sequences[1].dtype == np.float32


def test_a_ts_case_whose_channels_differ_in_length_is_refused(tmp_path):
    (tmp_path / "bad.ts").write_text(TS.replace("7.0,8.0:9.0,10.0", "7.0,8.0:9.0"))
    with pytest.raises(DataError, match=r"bad\.ts: case 1 has channels of different lengths"):
        read_ts(tmp_path / "bad.ts")


def long_table() -> pd.DataFrame:
    return pd.DataFrame({"take": ["b", "a", "a", "b", "a"], "t": [1, 2, 1, 0, 3],
                         "ax": [1.0, 2.0, 3.0, 4.0, 5.0], "ay": [0.5] * 5,
                         "gesture": ["wave", "tap", "tap", "wave", "tap"]})


def test_a_long_table_is_grouped_by_sequence_in_time_order(tmp_path):
    long_table().to_csv(tmp_path / "steps.csv", index=False)
    data = read_long_table(str(tmp_path / "steps.csv"), "take", "t", ["ax", "ay"], "gesture")
    assert data.labels == ["tap", "wave"]
    assert data.sequences[0][:, 0].tolist() == [3.0, 2.0, 5.0]  # a at t = 1, 2, 3
    assert data.sequences[1][:, 0].tolist() == [4.0, 1.0]


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop(columns="gesture"), "column `gesture` is missing"),
    (lambda t: t.assign(gesture=["wave", "tap", "run", "wave", "tap"]),
     "sequence 'a' has more than one value in label column `gesture`"),
    (lambda t: t.assign(gesture=[None, "tap", "tap", None, "tap"]),
     "label column `gesture` has empty values"),
    (lambda t: t.assign(ax=[1.0, np.nan, 3.0, 4.0, 5.0]), "sequence 0 holds NaN"),
])
def test_bad_long_tables_are_refused_naming_file_and_column(tmp_path, change, message):
    change(long_table()).to_csv(tmp_path / "steps.csv", index=False)
    with pytest.raises(DataError, match=message):
        read_long_table(str(tmp_path / "steps.csv"), "take", "t", ["ax", "ay"], "gesture")


def labelled(counts: dict[str, int], channels: int = 2) -> Labelled:
    rng = np.random.default_rng(0)
    labels = [name for name, count in counts.items() for _ in range(count)]
    sequences = [rng.normal(size=(int(rng.integers(3, 9)), channels)).astype(np.float32)
                 for _ in labels]
    return Labelled(sequences, labels, "source.ts")


def test_sequences_without_steps_or_with_other_channels_are_refused():
    data = labelled({"a": 3})
    with pytest.raises(DataError, match="source.ts: sequence 1 has no steps"):
        checked(Labelled([data.sequences[0], np.zeros((0, 2), np.float32)], ["a", "a"],
                         "source.ts"))
    with pytest.raises(DataError, match="different numbers of channels"):
        checked(Labelled([data.sequences[0], np.zeros((4, 3), np.float32)], ["a", "a"],
                         "source.ts"))


def test_the_validation_split_takes_the_same_share_of_every_class():
    rest, val = split_off(labelled({"a": 20, "b": 10}), 0.2, seed=0)
    assert sorted(val.labels) == ["a"] * 4 + ["b"] * 2 and len(rest.labels) == 24
    again, _ = split_off(labelled({"a": 20, "b": 10}), 0.2, seed=0)
    assert [s.tolist() for s in again.sequences] == [s.tolist() for s in rest.sequences]


def test_convert_writes_sharded_splits_that_describe_their_task(tmp_path):
    counts = convert(labelled({"3": 10, "10": 10, "1": 10}), tmp_path / "out",
                     labelled({"1": 4, "10": 2}))
    assert counts == {"train": 24, "val": 6, "test": 6}
    info = read_task_info(tmp_path / "out" / "train")
    assert (info.kind, info.input_size, info.output_size) == ("sequence", 2, 3)
    assert read_classes(tmp_path / "out" / "train") == ["1", "3", "10"]  # numbers in order
    assert len(list((tmp_path / "out" / "train").glob("*.parquet"))) == 4
    test = pq.read_table(tmp_path / "out" / "test")
    assert sorted(test["targets"].to_pylist()) == [0] * 4 + [2] * 2


def test_convert_refuses_one_class_and_labels_the_training_split_lacks(tmp_path):
    with pytest.raises(DataError, match="every sequence has label 'a'"):
        convert(labelled({"a": 10}), tmp_path / "one")
    with pytest.raises(DataError, match=r"label\(s\) 'c' never occur in the training split"):
        convert(labelled({"a": 10, "b": 10}), tmp_path / "two", labelled({"c": 2}))


def test_japanese_vowels_comes_from_sktimes_wheel_as_a_parquet_task(tmp_path):
    out = fetch_archive("japanese_vowels", tmp_path / "jv")
    info = read_task_info(out / "train")
    assert (info.kind, info.input_size, info.output_size) == ("sequence", 12, 9)
    rows = {split: pq.read_table(out / split).num_rows for split in ("train", "val", "test")}
    assert rows == {"train": 216, "val": 54, "test": 370}  # the archive's 270 + 370
    assert (out / "SOURCE.json").is_file()
