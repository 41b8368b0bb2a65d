from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.errors import DataError
from pipelines.parquet import (
    METADATA_KEY,
    TaskInfo,
    channel_statistics,
    difficulty_quantiles,
    read_task_info,
    write_dataset,
)
from pipelines.synthetic import AddingProblem, CopyMemory, rng_for, validation_set


def _read_rows(path: Path) -> dict[str, np.ndarray]:
    """A written file back as numpy arrays (all rows of a synthetic file share a length)."""
    table = pq.read_table(path)
    return {name: np.array(table[name].to_pylist()) for name in table.column_names}


def _assert_rows_equal(path: Path, batch: dict[str, np.ndarray]) -> None:
    rows = _read_rows(path)
    assert set(rows) == set(batch) - {"lengths"}
    for name, array in rows.items():
        np.testing.assert_array_equal(array.astype(batch[name].dtype), batch[name])


@pytest.mark.parametrize("task", [AddingProblem(6), CopyMemory(5, n_symbols=3, copy_len=2)],
                         ids=["adding", "copy"])
def test_write_dataset_round_trip(tmp_path: Path, task) -> None:
    write_dataset(task, tmp_path / "ds", rows=10, val_rows=5, seed=3, rows_per_file=4)
    train = sorted((tmp_path / "ds" / "train").iterdir())
    assert [path.name for path in train] == [f"part-0000{i}.parquet" for i in range(3)]
    for part, (path, rows) in enumerate(zip(train, (4, 4, 2), strict=True)):
        _assert_rows_equal(path, task.generate(rng_for(3, 0, part), rows))
    val = validation_set(task, 3, 5)
    val_files = sorted((tmp_path / "ds" / "val").iterdir())
    _assert_rows_equal(val_files[0], {key: array[:4] for key, array in val.items()})
    _assert_rows_equal(val_files[1], {key: array[4:] for key, array in val.items()})
    expected = TaskInfo(task.kind, task.input_size, task.output_size, task.baseline)
    assert read_task_info(tmp_path / "ds" / "train") == expected
    assert read_task_info(tmp_path / "ds" / "val") == expected
    assert json.loads(pq.read_schema(train[0]).metadata[METADATA_KEY])["task"] == task.name


def test_written_schema_matches_the_row_schema(tmp_path: Path) -> None:
    write_dataset(CopyMemory(4), tmp_path / "ds", rows=2, val_rows=1, seed=0)
    schema = pq.read_schema(tmp_path / "ds" / "train" / "part-00000.parquet")
    assert schema.field("inputs").type == pa.list_(pa.list_(pa.float32()))
    assert schema.field("targets").type == pa.list_(pa.int64())
    assert schema.field("scored").type == pa.list_(pa.bool_())


