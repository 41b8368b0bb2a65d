"""Where a worker's batches come from: generated on the fly, or its shard of a Dataset.

Both sources give the training loop the same two calls, `train_batch(step, difficulties)`
and `validation_batches(level)`, so the loop does not care which one it has. A curriculum
speaks through `difficulties(rng, n)` (the length of each example of the batch) and
`level` (the length to validate at; None = the task's own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from pipelines.collate import to_torch
from pipelines.errors import DataError
from pipelines.synthetic import (
    VALIDATION_STREAM,
    SyntheticTask,
    generate_at,
    rng_for,
    validation_set,
)

VALIDATION_BATCH = 256
Difficulties = Callable[[np.random.Generator, int], np.ndarray]


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

    def train_batch(self, step: int, difficulties: Difficulties) -> dict[str, torch.Tensor]:
        rng = rng_for(self._seed, self._rank, step)
        return to_torch(generate_at(self._task, rng, difficulties(rng, self._batch_size)))

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
    pads their ragged rows. Full batches only (drop_last), so every rank takes the same
    number of steps per epoch and the epochs of all ranks end together.
    """

    def __init__(self, train_shard, val_shard, batch_size: int, collate):
        self._train_shard, self._val_shard = train_shard, val_shard
        self._batch_size, self._collate = batch_size, collate
        self._batches = self._epochs()

    def train_batch(self, step: int, difficulties: Difficulties) -> dict[str, torch.Tensor]:
        """The next batch of the shard (its rows have the difficulty they were written with;
        the config refuses a curriculum on Parquet data)."""
        return next(self._batches)

    def validation_batches(self, level: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        return self._val_shard.iter_torch_batches(
            batch_size=VALIDATION_BATCH, collate_fn=self._collate
        )

    def _epochs(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            empty = True
            for batch in self._train_shard.iter_torch_batches(
                batch_size=self._batch_size, collate_fn=self._collate, drop_last=True
            ):
                empty = False
                yield batch
            if empty:
                raise DataError(
                    f"a worker's share of the training data holds fewer than "
                    f"train.batch_size={self._batch_size} rows: write more rows, or lower "
                    "train.batch_size or scaling.num_workers."
                )
