"""Forecasting tables -> prepared stretches (pipelines.tables + pipelines.timeseries).

Tables are written to tmp_path and read back through `read_table` then `prepare`, as the
driver's `prepare_forecast` does. A series whose value at grid position i is i makes
every stored value name its own position, so window boundaries can be read off them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from orchestrator.config import Config, ConfigError
from pipelines import timeseries
from pipelines.errors import DataError
from pipelines.tables import read_table
from pipelines.timeseries import (
    SeriesOptions,
    infer_season,
    merge_layouts,
    parse_freq,
    prepare,
    window_offsets,
)
from pipelines.windows import Windows

HOUR = 3600 * 10**9


def write(tmp_path: Path, columns: dict, name: str = "data.parquet") -> str:
    path = tmp_path / name
    table = pa.table(columns)
    if name.endswith(".csv"):
        pcsv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    return str(path)


def write_csv_text(tmp_path: Path, text: str, name: str = "data.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load(path: str, options: SeriesOptions):
    """read_table + prepare, as orchestrator.driver.prepare_forecast does."""
    table = read_table(path, time_column=options.time_column,
                       value_columns=[*options.targets, *options.covariates],
                       id_column=options.series_id)
    return prepare(table, options, path)


def hours(n: int, start: str = "2024-01-01 00:00:00") -> pa.Array:
    return pa.array(pd.date_range(start, periods=n, freq="h").to_numpy(), pa.timestamp("ns"))


def options(**overrides) -> SeriesOptions:
    base = dict(time_column="time", targets=("y",), input_len=10, horizon=5, stride=1,
                val_fraction=0.25, test_fraction=0.125, normalize="none", season=1)
    return SeriesOptions(**(base | overrides))


def target_positions(stretches, layout, split="train",
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(target start, inputs, targets) of every window of a split, as grid positions
    (value = i)."""
    windows = Windows(stretches, layout, split)
    batch = windows.batch(np.arange(len(windows)), seasonal=False)
    targets = batch["targets"][:, :, 0].numpy()
    return targets[:, 0].astype(int), batch["inputs"][:, :, 0].numpy(), targets


def reassemble(stretches: dict, series: int) -> dict[int, np.ndarray]:
    """Grid position -> stored values of one series, from every split's stretches
    (which overlap where a history reaches back: they must agree there)."""
    values = {}
    for split in timeseries.SPLITS:
        for stretch in stretches[split]:
            if stretch.series != series:
                continue
            for k, row in enumerate(stretch.values):
                position = stretch.first + k
                if position in values:
                    np.testing.assert_array_equal(values[position], row)
                values[position] = row
    return values


# --- windows and split boundaries: no leakage ------------------------------------------

N = 200  # test = 200 - 25 = 175, val = 175 - 50 = 125


@pytest.fixture
def ramp(tmp_path):
    return write(tmp_path, {"time": pa.array(np.arange(N)), "y": pa.array(np.arange(N) * 1.0)})


@pytest.mark.parametrize("stride", [1, 3])
@pytest.mark.parametrize("per_stretch", [1024, 4])
def test_windows_never_leak_targets_across_splits(ramp, monkeypatch, stride, per_stretch):
    monkeypatch.setattr(timeseries, "WINDOWS_PER_STRETCH", per_stretch)
    layout, stretches = load(ramp, options(stride=stride, eval_stride=stride + 1))
    val, test, input_len, horizon = 125, 175, 10, 5
    assert layout.context == input_len

    starts, inputs, targets = target_positions(stretches["train"], layout, "train")
    assert targets.max() < val
    assert list(starts) == list(range(input_len, val - horizon + 1, stride))

    starts, inputs, targets = target_positions(stretches["val"], layout, "val")
    assert targets.min() >= val and targets.max() < test
    assert list(starts) == list(range(val, test - horizon + 1, stride + 1))
    assert (inputs < val).any()  # the first val window's history is in train
    assert inputs.min() == val - input_len

    starts, inputs, targets = target_positions(stretches["test"], layout, "test")
    assert targets.min() >= test and targets.max() < N
    assert list(starts) == list(range(test, N - horizon + 1, stride + 1))
    assert (inputs < test).any()

    # each window: input_len steps right before its horizon consecutive targets
    np.testing.assert_array_equal(inputs, starts[:, None] + np.arange(-input_len, 0))
    np.testing.assert_array_equal(targets, starts[:, None] + np.arange(horizon))
    if per_stretch == 4:
        assert len(stretches["train"]) > 1


