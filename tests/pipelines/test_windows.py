"""Prepared forecasting data on disk and the batches a worker cuts from it
(pipelines.windows). Series values name their grid positions (normalize=none), so a
batch can be checked against the positions it should hold."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines import timeseries, windows
from pipelines.errors import DataError
from pipelines.timeseries import SPLITS, SeriesOptions, prepare
from pipelines.windows import (
    WindowBatches,
    Windows,
    read_layout,
    read_share,
    write_layout,
    write_prepared,
)

SEASON, INPUT_LEN, HORIZON = 3, 4, 5


def prepared(tmp_path, monkeypatch, per_stretch=8, per_file=2):
    """Two series (a: value = position, b: 1000 + position) and a covariate, in many
    small stretches spread over several files."""
    monkeypatch.setattr(timeseries, "WINDOWS_PER_STRETCH", per_stretch)
    monkeypatch.setattr(windows, "STRETCHES_PER_FILE", per_file)
    n = 160
    positions = np.arange(n)
    table = pa.table({"time": pa.array(np.tile(positions, 2)),
                      "id": ["a"] * n + ["b"] * n,
                      "y": np.concatenate([positions, 1000 + positions]).astype(float),
                      "x": np.concatenate([-positions, -positions]).astype(float)})
    options = SeriesOptions(time_column="time", targets=("y",), covariates=("x",),
                            series_id="id", input_len=INPUT_LEN, horizon=HORIZON,
                            season=SEASON, normalize="none", val_fraction=0.25,
                            test_fraction=0.25)
    layout, stretches = prepare(table, options, "memory")
    directory = str(tmp_path / "prepared")
    write_prepared(directory, layout, stretches)
    write_layout(directory, layout)
    return directory, layout, stretches


def key(stretch) -> tuple[int, int]:
    return stretch.series, stretch.first


def test_round_trip(tmp_path, monkeypatch):
    assert read_layout(str(tmp_path / "prepared")) is None  # nothing prepared yet
    directory, layout, stretches = prepared(tmp_path, monkeypatch)
    assert read_layout(directory) == layout
    assert len(list((tmp_path / "prepared" / "train").glob("*.parquet"))) > 1
    for split in SPLITS:
        back = read_share(directory, split, 0, 1, layout)
        assert [key(s) for s in back] == [key(s) for s in stretches[split]]
        for mine, theirs in zip(back, stretches[split], strict=True):
            assert mine.values.dtype == np.float32
            np.testing.assert_array_equal(mine.values, theirs.values)


@pytest.mark.parametrize("world", [2, 3])
def test_shares_are_disjoint_and_cover_every_stretch(tmp_path, monkeypatch, world):
    directory, layout, stretches = prepared(tmp_path, monkeypatch)
    for split in SPLITS:
        shares = [[key(s) for s in read_share(directory, split, rank, world, layout)]
                  for rank in range(world)]
        every = [key(s) for s in stretches[split]]
        assert sorted(sum(shares, [])) == sorted(every)  # each once: disjoint and covering
        for rank, share in enumerate(shares):  # rows rank, rank + world, ...
            assert share == every[rank::world]


def test_train_batch_is_a_pure_function_of_seed_rank_and_step(tmp_path, monkeypatch):
    directory, layout, _ = prepared(tmp_path, monkeypatch)

    def batches(seed, rank=0, world=1):
        return WindowBatches(directory, layout, batch_size=16, seed=seed, rank=rank,
                             world=world)

    first, again = batches(7), batches(7)
    for step in (1, 5, 40):
        one, two = first.train_batch(step), again.train_batch(step)
        assert one.keys() == two.keys()
        for name in one:
            assert torch_equal(one[name], two[name])
    assert not torch_equal(first.train_batch(5)["targets"], first.train_batch(6)["targets"])
    assert not torch_equal(first.train_batch(5)["targets"], batches(8).train_batch(5)["targets"])
    # asking out of order changes nothing (a resumed run sees the same batches)
    assert torch_equal(batches(7).train_batch(40)["targets"], first.train_batch(40)["targets"])
    assert not torch_equal(batches(7, 0, 2).train_batch(1)["targets"],
                           batches(7, 1, 2).train_batch(1)["targets"])


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def test_an_epoch_visits_every_window_once(tmp_path, monkeypatch):
    directory, layout, stretches = prepared(tmp_path, monkeypatch)
    count = len(Windows(stretches["train"], layout, "train"))
    size = 7
    assert count % size  # the epoch ends inside a batch
    batches = WindowBatches(directory, layout, batch_size=size, seed=3, rank=0, world=1)
    steps = -(-2 * count // size)  # two epochs and a bit
    seen = np.concatenate([identify(batches.train_batch(step)) for step in range(1, steps + 1)])
    train = Windows(stretches["train"], layout, "train")
    everything = identify(train.batch(np.arange(count), False))
    assert sorted(seen[:count]) == sorted(everything)  # first epoch: each window once
    assert sorted(seen[count:2 * count]) == sorted(everything)  # and again
    assert list(seen[:count]) != list(seen[count:2 * count])  # in a fresh order


def identify(batch) -> np.ndarray:
    """A window's name: series * 10_000 + its first target's position."""
    first = batch["targets"][:, 0, 0].numpy() % 1000
    return batch["series"].numpy() * 10_000 + first.astype(int)


def test_batch_shapes_and_contents(tmp_path, monkeypatch):
    directory, layout, _ = prepared(tmp_path, monkeypatch)
    batches = WindowBatches(directory, layout, batch_size=6, seed=0, rank=0, world=1)
    batch = batches.train_batch(3)
    assert batch["inputs"].shape == (6, INPUT_LEN, 2)
    assert batch["targets"].shape == (6, HORIZON, 1)
    assert batch["lengths"].tolist() == [INPUT_LEN] * 6
    assert "seasonal" not in batch
    position = batch["targets"][:, 0, 0].numpy() % 1000
    level = batch["series"].numpy() * 1000.0
    # inputs: the INPUT_LEN steps right before the targets, the covariate -position
    np.testing.assert_array_equal(batch["inputs"][:, :, 0].numpy(),
                                  level[:, None] + position[:, None] + np.arange(-INPUT_LEN, 0))
    np.testing.assert_array_equal(batch["inputs"][:, :, 1].numpy(),
                                  -(position[:, None] + np.arange(-INPUT_LEN, 0)))
    np.testing.assert_array_equal(batch["targets"][:, :, 0].numpy(),
                                  level[:, None] + position[:, None] + np.arange(HORIZON))


def test_validation_batches_carry_the_value_one_season_earlier(tmp_path, monkeypatch):
    monkeypatch.setattr(windows, "VALIDATION_BATCH", 10)
    directory, layout, stretches = prepared(tmp_path, monkeypatch)
    batches = WindowBatches(directory, layout, batch_size=4, seed=0, rank=0, world=1)
    test = Windows(stretches["test"], layout, "test")
    for chunks, split in ((list(batches.validation_batches()), "val"),
                          (list(test.in_order()), "test")):
        assert [len(c["targets"]) for c in chunks[:-1]] == [10] * (len(chunks) - 1)
        split_windows = Windows(stretches[split], layout, split)
        assert sum(len(c["targets"]) for c in chunks) == len(split_windows)
        for chunk in chunks:
            targets, seasonal = chunk["targets"].numpy(), chunk["seasonal"].numpy()
            assert seasonal.shape == targets.shape == (len(targets), HORIZON, 1)
            # lead h looks back whole seasons until it lands in the history:
            # h = 0,1,2 -> 3 steps back; h = 3,4 -> 6 steps back
            back = np.array([3, 3, 3, 6, 6])[None, :, None]
            np.testing.assert_array_equal(seasonal, targets - back)
            history_end = targets[:, :1, :] - 1
            assert (seasonal <= history_end).all()  # never a value from the horizon


def test_a_rank_without_training_windows_is_refused(tmp_path, monkeypatch):
    directory, layout, stretches = prepared(tmp_path, monkeypatch)
    world = len(stretches["train"]) + 1
    with pytest.raises(DataError, match=f"worker {world - 1} of {world}.*num_workers"):
        WindowBatches(directory, layout, batch_size=4, seed=0, rank=world - 1, world=world)


def test_drop_removes_windows_with_a_missing_step(tmp_path):
    values = np.arange(100.0)
    values[40] = np.nan
    layout = timeseries.ForecastLayout(
        time_column="t", series_id="", targets=("y",), covariates=(), input_len=3,
        horizon=2, stride=1, season=1, freq=1, time_kind="index", normalize="none",
        missing="drop", quantiles=(), series=("",), offset=((0.0,),), scale=((1.0,),),
        train_mean=((0.0,),), mase_scale=(1.0,))
    stretch = timeseries.Stretch(0, 0, values.astype(np.float32)[:, None])
    found = Windows([stretch], layout, "train")
    batch = found.batch(np.arange(len(found)), seasonal=True)
    starts = batch["targets"][:, 0, 0].numpy().astype(int)
    assert set(starts) == set(range(3, 99)) - set(range(39, 44))  # [s-3, s+2) holds 40
    assert not np.isnan(batch["inputs"].numpy()).any()


def test_a_rank_with_training_windows_but_no_validation_stretch(tmp_path, monkeypatch):
    directory, layout, stretches = prepared(tmp_path, monkeypatch)
    world = len(stretches["val"]) + 1
    assert len(stretches["train"]) > world  # the last rank has train stretches only
    batches = WindowBatches(directory, layout, batch_size=4, seed=0, rank=world - 1,
                            world=world)
    assert list(batches.validation_batches()) == []
    assert batches.train_batch(1)["targets"].shape == (4, HORIZON, 1)
