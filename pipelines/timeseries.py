"""Forecasting tables: from rows of (time, series, values) to normalized series cut into
stretches, ready for workers to cut windows from lazily (`pipelines.windows`).

    time                 station   pm    temp          one row per step and series
    2010-01-01 00:00:00  A         129   -4.0
    2010-01-01 01:00:00  A         148   -4.0
    ...

Each series is checked (times strictly increasing, on one regular grid), put on that
grid (a step with no row is a gap), its gaps and missing values dealt with by
`missing` (interpolate, drop the windows that touch them, or refuse), split by time,
and normalized with statistics fitted on its training split alone.

Splits and windows. A window is `context` steps of history and the `horizon` steps
after it; the model reads the last `input_len` of the history, the seasonal-naive
baseline looks `season` steps back (context = max(input_len, season)). A window belongs
to the split that holds its targets:

    series:   | train ..................... | val ........ | test ........ |
    windows:  [history|targets]                              targets never cross
                               [history.....|targets]        into another split;
                                            history may reach back into the previous one

A split's windows are grouped into stretches of consecutive steps, the unit that is
stored and shared out to workers: a stretch is the contiguous values that its windows
cover, so windows are never materialised (each is a start index into a stretch).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import DataError

SPLITS = ("train", "val", "test")
NORMALIZATIONS = ("standard", "minmax", "none")
MISSING_POLICIES = ("interpolate", "drop", "refuse")
# Windows per stretch: at most WINDOWS_PER_STRETCH, and fewer in a short split, so that it
# still has STRETCHES_PER_SPLIT stretches to share out among workers (down to
# MIN_WINDOWS_PER_STRETCH, below which the repeated history would outweigh the windows).
WINDOWS_PER_STRETCH = 1024
STRETCHES_PER_SPLIT = 64
MIN_WINDOWS_PER_STRETCH = 8
_DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class SeriesOptions:
    """What the config says about the table (the `task.*` keys of a timeseries task)."""

    time_column: str
    targets: tuple[str, ...]
    covariates: tuple[str, ...] = ()
    series_id: str = ""
    series: tuple[str, ...] = ()  # train on only these series, or
    skip_series: tuple[str, ...] = ()  # on all but these
    input_len: int = 48
    horizon: int = 24
    stride: int = 1
    eval_stride: int = 1
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    val_start: str = ""
    test_start: str = ""
    normalize: str = "standard"
    missing: str = "interpolate"
    freq: str = ""
    season: int = 0
    quantiles: tuple[float, ...] = ()


@dataclass(frozen=True)
class ForecastLayout:
    """Everything needed to turn raw rows into model inputs and outputs back into values:
    stored with the prepared data, with every checkpoint and with the logged model.

    `offset` and `scale` are per series and feature (targets first, then covariates):
    normalized = (value - offset) / scale. `train_mean` (per series and target, original
    units) is the mean forecaster; `mase_scale` (per target) is the in-sample MAE of the
    seasonal-naive forecast on the training split, MASE's denominator.
    """

    time_column: str
    series_id: str
    targets: tuple[str, ...]
    covariates: tuple[str, ...]
    input_len: int
    horizon: int
    stride: int
    season: int
    freq: int  # the grid step: nanoseconds for timestamps, steps for an integer index
    time_kind: str  # "timestamp" or "index"
    normalize: str
    missing: str
    quantiles: tuple[float, ...]
    series: tuple[str, ...]
    offset: tuple[tuple[float, ...], ...]
    scale: tuple[tuple[float, ...], ...]
    train_mean: tuple[tuple[float, ...], ...]
    mase_scale: tuple[float, ...]
    mase_counts: tuple[float, ...] = ()  # the steps mase_scale averages, to pool shards
    eval_stride: int = 1  # steps between validation and test windows

    def stride_of(self, split: str) -> int:
        """Steps between the windows of a split: training's, or validation and test's."""
        return self.stride if split == "train" else self.eval_stride

    @property
    def features(self) -> tuple[str, ...]:
        return (*self.targets, *self.covariates)

    @property
    def context(self) -> int:
        """History steps a stored window carries: enough for the model and the
        seasonal-naive forecast."""
        return max(self.input_len, self.season)

    @property
    def output_size(self) -> int:
        """The head's width: horizon x targets x (quantiles, or 1 for a point forecast)."""
        return self.horizon * len(self.targets) * max(len(self.quantiles), 1)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> ForecastLayout:
        raw = json.loads(text)
        nested = ("offset", "scale", "train_mean")
        return cls(**{key: (tuple(tuple(row) for row in value) if key in nested
                            else tuple(value) if isinstance(value, list) else value)
                      for key, value in raw.items()})

    def options(self) -> SeriesOptions:
        """The options that read tables the way the training table was read."""
        return SeriesOptions(time_column=self.time_column, targets=self.targets,
                             covariates=self.covariates, series_id=self.series_id,
                             input_len=self.input_len, horizon=self.horizon,
                             normalize=self.normalize, missing=self.missing,
                             season=self.season, quantiles=self.quantiles)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(offset, scale) as float32 arrays of shape (series, features)."""
        return (np.asarray(self.offset, np.float32).reshape(len(self.series), -1),
                np.asarray(self.scale, np.float32).reshape(len(self.series), -1))


@dataclass(frozen=True)
class Stretch:
    """Consecutive normalized steps of one series; its windows start every `stride`
    steps from 0 and end inside it. `first` is the grid position of its first step."""

    series: int
    first: int
    values: np.ndarray  # (steps, features) float32; NaN only under missing=drop


@dataclass(frozen=True)
class Series:
    """One series on its regular grid, before normalization."""

    name: str
    start: int  # time of grid position 0 (ns, or the step index)
    values: np.ndarray  # (steps, features) float64


def prepare(table: pa.Table, options: SeriesOptions, source: str
            ) -> tuple[ForecastLayout, dict[str, list[Stretch]]]:
    """Check, grid, fill, split and normalize every series of `table` (as read by
    `tables.read_table`); `source` names the file in errors."""
    _check_options(options)
    all_series, freq, time_kind = grid_series(table, options, source)
    season = options.season or infer_season(freq, time_kind)
    layout_rows, stretches = [], {split: [] for split in SPLITS}
    context = max(options.input_len, season)
    for index, series in enumerate(all_series):
        bounds = _split_bounds(series, freq, options, context, time_kind, source)
        train = series.values[:bounds[0]]
        offset, scale = fit_normalization(train, options.normalize)
        targets = train[:, :len(options.targets)]
        layout_rows.append((offset, scale, np.nanmean(targets, axis=0),
                            _seasonal_abs_sums(targets, season)))
        normalized = ((series.values - offset) / scale).astype(np.float32)
        for split, (low, high) in zip(SPLITS, _target_ranges(bounds, len(series.values),
                                                            context, options.horizon), strict=True):
            step = options.stride if split == "train" else options.eval_stride
            stretches[split] += cut_stretches(index, normalized, low, high, context,
                                              options.horizon, step)
    abs_sums = np.sum([row[3][0] for row in layout_rows], axis=0)
    counts = np.sum([row[3][1] for row in layout_rows], axis=0)
    mase_scale = np.where(abs_sums > 0, abs_sums / np.maximum(counts, 1), 1.0)
    layout = ForecastLayout(
        time_column=options.time_column, series_id=options.series_id,
        targets=options.targets, covariates=options.covariates,
        input_len=options.input_len, horizon=options.horizon, stride=options.stride,
        season=season, freq=freq, time_kind=time_kind, normalize=options.normalize,
        missing=options.missing, quantiles=options.quantiles,
        series=tuple(series.name for series in all_series),
        offset=tuple(tuple(map(float, row[0])) for row in layout_rows),
        scale=tuple(tuple(map(float, row[1])) for row in layout_rows),
        train_mean=tuple(tuple(map(float, row[2])) for row in layout_rows),
        mase_scale=tuple(map(float, mase_scale)), mase_counts=tuple(map(float, counts)),
        eval_stride=options.eval_stride,
    )
    return layout, stretches


def merge_layouts(parts: list[ForecastLayout], source: str) -> ForecastLayout:
    """One layout from the layouts of shards prepared apart: their series side by side,
    the MASE scale pooled over all of them. Shards must agree on the time grid, and a
    series must lie in one shard (its split and normalization need all of it)."""
    first = parts[0]
    for part in parts[1:]:
        if (part.freq, part.time_kind, part.season) != (first.freq, first.time_kind,
                                                        first.season):
            raise DataError(f"{source}: the shards have different time steps "
                            f"({_freq_text(first.freq, first.time_kind)} and "
                            f"{_freq_text(part.freq, part.time_kind)}); expected one grid for "
                            "the whole table (set task.freq).")
    names = [name for part in parts for name in part.series]
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise DataError(f"{source}: series {twice!r} ({first.series_id}) appears in two "
                        "Parquet shards; expected each series in one shard (shards are "
                        "prepared apart, and a series' split and normalization need all of "
                        "it).")
    counts = np.sum([part.mase_counts for part in parts], axis=0)
    sums = np.sum([np.multiply(part.mase_scale, part.mase_counts) for part in parts], axis=0)
    return replace(first, series=tuple(names),
                   offset=sum((part.offset for part in parts), ()),
                   scale=sum((part.scale for part in parts), ()),
                   train_mean=sum((part.train_mean for part in parts), ()),
                   mase_scale=tuple(map(float, np.where(sums > 0, sums / np.maximum(counts, 1),
                                                        1.0))),
                   mase_counts=tuple(map(float, counts)))


def grid_series(table: pa.Table, options: SeriesOptions, source: str, freq: int = 0,
                ) -> tuple[list[Series], int, str]:
    """Every series of `table` on its regular grid, with the grid step (`freq`, else
    task.freq, else inferred) and the kind of time ("timestamp" or "index")."""
    features = (*options.targets, *options.covariates)
    time_kind = "index" if pa.types.is_integer(table[options.time_column].type) else "timestamp"
    grouped = _group(table, options, source)
    freq = _grid_step(grouped, options, time_kind, source, freq)
    return ([_on_grid(name, times, values, freq, features, options, time_kind, source)
             for name, times, values in grouped], freq, time_kind)


def infer_season(freq: int, time_kind: str) -> int:
    """The seasonal period in steps a frequency suggests: a day for sub-daily data, a week
    for daily data, a year for weekly data; 1 (no season) otherwise."""
    if time_kind == "index":
        return 1
    if freq < _DAY_NS and _DAY_NS % freq == 0:
        return _DAY_NS // freq
    if freq == _DAY_NS:
        return 7
    if freq == 7 * _DAY_NS:
        return 52
    return 1


def cut_stretches(series: int, values: np.ndarray, low: int, high: int, context: int,
                  horizon: int, stride: int) -> list[Stretch]:
    """The stretches holding the windows whose targets start at low, low+stride, ... <= high
    (grid positions), split evenly enough to share out (see WINDOWS_PER_STRETCH).

    Windows that touch a missing value (NaN, left by missing=drop) are cut out first, so
    a long gap (a night without readings, a sensor down for a week) is stored in no
    stretch and every stretch holds windows to train on, whichever worker it goes to."""
    starts = np.arange(low, high + 1, stride)
    starts = starts[complete_windows(values, starts - context, context + horizon)]
    runs = np.split(starts, np.flatnonzero(np.diff(starts) != stride) + 1)
    size = min(WINDOWS_PER_STRETCH,
               max(MIN_WINDOWS_PER_STRETCH, math.ceil(len(starts) / STRETCHES_PER_SPLIT)))
    stretches = []
    for run in runs:
        for i in range(0, len(run), size):
            chunk = run[i:i + size]
            first, last = int(chunk[0]) - context, int(chunk[-1]) + horizon
            stretches.append(Stretch(series, first, values[first:last]))
    return stretches


def complete_windows(values: np.ndarray, firsts: np.ndarray, span: int) -> np.ndarray:
    """Which windows values[first:first + span] touch no missing value (NaN, as
    missing=drop leaves them), by a running count of incomplete steps."""
    gaps = np.concatenate([[0], np.cumsum(np.isnan(values).any(axis=1))])
    return gaps[firsts + span] == gaps[firsts]


def window_offsets(steps: int, context: int, horizon: int, stride: int) -> np.ndarray:
    """Offsets of the windows of a stretch of `steps` steps: 0, stride, ... (the first
    step of each window's history)."""
    return np.arange(0, steps - context - horizon + 1, stride, dtype=np.int64)


def _check_options(options: SeriesOptions) -> None:
    if options.normalize not in NORMALIZATIONS:
        raise DataError(f"task.normalize is {options.normalize!r}; expected one of "
                        f"{', '.join(NORMALIZATIONS)}.")
    if options.missing not in MISSING_POLICIES:
        raise DataError(f"task.missing is {options.missing!r}; expected one of "
                        f"{', '.join(MISSING_POLICIES)}.")


def _group(table: pa.Table, options: SeriesOptions, source: str
           ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(series name, times as int64, values (steps, features)) for each series, in the
    order the series first appear; rows keep their order within a series."""
    features = (*options.targets, *options.covariates)
    times_column = table[options.time_column]
    if times_column.null_count:
        raise DataError(f"{source}: column `{options.time_column}` (task.time_column) has "
                        f"{times_column.null_count} empty cells; expected a time on every row.")
    times = pc.cast(times_column, pa.int64()).to_numpy()
    values = np.column_stack([table[name].to_numpy(zero_copy_only=False).astype(np.float64)
                              for name in features])
    if not options.series_id:
        return [("", times, values)]
    ids = table[options.series_id]
    if ids.null_count:
        raise DataError(f"{source}: column `{options.series_id}` (task.series_id) has "
                        f"{ids.null_count} empty cells; expected a series id on every row.")
    encoded = pc.cast(ids, pa.string()).combine_chunks().dictionary_encode()
    names, codes = encoded.dictionary.to_pylist(), encoded.indices.to_numpy()
    if len(names) == len(codes):
        raise DataError(f"{source}: column `{options.series_id}` (task.series_id) has a "
                        "different value on every row, so every series has a single step; "
                        "expected many rows per series id (is it the right column?).")
    order = np.argsort(codes, kind="stable")  # series in order of first appearance
    groups = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
    chosen = _chosen_series(names, options, source)
    return [(names[code], times[rows], values[rows]) for code, rows in enumerate(groups)
            if names[code] in chosen]


def _chosen_series(names: list[str], options: SeriesOptions, source: str) -> set[str]:
    """The series `task.series` and `task.skip_series` leave; an id the table lacks is an
    error, since a misspelt one would silently train on the wrong series."""
    for key in ("series", "skip_series"):
        unknown = [name for name in getattr(options, key) if name not in names]
        if unknown:
            listed = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise DataError(f"{source}: task.{key} names {unknown[0]!r}, which is not a "
                            f"value of column `{options.series_id}` (task.series_id); its "
                            f"series are {listed}.")
    chosen = set(options.series or names) - set(options.skip_series)
    if not chosen:
        raise DataError(f"{source}: task.skip_series leaves none of the table's "
                        f"{len(names)} series to train on.")
    return chosen


def _grid_step(grouped: list[tuple[str, np.ndarray, np.ndarray]], options: SeriesOptions,
               time_kind: str, source: str, freq: int) -> int:
    """The grid step: `task.freq`, or the most common step between consecutive rows.
    Checks that times increase strictly within every series."""
    column = options.time_column
    steps = []
    for name, times, _ in grouped:
        diffs = np.diff(times)
        where = f" in series {name!r}" if options.series_id else ""
        if (diffs == 0).any():
            at = _time_text(times[np.flatnonzero(diffs == 0)[0]], time_kind)
            raise DataError(f"{source}: column `{column}` has the time {at} twice{where}; "
                            "expected one row per time step (and series).")
        if (diffs < 0).any():
            row = int(np.flatnonzero(diffs < 0)[0])
            raise DataError(f"{source}: column `{column}` goes back in time{where}, from "
                            f"{_time_text(times[row], time_kind)} to "
                            f"{_time_text(times[row + 1], time_kind)}; expected rows in "
                            "increasing time order within each series.")
        steps.append(diffs)
    if freq or options.freq:
        return freq or parse_freq(options.freq, time_kind)
    joined = np.concatenate(steps)
    if len(joined) == 0:
        raise DataError(f"{source}: every series has a single row; expected many time steps.")
    values, counts = np.unique(joined, return_counts=True)
    return int(values[np.argmax(counts)])


def parse_freq(text: str, time_kind: str) -> int:
    """`task.freq` as a grid step: a duration such as 1h, 15min, 1d for timestamps, a
    whole number of steps for an integer index."""
    import pandas as pd

    try:
        if time_kind == "index":
            step = int(text)
        else:
            # pandas deprecates the unit "d" (1d), which task.freq documents: say D
            step = int(pd.Timedelta(re.sub(r"(?<=\d)\s*d$", "D", text.strip())).value)
    except ValueError:
        raise DataError(f"task.freq is {text!r}; expected a duration such as 1h, 15min or "
                        "1d (or a whole number of steps for an integer time column)."
                        ) from None
    if step <= 0:
        raise DataError(f"task.freq is {text!r}; expected a positive step.")
    return step


def _on_grid(name: str, times: np.ndarray, values: np.ndarray, freq: int,
             features: tuple[str, ...], options: SeriesOptions, time_kind: str,
             source: str) -> Series:
    """The series on its regular grid, gaps and missing values dealt with by `missing`."""
    offsets = times - times[0]
    where = f" of series {name!r}" if options.series_id else ""
    if (offsets % freq).any():
        row = int(np.flatnonzero(offsets % freq)[0])
        raise DataError(f"{source}: the time {_time_text(times[row], time_kind)}"
                        f"{where} is off the regular grid of step {_freq_text(freq, time_kind)} "
                        f"starting at {_time_text(times[0], time_kind)}; expected "
                        "times on one grid (set task.freq, or resample the table).")
    positions = offsets // freq
    grid = np.full((int(positions[-1]) + 1, values.shape[1]), np.nan)
    grid[positions] = values
    missing = np.isnan(grid)
    if missing.any():
        if options.missing == "refuse":
            step, feature = np.argwhere(missing)[0]
            moment = _time_text(times[0] + int(step) * freq, time_kind)
            what = ("no row" if not np.isin(step, positions)
                    else f"no value in column `{features[feature]}`")
            raise DataError(f"{source}: {what}{where} at {moment} "
                            f"({int(missing.any(axis=1).sum())} steps have a gap or a missing "
                            "value); task.missing=refuse expects a complete series: set "
                            "task.missing to interpolate or drop.")
        if options.missing == "interpolate":
            grid = _interpolate(grid, features, name, source)
    return Series(name, int(times[0]), grid)


def _interpolate(grid: np.ndarray, features: tuple[str, ...], name: str,
                 source: str) -> np.ndarray:
    """Linear interpolation in time, column by column; the ends take the nearest value."""
    steps = np.arange(len(grid))
    for column in range(grid.shape[1]):
        known = ~np.isnan(grid[:, column])
        if not known.any():
            raise DataError(f"{source}: column `{features[column]}` has no value at all in "
                            f"series {name!r}; expected numbers to interpolate between.")
        grid[:, column] = np.interp(steps, steps[known], grid[known, column])
    return grid


def _split_bounds(series: Series, freq: int, options: SeriesOptions, context: int,
                  time_kind: str, source: str) -> tuple[int, int]:
    """(first val step, first test step) on the series' grid, by time or by fraction,
    checked to leave every split at least one window."""
    steps = len(series.values)
    if options.val_start or options.test_start:
        val = _position(options.val_start, "task.val_start", series, freq, time_kind)
        test = _position(options.test_start, "task.test_start", series, freq, time_kind)
    else:
        test = steps - _share(steps, options.test_fraction)
        val = test - _share(steps, options.val_fraction)
    need = options.horizon
    where = f"series {series.name!r}" if options.series_id else "the series"
    sizes = {"train": val, "val": test - val, "test": steps - test}
    minimum = {"train": context + need, "val": need, "test": need}
    for split, size in sizes.items():
        if size < minimum[split]:
            raise DataError(
                f"{source}: {where} has {steps} steps and its {split} split only {size}; "
                f"expected at least {minimum[split]} (task.horizon={options.horizon}"
                + (f" after a history of {context} steps (task.input_len, task.season)"
                   if split == "train" else "") +
                "): use a longer table, other split fractions or cut-offs, or a shorter "
                "task.input_len or task.horizon.")
    return val, test


def _share(steps: int, fraction: float) -> int:
    """floor(steps * fraction), immune to binary rounding (100 * 0.29 is 28.999...)."""
    return math.floor(round(steps * fraction, 6))


def _position(text: str, key: str, series: Series, freq: int, time_kind: str) -> int:
    """The first grid position at or after the cut-off time `text`."""
    if not text:
        raise DataError(f"{key} is empty but the other cut-off is set; give both "
                        "task.val_start and task.test_start, or neither (fractions).")
    import pandas as pd

    try:
        moment = int(text) if time_kind == "index" else int(pd.Timestamp(text).value)
    except ValueError:
        raise DataError(f"{key} is {text!r}; expected a time such as 2014-06-01 or "
                        "2014-06-01 00:00:00.") from None
    first = -((series.start - moment) // freq)  # ceil in integers: float division drops ns
    return int(np.clip(first, 0, len(series.values)))


def _target_ranges(bounds: tuple[int, int], steps: int, context: int, horizon: int,
                   ) -> list[tuple[int, int]]:
    """For each split, the first and last grid position a window's targets may start at
    (the last leaves room for the horizon inside the split: see cut_stretches)."""
    val, test = bounds
    return [(context, val - horizon), (val, test - horizon), (test, steps - horizon)]


def fit_normalization(train: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) per feature from the training split; a constant feature keeps
    scale 1, so it is shifted but never divided by zero."""
    features = train.shape[1]
    if kind == "none":
        return np.zeros(features), np.ones(features)
    if kind == "standard":
        offset, scale = np.nanmean(train, axis=0), np.nanstd(train, axis=0)
    else:
        offset = np.nanmin(train, axis=0)
        scale = np.nanmax(train, axis=0) - offset
    return offset, np.where(scale > 0, scale, 1.0)


def _seasonal_abs_sums(targets: np.ndarray, season: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum and count of |y_t - y_(t-season)| per target over the training split: pooled
    over series, their ratio is MASE's scale."""
    errors = np.abs(targets[season:] - targets[:-season])
    valid = ~np.isnan(errors)
    return np.where(valid, errors, 0.0).sum(axis=0), valid.sum(axis=0)


def _time_text(value: int, time_kind: str) -> str:
    if time_kind == "index":
        return str(int(value))
    return str(np.datetime64(int(value), "ns").astype("datetime64[s]")).replace("T", " ")


def _freq_text(freq: int, time_kind: str) -> str:
    if time_kind == "index":
        return str(freq)
    import pandas as pd

    return str(pd.Timedelta(freq, unit="ns"))
