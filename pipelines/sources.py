"""Where a worker's batches come from: generated on the fly, or its shard of a Dataset.

Both sources give the training loop the same two calls, `train_batch(step, curriculum)`
and `validation_batches(level)`, so the loop does not care which one it has. The
curriculum says what the batch holds: a generator asks it for the difficulty of each
example (`difficulties`), a dataset for which of its rows to admit (`keep`); `level` is
the difficulty to validate at (None = the target).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

import numpy as np
import pyarrow as pa
import torch

from pipelines.collate import select_rows, to_torch
from pipelines.errors import DataError
from pipelines.synthetic import (
    VALIDATION_STREAM,
    SyntheticTask,
    generate_at,
    rng_for,
    validation_set,
)

VALIDATION_BATCH = 256
VALIDATION_CACHE_BYTES = 256 * 2**20
"""A Parquet shard's validation rows are kept in the worker's memory, after the first
pass, when their padded batches take at most this much; larger sets stream every time."""


class Schedule(Protocol):
    """What the sources need of a curriculum (orchestrator.curriculum.Curriculum)."""

    def difficulties(self, rng: np.random.Generator, n: int) -> np.ndarray: ...

    def keep(self, rng: np.random.Generator, difficulties: np.ndarray) -> np.ndarray: ...


class SyntheticBatches:
    """Batches of a synthetic task. Batch `step` of rank `rank` is a pure function of
    (seed, rank, step), so a resumed or restarted worker regenerates exactly the data it
    would have seen. Each rank validates on its own slice (rows rank, rank+world, ...)
    of the fixed validation set; summed over ranks that is the whole set."""

    def __init__(self, task: SyntheticTask, seed: int, rank: int, world: int,
                 batch_size: int, val_size: int):
        self._task, self._seed, self._batch_size = task, seed, batch_size
        self._rank, self._world, self._val_size = rank, world, val_size
        self._validation = {None: self._slice(validation_set(task, seed, val_size))}

    def train_batch(self, step: int, curriculum: Schedule) -> dict[str, torch.Tensor]:
        rng = rng_for(self._seed, self._rank, step)
        difficulties = curriculum.difficulties(rng, self._batch_size)
        return to_torch(generate_at(self._task, rng, difficulties))

    def validation_batches(self, level: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's slice of the fixed validation set at `level` (made once, then kept)."""
        if level not in self._validation:
            rng = rng_for(self._seed, VALIDATION_STREAM, level)
            rows = self._task.generate(rng, self._val_size, seq_len=level)
            self._validation[level] = self._slice(rows)
        validation = self._validation[level]
        for start in range(0, len(validation["lengths"]), VALIDATION_BATCH):
            yield to_torch({name: array[start:start + VALIDATION_BATCH]
                            for name, array in validation.items()})

    def _slice(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: array[self._rank::self._world] for name, array in rows.items()}