def test_window_counts_follow_the_arithmetic(ramp):
    layout, stretches = load(ramp, options(stride=3, eval_stride=5))
    counts = {split: len(Windows(stretches[split], layout, split)) for split in timeseries.SPLITS}
    # train: targets start 10..120 every 3 -> 37; val: 125..170 every 5 -> 10;
    # test: 175..195 every 5 -> 5
    assert counts == {"train": 37, "val": 10, "test": 5}
    assert list(window_offsets(10 + 5 + 6, 10, 5, 3)) == [0, 3, 6]


def test_season_longer_than_input_len_widens_the_history(ramp):
    layout, stretches = load(ramp, options(input_len=4, season=8))
    assert layout.context == 8
    starts, inputs, _ = target_positions(stretches["train"], layout, "train")
    assert starts[0] == 8  # the first window needs a whole season of history
    np.testing.assert_array_equal(inputs, starts[:, None] + np.arange(-4, 0))


def test_fractions_are_not_rounded_down_by_binary_floats(tmp_path):
    path = write(tmp_path, {"time": pa.array(np.arange(100)), "y": pa.array(np.arange(100.0))})
    layout, stretches = load(path, options(val_fraction=0.29, test_fraction=0.29, horizon=1))
    starts, _, _ = target_positions(stretches["test"], layout, "test")
    assert starts[0] == 100 - 29  # 100 * 0.29 is 28.999... in floats
    starts, _, _ = target_positions(stretches["val"], layout, "val")
    assert starts[0] == 100 - 58


def test_cut_off_times_place_the_boundaries(tmp_path):
    n = 100
    path = write(tmp_path, {"time": hours(n), "y": pa.array(np.arange(n) * 1.0)})
    layout, stretches = load(path, options(val_start="2024-01-03 00:00:00",
                                           test_start="2024-01-03 20:30:00"))
    val, test = 48, 69  # 20:30 is off the grid: the first step at or after it
    starts, _, targets = target_positions(stretches["train"], layout, "train")
    assert targets.max() == val - 1
    starts, _, targets = target_positions(stretches["val"], layout, "val")
    assert starts[0] == val and targets.max() == test - 1
    starts, _, _ = target_positions(stretches["test"], layout, "test")
    assert starts[0] == test


def test_cut_off_times_are_per_series_grid_positions(tmp_path):
    # series b starts 5 hours later: the same cut-off is 5 positions earlier on its grid
    times = pa.concat_arrays([hours(100), hours(100, "2024-01-01 05:00:00")])
    values = np.concatenate([np.arange(100.0), 1000 + np.arange(100.0)])
    path = write(tmp_path, {"time": times, "id": ["a"] * 100 + ["b"] * 100,
                            "y": pa.array(values)})
    layout, stretches = load(path, options(series_id="id", val_start="2024-01-03",
                                           test_start="2024-01-04"))
    assert layout.series == ("a", "b")
    firsts = {}
    for split in ("val", "test"):
        windows = Windows(stretches[split], layout, split)
        batch = windows.batch(np.arange(len(windows)), seasonal=False)
        for name, code in (("a", 0), ("b", 1)):
            mine = batch["series"].numpy() == code
            firsts[split, name] = batch["targets"][mine, 0, 0].min().item()
    assert firsts == {("val", "a"): 48, ("val", "b"): 1043,
                      ("test", "a"): 72, ("test", "b"): 1067}


