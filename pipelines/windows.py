"""Prepared forecasting data on storage, and the batches a worker cuts from it.

Storage (written once by the driver, read by every worker; a resume reuses it):

    <dir>/layout.json                the ForecastLayout (columns, grid, normalization)
    <dir>/{train,val,test}/<prefix>-NNNNN.parquet    (one prefix per prepared shard)
        series  string               the series' name (layout.series)
        first   int64                grid position of the stretch's first step
        values  list<float32>        (steps x features), row-major

Each worker keeps the stretches whose row number is its rank modulo the world size, read
straight from the files (every worker holds only its share, and no row is dropped to
even out the shares, as Ray Data's equal split would). A worker's stretches go into one
contiguous array; a window is only an index into it, so memory is the share's values
plus eight bytes per window, never input_len copies of each step:

    data (steps, features):  [stretch 0 ......][stretch 1 ...........]
    window w:                     ^start[w] : start[w] + context + horizon

Training batch `step` of a rank is a pure function of (seed, rank, step) (windows in a
fresh permutation every epoch), so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from pipelines.errors import DataError
from pipelines.synthetic import rng_for
from pipelines.tables import filesystem_of, read_text, write_text
from pipelines.timeseries import (
    SPLITS,
    ForecastLayout,
    Stretch,
    complete_windows,
    window_offsets,
)

LAYOUT_FILE = "layout.json"
STRETCHES_PER_FILE = 64
VALIDATION_BATCH = 256


def write_prepared(directory: str, layout: ForecastLayout,
                   stretches: dict[str, list[Stretch]], prefix: str = "part") -> None:
    """Write every split's stretches under `directory` (local or a URI), in files named
    `<prefix>-NNNNN.parquet`; `layout` names their series. The layout itself is written
    by `write_layout`, last, once every shard is written."""
    filesystem, root = filesystem_of(directory)
    for split in SPLITS:
        filesystem.create_dir(f"{root}/{split}", recursive=True)
        rows = stretches[split]
        for part, start in enumerate(range(0, len(rows), STRETCHES_PER_FILE)):
            pq.write_table(_table(rows[start:start + STRETCHES_PER_FILE], layout.series),
                           f"{root}/{split}/{prefix}-{part:05d}.parquet",
                           filesystem=filesystem)


def write_layout(directory: str, layout: ForecastLayout) -> None:
    """Write the layout: its presence means the prepared data is complete."""
    write_text(directory, LAYOUT_FILE, layout.to_json())


def discard_prepared(directory: str) -> None:
    """Remove data prepared under `directory`, if any."""
    filesystem, root = filesystem_of(directory)
    if filesystem.get_file_info(root).type == pafs.FileType.Directory:
        filesystem.delete_dir(root)


def read_layout(directory: str) -> ForecastLayout | None:
    """The layout of data prepared under `directory`, or None if there is none (yet)."""
    text = read_text(directory, LAYOUT_FILE)
    return ForecastLayout.from_json(text) if text is not None else None


def read_share(directory: str, split: str, rank: int, world: int,
               layout: ForecastLayout) -> list[Stretch]:
    """This rank's stretches of a split: rows rank, rank + world, ... in file order."""
    index = {name: i for i, name in enumerate(layout.series)}
    features = len(layout.features)
    filesystem, root = filesystem_of(directory)
    selector = pafs.FileSelector(f"{root}/{split}")
    files = sorted(info.path for info in filesystem.get_file_info(selector)
                   if info.path.endswith(".parquet"))
    share, row = [], 0
    for path in files:
        for batch in pq.ParquetFile(filesystem.open_input_file(path)).iter_batches():
            mine = np.arange(row, row + batch.num_rows) % world == rank
            row += batch.num_rows
            if not mine.any():
                continue
            batch = batch.filter(pa.array(mine))
            series = batch.column("series").to_pylist()
            first = batch.column("first").to_numpy()
            values = batch.column("values")
            for i in range(batch.num_rows):
                flat = values[i].values.to_numpy(zero_copy_only=False)
                share.append(Stretch(index[series[i]], int(first[i]),
                                     flat.reshape(-1, features)))
    return share