class ShardBatches:
    """Batches from this worker's shards of Ray Data datasets, epoch after epoch.

    `train_shard` and `val_shard` are Ray Data iterators (`get_dataset_shard`); `collate`
    pads validation rows, `window_collate` (ray_datasets.WindowCollate) cuts the training
    rows into batches, sorted by length within each of its windows when it buckets. Full
    batches only, so every rank takes the same number of steps per epoch (the shards hold
    equal rows) and the epochs of all ranks end together.

    Every epoch is shuffled with its own seeds: Ray Data's local shuffle buffer of
    `shuffle_rows` rows (0 = file order) reorders the rows with a seed derived from (seed,
    rank, epoch), and the batches of each read are taken in an order derived from (seed,
    epoch), the same on every rank. Bucketed, each rank's windows are sorted by length,
    so at every step the ranks take batches of like lengths and none waits long for the
    others at the gradients' all-reduce. The shard itself must arrive in the same order
    every epoch (Ray Data's `preserve_order`, set by the driver). So an epoch repeats
    exactly, and `position` (epoch, batches taken), kept in checkpoints, is enough to
    continue mid-epoch where a run stopped.

    Ray Data hands the rows over a read at a time, a whole number of windows: when
    shuffling, half the shuffle buffer's rows, else one window. Each handover costs Ray's
    iterator about the same CPU however many rows it holds, and on a busy machine that CPU
    is taken from training (benchmarks/parquet_reads.py). Ray's shuffle buffer hands over
    full reads only while it holds at least two (it refills when it is half empty and
    otherwise hands over what is left, and rows short of a batch would be dropped), so the
    buffer is raised to two reads where `shuffle_rows` is smaller.

    A shard that fits in memory (`keep_rows`: task.keep_rows_mb against the files' sizes,
    the same on every rank and at every restart) is read through Ray Data once, in its
    files' order, and every epoch, the first included, is cut from those rows, shuffled
    whole (unless `shuffle_rows` is 0). Every pass of Ray Data costs a pause and CPU that
    small data pays once an epoch: a split coordinator, read tasks, a streaming
    execution. On 2 cores, with epochs of 40 steps, that took a tenth of the training
    throughput (nearly a fifth once the workers kept their freed memory and trained
    faster).

    Validation rows are read once and kept when they are small (`_validation_pass`).
    """

    def __init__(self, train_shard, val_shard, batch_size: int, collate, window_collate,
                 shuffle_rows: int, seed: int, rank: int,
                 position: dict[str, int] | None = None, keep_rows: bool = False):
        self._train_shard, self._val_shard = train_shard, val_shard
        self._keep_rows = keep_rows
        self._batch_size, self._collate = batch_size, collate
        self._window_collate = window_collate
        window = window_collate.window_rows
        self._read_rows = max(shuffle_rows // 2 // window, 1) * window
        self._shuffle_rows = max(shuffle_rows, 2 * self._read_rows) if shuffle_rows else None
        self._seed, self._rank = seed, rank
        self._epoch, self._taken = (position["epoch"], position["taken"]) if position else (0, 0)
        self._validation: list[dict[str, torch.Tensor]] | None = None
        self._batches = self._epochs()

    def position(self) -> dict[str, int]:
        """Where the training stream stands: the epoch, and the batches taken from it."""
        return {"epoch": self._epoch, "taken": self._taken}

    def train_batch(self, step: int, curriculum: Schedule) -> dict[str, torch.Tensor]:
        """The next batch of the shard, less the rows the curriculum does not admit yet.

        A batch keeps its slot in the epoch even when the curriculum admits none of its
        rows (every rank must take the same number of batches per epoch): it then trains
        on its easiest row.
        """
        batch = next(self._batches)
        difficulty = _difficulty(batch)
        keep = curriculum.keep(rng_for(self._seed, self._rank, step), difficulty.numpy())
        if keep.all():
            return batch
        if not keep.any():
            keep[int(difficulty.argmin())] = True
        return select_rows(batch, torch.from_numpy(keep))

    def validation_batches(self, level: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """The shard's validation rows; with a `level`, only the rows at or below it."""
        for batch in self._validation_pass():
            batch = dict(batch)  # kept batches stay whole for the next pass
            difficulty = _difficulty(batch)
            if level is None:
                yield batch
            elif (keep := difficulty <= level).any():
                yield select_rows(batch, keep)

    def _validation_pass(self) -> Iterator[dict[str, torch.Tensor]]:
        """The validation shard's padded batches, on the CPU. The first whole pass keeps
        them when they fit in VALIDATION_CACHE_BYTES, and later passes read that copy:
        every pass of Ray Data starts with a pause and takes CPU from training, and the
        validation rows never change."""
        if self._validation is not None:
            yield from self._validation
            return
        kept, size = [], 0
        for batch in self._val_shard.iter_torch_batches(
                batch_size=VALIDATION_BATCH, collate_fn=self._collate, device="cpu"):
            size += sum(tensor.nbytes for tensor in batch.values())
            if size > VALIDATION_CACHE_BYTES:
                kept = None
            elif kept is not None:
                kept.append(batch)
            yield batch
        self._validation = kept

    def _epochs(self) -> Iterator[dict[str, torch.Tensor]]:
        """Batches epoch after epoch, from `position` on: the batches an earlier run of
        this epoch already trained on are read again (the shuffles must replay) but
        not handed out."""
        rows = self._kept_rows() if self._keep_rows else None
        while True:
            shuffle_seed = int(np.random.SeedSequence(
                [self._seed, self._rank, self._epoch]).generate_state(1)[0])
            order = np.random.default_rng([self._seed, self._epoch])  # alike on every rank
            read = 0
            for batches in (self._streamed_reads(shuffle_seed) if rows is None
                            else self._kept_reads(rows, shuffle_seed)):
                for index in order.permutation(len(batches)):
                    read += 1
                    if read > self._taken:
                        self._taken = read
                        yield batches[index]
            if read == 0:
                raise self._too_few_rows()
            self._epoch, self._taken = self._epoch + 1, 0

    def _streamed_reads(self, shuffle_seed: int) -> Iterable[list[dict[str, torch.Tensor]]]:
        """One pass of Ray Data over the shard, a read at a time, through its shuffle
        buffer."""
        return self._train_shard.iter_torch_batches(
            batch_size=self._read_rows, collate_fn=self._window_collate,
            local_shuffle_buffer_size=self._shuffle_rows,
            local_shuffle_seed=shuffle_seed if self._shuffle_rows else None,
        )

    def _kept_reads(self, rows: pa.Table, shuffle_seed: int
                    ) -> Iterator[list[dict[str, torch.Tensor]]]:
        """One epoch of the kept rows, a read at a time, the rows shuffled whole."""
        if self._shuffle_rows:
            rows = rows.take(np.random.default_rng(shuffle_seed).permutation(rows.num_rows))
        for start in range(0, rows.num_rows, self._read_rows):
            yield self._window_collate(rows.slice(start, self._read_rows))

    def _kept_rows(self) -> pa.Table:
        """The shard's rows, read through Ray Data once, in the files' order."""
        blocks = list(self._train_shard.iter_batches(batch_size=None, batch_format="pyarrow"))
        if not blocks:
            raise self._too_few_rows()
        return pa.concat_tables(blocks)

    def _too_few_rows(self) -> DataError:
        return DataError(
            f"a worker's share of the training data holds fewer than "
            f"train.batch_size={self._batch_size} rows: write more rows, or lower "
            "train.batch_size or scaling.num_workers."
        )


def resized(position: dict[str, int], saved_world: int, world: int) -> dict[str, int]:
    """A `ShardBatches.position` saved by a worker group of `saved_world` workers, for
    one of `world`: each rank's share of an epoch is saved_world / world times as long,
    so every rank goes on at the same fraction of its epoch. The rows are split anew, so
    the rest of that epoch is not exactly the rows still unseen; the next epoch is whole."""
    return {"epoch": position["epoch"], "taken": position["taken"] * saved_world // world}


def _difficulty(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each row's difficulty: the dataset's difficulty column (taken out of the batch,
    the model has no use for it), else the row's length."""
    return batch.pop("difficulty", batch["lengths"])