def three_series(tmp_path) -> str:
    return write(tmp_path, {"time": pa.array(list(range(40)) * 3),
                            "id": ["a"] * 40 + ["b"] * 40 + ["c"] * 40,
                            "y": np.arange(120.0)})


@pytest.mark.parametrize(("keys", "kept"), [({"series": ("c", "a")}, ("a", "c")),
                                            ({"skip_series": ("b",)}, ("a", "c")),
                                            ({}, ("a", "b", "c"))])
def test_series_and_skip_series_pick_the_series_to_train_on(tmp_path, keys, kept):
    layout, stretches = load(three_series(tmp_path), options(series_id="id", **keys))
    assert layout.series == kept
    trained = Windows(stretches["train"], layout, "train")
    values = trained.batch(np.arange(len(trained)), seasonal=False)["inputs"][:, 0, 0]
    assert {int(v) // 40 for v in values.tolist()} == {"abc".index(name) for name in kept}


@pytest.mark.parametrize("key", ["series", "skip_series"])
def test_a_series_the_table_lacks_is_refused_naming_it(tmp_path, key):
    message = error(three_series(tmp_path), series_id="id", **{key: ("a", "B")})
    assert f"task.{key}" in message and "'B'" in message and "a, b, c" in message


def test_skipping_every_series_is_refused(tmp_path):
    message = error(three_series(tmp_path), series_id="id", skip_series=("a", "b", "c"))
    assert "task.skip_series leaves none" in message


def test_picking_series_needs_a_series_id():
    with pytest.raises(ConfigError, match="task.series_id"):
        Config.from_dict({"task": {"name": "timeseries", "path": "t.csv", "time_column": "t",
                                 "targets": "y", "skip_series": ["a"]}})


def test_cut_off_precision_is_exact_to_the_nanosecond(tmp_path):
    series = timeseries.Series("", pd.Timestamp("2000-01-01").value, np.zeros((300_000, 1)))
    moment = pd.Timestamp("2000-01-01") + pd.Timedelta(hours=200_000) + pd.Timedelta(1, "ns")
    position = timeseries._position(str(moment), "task.val_start", series, HOUR, "timestamp")
    assert position == 200_001  # one nanosecond past a step: the next step


# --- normalization: fitted on the training split only ----------------------------------

def level_shifted(tmp_path):
    """Two series of 100 steps; val/test (from step 70) sit 1000 above train."""
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.normal(5, 2, 70), rng.normal(1005, 2, 30)])
    x = rng.normal(-3, 0.5, 100)
    ys = np.concatenate([y, 3 * y])
    xs = np.concatenate([x, x + 7])
    path = write(tmp_path, {"time": pa.array(np.tile(np.arange(100), 2)),
                            "id": ["a"] * 100 + ["b"] * 100, "y": ys, "x": xs})
    raw = {0: np.column_stack([y, x]), 1: np.column_stack([3 * y, x + 7])}
    return path, raw


@pytest.mark.parametrize("kind", ["standard", "minmax", "none"])
def test_normalization_is_fitted_on_train_and_inverts(tmp_path, kind):
    path, raw = level_shifted(tmp_path)
    layout, stretches = load(path, options(series_id="id", covariates=("x",), normalize=kind,
                                           val_fraction=0.15, test_fraction=0.15))
    offset, scale = layout.arrays()
    for series, values in raw.items():
        train = values[:70]  # test = 100 - 15 = 85, val = 85 - 15 = 70
        expected = {"standard": (train.mean(0), train.std(0)),
                    "minmax": (train.min(0), train.max(0) - train.min(0)),
                    "none": (np.zeros(2), np.ones(2))}[kind]
        np.testing.assert_allclose(offset[series], expected[0], rtol=1e-5)
        np.testing.assert_allclose(scale[series], expected[1], rtol=1e-5)
        stored = reassemble(stretches, series)
        assert sorted(stored) == list(range(100))
        restored = np.array([stored[i] for i in range(100)]) * scale[series] + offset[series]
        np.testing.assert_allclose(restored, values, rtol=1e-5, atol=1e-3)
    if kind == "standard":  # train part near 0, the shifted val part far above
        stored = reassemble(stretches, 0)
        assert abs(np.mean([stored[i][0] for i in range(70)])) < 1e-5
        assert np.mean([stored[i][0] for i in range(70, 100)]) > 100


