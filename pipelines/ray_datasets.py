"""Ray Data over a Parquet split, and the collates that pad its ragged rows.

The only module of pipelines/ that imports ray.data (importing it costs about a second,
and the generators and Parquet helpers must stay usable without Ray). Typical use in a
Ray Train worker:

    info = read_task_info(split_dir)
    shard = ray.train.get_dataset_shard("train")          # from read_split(split_dir)
    for batch in shard.iter_torch_batches(batch_size=64, collate_fn=PaddingCollate(info.kind)):
        ...                                                # the batch format of collate.py

Training reads several batches' rows at a time through `WindowCollate` instead, to
shuffle and bucket them (sources.ShardBatches).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
import torch
from ray.data.collate_fn import ArrowBatchCollateFn

from pipelines.collate import check_kind, cut_window, pad_batch, to_torch
from pipelines.parquet import split_files


def read_split(split_dir: str | Path, difficulty: str = "length") -> ray.data.Dataset:
    """A Dataset of the split's rows with only the columns of the row schema, plus the
    curriculum's `difficulty` column (renamed `difficulty`) unless that is "length".

    The files are listed here (and their schema checked by read_task_info) rather than
    by Ray, so a missing or empty directory fails with a DataError naming it. The path
    must be visible to every node (local disk on one machine, shared storage on a cluster).

    Every epoch, and every validation, is a new pass over the files, and what a pass costs
    before its first row decides how small data trains. The files are read with Ray Data's
    first Parquet reader (`use_datasource_v2 = False`): the newer one starts a pool of 32
    footer-reading actors at each pass, and on two cores a pass over 512 rows took 2.3 s
    with it and 0.2 s with the first reader.
    """
    files = split_files(split_dir)
    names = pq.read_schema(files[0]).names
    columns = [name for name in ("inputs", "targets", "scored") if name in names]
    if difficulty != "length":
        columns.append(difficulty)
    # select_columns after the read is pushed down into it (`columns=` is deprecated).
    context = ray.data.DataContext.get_current()
    newer_reader, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        dataset = ray.data.read_parquet([str(path) for path in files]).select_columns(columns)
    finally:
        context.use_datasource_v2 = newer_reader
    if difficulty not in ("length", "difficulty"):
        dataset = dataset.rename_columns({difficulty: "difficulty"})
    return dataset


class PaddingCollate(ArrowBatchCollateFn):
    """`iter_torch_batches` collate_fn: Ray Data Arrow batch -> padded torch batch.

    Ray Data cannot turn ragged list<...> columns into tensors by itself, and plain
    functions as collate_fn are deprecated, hence this class. It takes the batch as Arrow
    (not numpy, which would hold one Python object per row and per step) and pads it from
    the columns' offsets. `kind` (TaskInfo.kind) says how to read `targets`. Runs on Ray's
    collate threads; it keeps no state.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = check_kind(kind)

    def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:
        return to_torch(pad_batch({name: batch.column(name) for name in batch.column_names},
                                  self.kind))


class WindowCollate(ArrowBatchCollateFn):
    """`iter_torch_batches` collate_fn for training: the rows of one read (one or more
    windows of `bucket_batches` batches) -> a list of padded torch batches
    (`collate.cut_window`), each window's rows sorted by length first when
    `bucket_batches` > 1 (length bucketing). Runs on Ray's collate threads, so the
    sorting and padding overlap training; the list is not moved to a device by Ray (the
    training loop moves each batch)."""

    def __init__(self, kind: str, batch_size: int, bucket_batches: int) -> None:
        super().__init__()
        self.kind, self.batch_size, self.bucket_batches = (check_kind(kind), batch_size,
                                                           bucket_batches)

    @property
    def window_rows(self) -> int:
        """The rows sorted by length together; a read holds a whole number of windows."""
        return self.bucket_batches * self.batch_size

    def __call__(self, rows: pa.Table) -> list[dict[str, torch.Tensor]]:
        return [to_torch(batch)
                for start in range(0, rows.num_rows, self.window_rows)
                for batch in cut_window(rows.slice(start, self.window_rows), self.kind,
                                        self.batch_size, by_length=self.bucket_batches > 1)]