class WindowBatches:
    """The batches of one worker: `train_batch(step)` and `validation_batches()`, in the
    batch format of the training loop plus `series` (each row's series index) and, for
    validation, `seasonal` (the seasonal-naive forecast, normalized). The test split is
    scored on the driver once training is over (`orchestrator.driver.log_final_model`).

        inputs   float32 (B, input_len, features)
        targets  float32 (B, horizon, targets)
        lengths  int64   (B,)       all input_len
        series   int64   (B,)
        seasonal float32 (B, horizon, targets)    validation only
    """

    def __init__(self, directory: str, layout: ForecastLayout, batch_size: int, seed: int,
                 rank: int, world: int):
        self._layout, self._batch_size = layout, batch_size
        self._seed, self._rank = seed, rank
        self._orders: dict[int, np.ndarray] = {}
        self._splits = {split: Windows(read_share(directory, split, rank, world, layout),
                                       layout, split)
                        for split in ("train", "val")}
        if not len(self._splits["train"]):
            raise DataError(
                f"worker {rank} of {world} has no training window: the table has too few "
                "windows to give every worker some; use fewer workers (scaling.num_workers) "
                "or a longer table.")

    def train_batch(self, step: int, curriculum=None) -> dict[str, torch.Tensor]:
        """Batch `step`: the next `batch_size` windows of this epoch's permutation."""
        windows = self._splits["train"]
        count, size = len(windows), self._batch_size
        positions = np.arange((step - 1) * size, step * size)
        epochs, within = np.divmod(positions, count)
        chosen = np.empty(size, np.int64)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            chosen[here] = self._order(int(epoch), count)[within[here]]
        return windows.batch(chosen, seasonal=False)

    def _order(self, epoch: int, count: int) -> np.ndarray:
        """The windows' order in `epoch`, drawn once per epoch (drawing costs time in
        proportion to the windows) and kept until the next one."""
        if epoch not in self._orders:
            self._orders = {epoch: rng_for(self._seed, self._rank, 1, epoch).permutation(count)}
        return self._orders[epoch]

    def validation_batches(self, level: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        return self._splits["val"].in_order()


class Windows:
    """The windows of some stretches, over one contiguous array (see the module doc)."""

    def __init__(self, stretches: list[Stretch], layout: ForecastLayout, split: str):
        self._layout = layout
        features = len(layout.features)
        span = layout.context + layout.horizon
        self._data = (np.concatenate([s.values for s in stretches]) if stretches
                      else np.zeros((0, features), np.float32))
        bases = np.cumsum([0] + [len(s.values) for s in stretches])[:-1]  # [] for none
        starts, series = [], []
        for base, stretch in zip(bases, stretches, strict=True):
            offsets = window_offsets(len(stretch.values), layout.context, layout.horizon,
                                     layout.stride_of(split))
            starts.append(base + offsets)
            series.append(np.full(len(offsets), stretch.series, np.int64))
        self._starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self._series = np.concatenate(series) if series else np.zeros(0, np.int64)
        # cut_stretches stores only complete windows; prepared data a run resumes may
        # come from a version that stored gaps too, so the check stays where windows are read.
        if layout.missing == "drop" and len(self._starts):
            complete = complete_windows(self._data, self._starts, span)
            self._starts, self._series = self._starts[complete], self._series[complete]
        targets = len(layout.targets)
        context = layout.context
        self._history = np.arange(context - layout.input_len, context)
        self._future = np.arange(context, span)
        lead = np.arange(layout.horizon)
        self._lagged = context + lead - layout.season * (lead // layout.season + 1)
        self._targets = targets

    def __len__(self) -> int:
        return len(self._starts)

    def batch(self, chosen: np.ndarray, seasonal: bool) -> dict[str, torch.Tensor]:
        starts = self._starts[chosen][:, None]
        targets = self._targets
        batch = {
            "inputs": self._data[starts + self._history],
            "targets": self._data[starts + self._future][:, :, :targets],
            "lengths": np.full(len(chosen), self._layout.input_len, np.int64),
            "series": self._series[chosen],
        }
        if seasonal:
            batch["seasonal"] = self._data[starts + self._lagged][:, :, :targets]
        return {name: torch.from_numpy(np.ascontiguousarray(array))
                for name, array in batch.items()}

    def in_order(self) -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, len(self), VALIDATION_BATCH):
            yield self.batch(np.arange(start, min(start + VALIDATION_BATCH, len(self))),
                             seasonal=True)


def _table(stretches: list[Stretch], names: tuple[str, ...]) -> pa.Table:
    flat = np.concatenate([s.values.reshape(-1) for s in stretches]).astype(np.float32)
    offsets = np.cumsum([0] + [s.values.size for s in stretches]).astype(np.int32)
    return pa.table({
        "series": pa.array([names[s.series] for s in stretches], pa.string()),
        "first": pa.array([s.first for s in stretches], pa.int64()),
        "values": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
    })