def test_constant_feature_keeps_scale_one(tmp_path):
    path = write(tmp_path, {"time": pa.array(np.arange(100)), "y": np.arange(100.0),
                            "c": np.full(100, 4.0)})
    layout, _ = load(path, options(covariates=("c",), normalize="standard"))
    assert layout.scale[0][1] == 1.0 and layout.offset[0][1] == 4.0


# --- missing values ---------------------------------------------------------------------

def test_interpolate_fills_gaps_and_missing_values_linearly(tmp_path):
    n = 60
    square = np.arange(n) ** 2.0
    keep = np.array([i not in (10, 11, 12) for i in range(n)])  # rows 10-12 absent: a gap
    y = pa.array([None if i == 30 else v for i, v in enumerate(square)], pa.float64())
    path = write(tmp_path, {"time": hours(n).filter(pa.array(keep)), "y": y.filter(keep)})
    layout, stretches = load(path, options(missing="interpolate", input_len=5, horizon=2))
    assert layout.freq == HOUR and layout.time_kind == "timestamp"
    stored = reassemble(stretches, 0)
    filled = {i: stored[i][0] for i in (10, 11, 12, 30)}
    assert filled[11] == pytest.approx(81 + (169 - 81) * 2 / 4)  # between steps 9 and 13
    assert filled[10] == pytest.approx(81 + (169 - 81) / 4)
    assert filled[30] == pytest.approx((29**2 + 31**2) / 2)
    assert stored[29][0] == 29**2 and stored[31][0] == 31**2
    assert not any(np.isnan(v).any() for v in stored.values())


def test_drop_leaves_out_exactly_the_windows_touching_a_gap(tmp_path):
    n = 120  # test = 105, val = 75; context 5, horizon 3: a window spans [s - 5, s + 3)
    positions = np.array([i for i in range(n) if i != 50])  # no row at 50
    y = pa.array([None if i == 30 else float(i) for i in positions], pa.float64())
    path = write(tmp_path, {"time": pa.array(positions), "y": y})
    layout, stretches = load(path, options(missing="drop", input_len=5, horizon=3))
    starts, inputs, targets = target_positions(stretches["train"], layout, "train")
    touching = set(range(28, 36)) | set(range(48, 56))
    assert set(starts) == set(range(5, 75 - 3 + 1)) - touching
    assert not np.isnan(inputs).any() and not np.isnan(targets).any()
    assert len(starts) == 68 - 16
    stored = reassemble(stretches, 0)
    assert 30 not in stored and 50 not in stored  # a gap is stored in no stretch, never filled
    assert all(not np.isnan(s.values).any() for s in stretches["train"])
    assert len(Windows(stretches["val"], layout, "val")) == 105 - 3 - 75 + 1  # untouched


def test_drop_fits_statistics_around_the_missing_values(tmp_path):
    y = [None if i == 3 else float(i) for i in range(100)]
    path = write(tmp_path, {"time": pa.array(np.arange(100)), "y": pa.array(y, pa.float64())})
    layout, _ = load(path, options(missing="drop", normalize="standard"))
    train = np.array([i for i in range(63) if i != 3], float)  # test 88, val 63
    assert layout.offset[0][0] == pytest.approx(train.mean())
    assert layout.scale[0][0] == pytest.approx(train.std())
    assert layout.train_mean[0][0] == pytest.approx(train.mean())


