from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from pipelines.sources import VALIDATION_BATCH, SyntheticBatches
from pipelines.synthetic import AddingProblem, CopyMemory

BATCH_SIZE = 16


class Recorded:
    """A curriculum that draws difficulties from the rng it is given and remembers them."""

    def __init__(self, choices=(4, 9, 15)):
        self.choices, self.calls = np.array(choices), []

    def difficulties(self, rng: np.random.Generator, n: int) -> np.ndarray:
        levels = rng.choice(self.choices, size=n)
        self.calls.append((n, levels))
        return levels


class Fixed:
    """A curriculum with every example at one level."""

    def __init__(self, level: int):
        self.level = level

    def difficulties(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.level)


def batches(task=None, seed=0, rank=0, world=1, val_size=40) -> SyntheticBatches:
    return SyntheticBatches(task or AddingProblem(20), seed=seed, rank=rank, world=world,
                            batch_size=BATCH_SIZE, val_size=val_size)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("task", [AddingProblem(20), CopyMemory(20)], ids=["adding", "copy"])
def test_train_batch_is_a_function_of_seed_rank_and_step(task):
    first = batches(task, seed=3, rank=1).train_batch(5, Recorded())
    assert_same(first, batches(task, seed=3, rank=1).train_batch(5, Recorded()))
    for seed, rank, step in [(4, 1, 5), (3, 0, 5), (3, 1, 6)]:
        other = batches(task, seed=seed, rank=rank).train_batch(step, Recorded())
        assert other["inputs"].shape != first["inputs"].shape or not torch.equal(
            other["inputs"], first["inputs"]), (seed, rank, step)


@pytest.mark.parametrize("task", [AddingProblem(20), CopyMemory(20, copy_len=2)],
                         ids=["adding", "copy"])
def test_train_batch_lengths_follow_the_difficulties(task):
    difficulties = Recorded()
    source = batches(task)
    for step in range(1, 6):
        batch = source.train_batch(step, difficulties)
        n, levels = difficulties.calls[-1]
        assert n == BATCH_SIZE
        extra = 0 if task.name == "adding" else 2 * task.copy_len
        assert batch["lengths"].dtype == torch.int64
        np.testing.assert_array_equal(batch["lengths"].numpy(), np.sort(levels) + extra)
    assert len(difficulties.calls) == 5


def test_train_batch_at_one_level_has_that_length():
    batch = batches().train_batch(1, Fixed(7))
    assert batch["inputs"].shape == (BATCH_SIZE, 7, 2)
    assert torch.equal(batch["lengths"], torch.full((BATCH_SIZE,), 7))


def rows_of(source: SyntheticBatches, level=None) -> dict[str, torch.Tensor]:
    parts = list(source.validation_batches(level))
    assert all(len(part["lengths"]) <= VALIDATION_BATCH for part in parts)
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


@pytest.mark.parametrize("level", [None, 5, 12])
def test_validation_at_a_level_has_rows_of_that_level_and_is_fixed(level):
    val_size = VALIDATION_BATCH + 45  # two batches
    source = batches(val_size=val_size)
    rows = rows_of(source, level)
    assert len(rows["lengths"]) == val_size
    assert torch.equal(rows["lengths"], torch.full((val_size,), level or 20))
    assert rows["inputs"].shape == (val_size, level or 20, 2)
    assert_same(rows, rows_of(source, level))  # same on a second call
    assert_same(rows, rows_of(batches(val_size=val_size), level))  # and in a new worker


def test_validation_sets_of_different_levels_differ():
    source = batches()
    assert not torch.equal(rows_of(source, 20)["inputs"], rows_of(source)["inputs"])
    assert not torch.equal(rows_of(source, 20)["inputs"], rows_of(batches(seed=1), 20)["inputs"])


@pytest.mark.parametrize("task", [AddingProblem(20), CopyMemory(20)], ids=["adding", "copy"])
@pytest.mark.parametrize("level", [None, 8])
def test_rank_slices_cover_the_validation_set_exactly_once(task, level):
    val_size = VALIDATION_BATCH + 45  # odd: the two slices differ in size
    whole = rows_of(batches(task, val_size=val_size), level)
    slices = [rows_of(batches(task, rank=rank, world=2, val_size=val_size), level)
              for rank in (0, 1)]
    assert [len(s["lengths"]) for s in slices] == [(val_size + 1) // 2, val_size // 2]

    def keys(rows):
        return Counter(row.numpy().tobytes() for row in rows["inputs"])

    assert keys(slices[0]) + keys(slices[1]) == keys(whole)
    assert sum(keys(whole).values()) == val_size and len(keys(whole)) == val_size
    for rank, rows in enumerate(slices):
        for key in rows:
            assert torch.equal(rows[key], whole[key][rank::2]), (rank, key)