def test_write_dataset_refuses_a_non_empty_out_dir(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("earlier run")
    with pytest.raises(DataError, match=re.escape(str(tmp_path))):
        write_dataset(AddingProblem(4), tmp_path, rows=2, val_rows=1, seed=0)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["old.txt"]


def test_write_dataset_rejects_zero_rows(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="val_rows"):
        write_dataset(AddingProblem(4), tmp_path / "ds", rows=2, val_rows=0, seed=0)


def _write(split_dir: Path, columns: dict[str, pa.Array]) -> Path:
    split_dir.mkdir(parents=True, exist_ok=True)
    path = split_dir / "part-00000.parquet"
    pq.write_table(pa.table(columns), path)
    return path


_INPUTS = pa.array([[[0.5, 1.0], [1.5, 2.0]], [[3.0, 4.0]]], type=pa.list_(pa.list_(pa.float32())))


def test_read_task_info_infers_sizes_without_metadata(tmp_path: Path) -> None:
    _write(tmp_path / "reg", {"inputs": _INPUTS, "targets": pa.array([[1.0, 2.0, 3.0]] * 2)})
    assert read_task_info(tmp_path / "reg") == TaskInfo("regression", 2, 3, None)
    _write(tmp_path / "step", {"inputs": _INPUTS, "targets": pa.array([[1, 0], [2]])})
    assert read_task_info(tmp_path / "step", num_classes=5) == TaskInfo("per_step", 2, 5, None)
    _write(tmp_path / "seq", {"inputs": _INPUTS, "targets": pa.array([1, 0])})
    assert read_task_info(tmp_path / "seq", num_classes=2) == TaskInfo("sequence", 2, 2, None)


def test_read_task_info_needs_num_classes_for_classification_without_metadata(
        tmp_path: Path) -> None:
    path = _write(tmp_path, {"inputs": _INPUTS, "targets": pa.array([[1, 0], [2]])})
    with pytest.raises(DataError, match="task.num_classes") as error:
        read_task_info(tmp_path)
    assert str(path) in str(error.value)


def test_read_task_info_rejects_missing_and_empty_dirs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nope"))):
        read_task_info(tmp_path / "nope")
    with pytest.raises(DataError, match="no .parquet files"):
        read_task_info(tmp_path)


@pytest.mark.parametrize("columns, column", [
    ({"inputs": pa.array([[0.5, 1.0]]), "targets": pa.array([[1.0]])}, "`inputs`"),
    ({"inputs": pa.array([[["a"]]]), "targets": pa.array([[1.0]])}, "`inputs`"),
    ({"inputs": _INPUTS}, "`targets`"),
    ({"targets": pa.array([[1.0]] * 2)}, "`inputs`"),
    ({"inputs": _INPUTS, "targets": pa.array(["a", "b"])}, "`targets`"),
    ({"inputs": _INPUTS, "targets": pa.array([1, 0]), "scored": pa.array([[True], [True]])},
     "`scored`"),
], ids=["flat-inputs", "string-inputs", "no-targets", "no-inputs", "string-targets",
        "scored-with-sequence"])
def test_read_task_info_rejects_bad_columns_naming_file_and_column(
        tmp_path: Path, columns: dict[str, pa.Array], column: str) -> None:
    path = _write(tmp_path, columns)
    with pytest.raises(DataError, match=column) as error:
        read_task_info(tmp_path, num_classes=3)
    assert str(path) in str(error.value)


def test_read_task_info_rejects_num_classes_that_contradict_metadata(tmp_path: Path) -> None:
    write_dataset(CopyMemory(4, n_symbols=5), tmp_path / "ds", rows=2, val_rows=1, seed=0)
    assert read_task_info(tmp_path / "ds" / "train", num_classes=6).output_size == 6
    with pytest.raises(DataError, match="task.num_classes is 4"):
        read_task_info(tmp_path / "ds" / "train", num_classes=4)


def ragged_split(tmp_path: Path) -> Path:
    """Rows of lengths 1..100 with a `rank` column that runs the other way."""
    lengths = np.arange(1, 101)
    inputs = [[[float(t)] for t in range(n)] for n in lengths]
    table = pa.table({"inputs": inputs, "targets": [[0.0]] * 100,
                      "rank": (101 - lengths).astype(np.int32)})
    split = tmp_path / "train"
    split.mkdir()
    pq.write_table(table.slice(0, 60), split / "part-0.parquet")
    pq.write_table(table.slice(60), split / "part-1.parquet")
    return split


def test_difficulty_quantiles_by_length_and_by_column(tmp_path):
    split = ragged_split(tmp_path)
    by_length = difficulty_quantiles(split, "length")
    assert len(by_length) == 101 and by_length[0] == 1 and by_length[-1] == 100
    assert by_length == sorted(by_length) and by_length[50] in (50, 51)
    assert difficulty_quantiles(split, "rank")[-1] == 100


def test_difficulty_column_must_exist_and_be_integer(tmp_path):
    split = ragged_split(tmp_path)
    with pytest.raises(DataError, match="`level` is missing"):
        difficulty_quantiles(split, "level")
    pq.write_table(pa.table({"inputs": [[[1.0]]], "targets": [[0.0]], "rank": [0.5]}),
                   split / "part-2.parquet")
    for path in list(split.glob("part-[01].parquet")):
        path.unlink()
    with pytest.raises(DataError, match="expected an integer per row"):
        difficulty_quantiles(split, "rank")


def test_channel_statistics_are_those_of_every_step_of_the_split(tmp_path: Path) -> None:
    _write(tmp_path / "train", {"inputs": _INPUTS, "targets": pa.array([1, 0])})
    second = pa.array([[[7.0, 4.0], [5.0, 4.0]]], type=pa.list_(pa.list_(pa.float32())))
    pq.write_table(pa.table({"inputs": second, "targets": pa.array([1])}),
                   tmp_path / "train" / "part-00001.parquet")
    steps = np.array([[0.5, 1.0], [1.5, 2.0], [3.0, 4.0], [7.0, 4.0], [5.0, 4.0]])
    mean, std = channel_statistics(tmp_path / "train")
    np.testing.assert_allclose(mean, steps.mean(axis=0))
    np.testing.assert_allclose(std, steps.std(axis=0))


def test_channel_statistics_leave_a_constant_channel_unscaled_and_refuse_bad_steps(
        tmp_path: Path) -> None:
    flat = pa.array([[[2.0, 1.0], [2.0, 5.0]]], type=pa.list_(pa.list_(pa.float32())))
    _write(tmp_path / "flat", {"inputs": flat, "targets": pa.array([0])})
    mean, std = channel_statistics(tmp_path / "flat")
    assert mean == (2.0, 3.0) and std == (1.0, 2.0)  # channel 0 never varies
    bad = pa.array([[[2.0, float("nan")]]], type=pa.list_(pa.list_(pa.float32())))
    path = _write(tmp_path / "bad", {"inputs": bad, "targets": pa.array([0])})
    with pytest.raises(DataError, match="task.normalize_channels") as error:
        channel_statistics(tmp_path / "bad")
    assert str(path) in str(error.value)
    ragged = pa.array([[[2.0, 1.0], [2.0]]], type=pa.list_(pa.list_(pa.float32())))
    path = _write(tmp_path / "ragged", {"inputs": ragged, "targets": pa.array([0])})
    with pytest.raises(DataError, match="between 1 and 2 features") as error:
        channel_statistics(tmp_path / "ragged")
    assert str(path) in str(error.value)