def test_refuse_names_the_time_of_a_gap(tmp_path):
    keep = pa.array([i != 3 for i in range(50)])
    path = write(tmp_path, {"time": hours(50).filter(keep),
                            "y": pa.array(np.arange(50.0)).filter(keep)})
    with pytest.raises(DataError, match="2024-01-01 03:00:00") as info:
        load(path, options(missing="refuse"))
    assert "no row" in str(info.value) and "data.parquet" in str(info.value)
    assert "task.missing" in str(info.value)


def test_refuse_names_the_time_and_column_of_a_missing_value(tmp_path):
    x = pa.array([None if i == 7 else 1.0 for i in range(50)], pa.float64())
    path = write(tmp_path, {"time": hours(50), "y": np.arange(50.0), "temp": x})
    with pytest.raises(DataError, match="2024-01-01 07:00:00") as info:
        load(path, options(missing="refuse", covariates=("temp",)))
    assert "`temp`" in str(info.value)


# --- MASE scale, train mean, season -----------------------------------------------------

def test_mase_scale_and_train_mean_on_a_known_series(tmp_path):
    # season 2; a: 40 steps, train 20 (y1 = i + 10*(i%2): |y_t - y_t-2| = 2; y2 = 3i: 6)
    # b: 80 steps, train 40 (y1 = 2i: 4; y2 = 5: 0). Pooled over all 18 + 38 differences.
    a, b = np.arange(40.0), np.arange(80.0)
    y1 = np.concatenate([a + 10 * (a % 2), 2 * b])
    y2 = np.concatenate([3 * a, np.full(80, 5.0)])
    path = write(tmp_path, {"time": pa.array(np.concatenate([a, b]).astype(np.int64)),
                            "id": ["a"] * 40 + ["b"] * 80, "y1": y1, "y2": y2})
    layout, _ = load(path, options(series_id="id", targets=("y1", "y2"), season=2,
                                   input_len=4, horizon=2, val_fraction=0.25,
                                   test_fraction=0.25))
    assert layout.mase_scale == pytest.approx(((18 * 2 + 38 * 4) / 56, (18 * 6 + 0) / 56))
    assert layout.train_mean[0] == pytest.approx((14.5, 28.5))
    assert layout.train_mean[1] == pytest.approx((39.0, 5.0))


def test_mase_scale_falls_back_to_one_for_a_flat_training_split(tmp_path):
    path = write(tmp_path, {"time": pa.array(np.arange(100)), "y": np.full(100, 3.0)})
    layout, _ = load(path, options())
    assert layout.mase_scale == (1.0,)


@pytest.mark.parametrize("freq,season", [("1h", 24), ("15min", 96), ("1d", 7), ("7d", 52),
                                         ("5d", 1), ("7min", 1)])
def test_infer_season(freq, season):
    assert infer_season(parse_freq(freq, "timestamp"), "timestamp") == season


def test_parse_freq_reads_the_documented_spellings_without_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pandas deprecates "1d"; task.freq documents it
        assert parse_freq("1d", "timestamp") == 24 * HOUR
        assert parse_freq("15min", "timestamp") == HOUR // 4
        assert parse_freq("3", "index") == 3
    for text, kind in (("often", "timestamp"), ("1h", "index"), ("0", "index")):
        with pytest.raises(DataError, match="task.freq"):
            parse_freq(text, kind)


def test_task_freq_fixes_the_grid_over_the_most_common_step(tmp_path):
    # rows every 2 steps mostly, but task.freq=1 says the grid is 1: odd steps are gaps
    path = write(tmp_path, {"time": pa.array(np.arange(0, 200, 2)),
                            "y": np.arange(0, 200, 2.0)})
    layout, stretches = load(path, options(freq="1"))
    stored = reassemble(stretches, 0)
    assert layout.freq == 1 and len(stored) == 199 and stored[7][0] == 7.0
    assert load(path, options())[0].freq == 2


def test_infer_season_for_an_integer_index_is_one():
    assert infer_season(1, "index") == 1 and infer_season(24, "index") == 1


def test_prepare_infers_the_season_from_the_grid(tmp_path):
    n = 24 * 20
    path = write(tmp_path, {"time": hours(n), "y": np.arange(n * 1.0)})
    layout, _ = load(path, options(season=0, input_len=6))
    assert (layout.season, layout.context) == (24, 24)


# --- bad input: a DataError that names the file, column or key -------------------------

def error(path: str, **overrides) -> str:
    with pytest.raises(DataError) as info:
        load(path, options(**overrides))
    return str(info.value)


def test_missing_column(tmp_path):
    path = write_csv_text(tmp_path, "time,value\n0,1\n1,2\n")
    message = error(path)
    assert "data.csv" in message and "`y`" in message and "value" in message


def test_misspelt_column_in_parquet(tmp_path):
    path = write(tmp_path, {"time": pa.array(np.arange(10)), "y": np.arange(10.0)})
    message = error(path, covariates=("tmep",))
    assert "data.parquet" in message and "`tmep`" in message


def test_unparseable_timestamp(tmp_path):
    path = write_csv_text(tmp_path, "time,y\n2024-01-01 00:00:00,1\nyesterday,2\n")
    message = error(path)
    assert "data.csv" in message and "`time`" in message and "'yesterday'" in message


def test_duplicate_timestamps(tmp_path):
    rows = "".join(f"2024-01-01 {h:02d}:00:00,{h}\n" for h in (0, 1, 2, 2, 3))
    message = error(write_csv_text(tmp_path, "time,y\n" + rows))
    assert "data.csv" in message and "2024-01-01 02:00:00 twice" in message


def test_time_not_increasing_within_a_series(tmp_path):
    path = write(tmp_path, {"time": pa.array([0, 1, 2, 5, 4, 6] * 2),
                            "id": ["a"] * 6 + ["b"] * 6, "y": np.arange(12.0)})
    message = error(path, series_id="id")
    assert "goes back in time" in message and "from 5 to 4" in message
    assert "series 'a'" in message and "`time`" in message


def test_non_numeric_values(tmp_path):
    path = write_csv_text(tmp_path, "time,y\n0,1.5\n1,abc\n2,3\n")
    message = error(path)
    assert "data.csv" in message and "`y`" in message and "'abc'" in message


def test_numbers_python_reads_but_arrow_does_not_are_named(tmp_path):
    path = write(tmp_path, {"time": pa.array([0, 1, 2]), "y": ["1", "1_000", "2"]})
    message = error(path)
    assert "`y`" in message and "'1_000'" in message


def test_gap_under_refuse(tmp_path):
    path = write(tmp_path, {"time": pa.array([0, 1, 2, 4, 5]), "y": np.arange(5.0)})
    message = error(path, missing="refuse")
    assert "data.parquet" in message and "at 3" in message and "task.missing" in message


def test_split_too_short_for_input_len_and_horizon(tmp_path):
    path = write(tmp_path, {"time": pa.array(np.arange(40)), "y": np.arange(40.0)})
    message = error(path, input_len=30, horizon=5)  # train has 25 steps, needs 35
    assert "train split only 25" in message and "35" in message
    assert "task.input_len" in message and "task.horizon" in message


def test_val_split_too_short_for_the_horizon(tmp_path):
    path = write(tmp_path, {"time": pa.array(np.arange(40)), "y": np.arange(40.0)})
    message = error(path, input_len=2, horizon=11)  # val = 40 * 0.25 = 10 < 11
    assert "val split only 10" in message and "task.horizon=11" in message


def test_horizon_below_one_is_a_config_error():
    task = {"name": "timeseries", "path": "x.csv", "time_column": "t", "targets": "y",
            "horizon": 0}
    with pytest.raises(ConfigError, match=r"task\.horizon must be > 0"):
        Config.from_dict({"task": task})


def test_series_id_with_one_row_per_id(tmp_path):
    path = write(tmp_path, {"time": pa.array(np.arange(10)),
                            "station": [f"s{i}" for i in range(10)], "y": np.arange(10.0)})
    message = error(path, series_id="station")
    assert "`station`" in message and "task.series_id" in message


def test_off_grid_timestamps(tmp_path):
    minutes = [0, 60, 120, 180, 210, 240, 300, 360]
    times = pa.array([np.datetime64("2024-01-01T00:00", "ns") + np.timedelta64(m, "m")
                      for m in minutes], pa.timestamp("ns"))
    path = write(tmp_path, {"time": times, "y": np.arange(8.0)})
    message = error(path)
    assert "2024-01-01 03:30:00" in message and "off the regular grid" in message
    assert "task.freq" in message and "data.parquet" in message


def test_empty_time_cells(tmp_path):
    path = write(tmp_path, {"time": pa.array([0, None, 2]), "y": np.arange(3.0)})
    assert "`time`" in error(path) and "empty" in error(path)


def test_unknown_normalization_and_missing_policy(tmp_path):
    path = write(tmp_path, {"time": pa.array(np.arange(100)), "y": np.arange(100.0)})
    assert "task.normalize" in error(path, normalize="zscore")
    assert "task.missing" in error(path, missing="ffill")


def test_unknown_file_kind_and_missing_file(tmp_path):
    (tmp_path / "data.json").write_text("{}")
    assert "data.json" in error(str(tmp_path / "data.json"))
    assert "nope.csv does not exist" in error(str(tmp_path / "nope.csv"))


def test_directory_of_parquet_shards_reads_as_one_table(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for part in range(2):
        pq.write_table(pa.table({"time": pa.array(np.arange(50) + 50 * part),
                                 "y": np.arange(50.0) + 50 * part, "other": np.zeros(50)}),
                       shards / f"part-{part}.parquet")
    layout, stretches = load(str(shards), replace(options(), input_len=4))
    stored = reassemble(stretches, 0)
    assert [stored[i][0] for i in range(100)] == list(range(100))


def test_shards_prepared_apart_merge_into_one_layout_with_a_pooled_mase_scale():
    options = SeriesOptions(time_column="time", targets=("y",), series_id="id",
                            input_len=4, horizon=2, season=1, normalize="none")
    steps = np.arange(40)

    def shard(name: str, slope: float) -> pa.Table:
        return pa.table({"time": pa.array(steps * 3600 * 10**9, pa.timestamp("ns")),
                         "id": [name] * 40, "y": slope * steps.astype(float)})

    parts = [prepare(shard(name, slope), options, name)[0]
             for name, slope in (("a", 1.0), ("b", 3.0))]
    merged = merge_layouts(parts, "table/")
    assert merged.series == ("a", "b")
    assert merged.train_mean == parts[0].train_mean + parts[1].train_mean
    assert merged.mase_scale == pytest.approx((2.0,))  # |dy| is 1 in a, 3 in b: pooled 2
    with pytest.raises(DataError, match="series 'a' .* appears in two Parquet shards"):
        merge_layouts([parts[0], parts[0]], "table/")
    hourly_and_daily = [parts[0], prepare(shard("c", 1.0).set_column(
        0, "time", pa.array(steps * 86400 * 10**9, pa.timestamp("ns"))), options, "c")[0]]
    with pytest.raises(DataError, match="different time steps"):
        merge_layouts(hourly_and_daily, "table/")


def test_a_short_split_is_cut_into_enough_stretches_for_many_workers():
    values = np.zeros((1000, 1), np.float32)
    stretches = timeseries.cut_stretches(0, values, 168, 168 + 480, 168, 24, 1)
    assert len(stretches) == 61  # 481 windows, 8 a stretch: a share for up to 61 workers
    assert sum(len(window_offsets(len(s.values), 168, 24, 1)) for s in stretches) == 481
