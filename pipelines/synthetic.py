"""Synthetic long-memory tasks, generated on the fly as numpy batches.

The tasks exist because their answer depends on inputs far in the past, so they show
vanishing gradients plainly, and each has a known loss for a model that learned nothing
(`baseline`): a run is only learning once it beats it.

Every batch comes from `rng_for(seed, rank, step)`, so a run is reproducible, ranks see
different data without coordinating, and a restarted worker regenerates the exact batch
it was on. Generation is vectorised (no Python loop over rows or steps) so it never
becomes the bottleneck of a small recurrent model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pipelines.collate import IGNORE_INDEX, pad_batch

__all__ = ["IGNORE_INDEX", "TASK_NAMES", "VALIDATION_STREAM", "AddingProblem", "CopyMemory",
           "SyntheticTask", "generate_at", "make_task", "rng_for", "validation_set"]

VALIDATION_STREAM = 2**31 - 1
"""Stream id of the fixed validation set; far above any rank, so never a training stream."""


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    """An independent generator for one stream, e.g. `rng_for(seed, rank, step)`.

    SeedSequence mixes the ids so nearby seeds and streams give unrelated numbers. Its
    pool pads short entropy with zeros, so trailing zero ids do not make a new stream
    (`rng_for(s, 3) == rng_for(s, 3, 0)`): give every family of streams a fixed length.
    """
    if min((seed, *stream)) < 0:
        raise ValueError(f"rng_for(seed={seed}, stream={stream}): the seed and the stream ids "
                         f"must be non-negative integers.")
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _full_lengths(n: int, length: int) -> np.ndarray:
    return np.full(n, length, dtype=np.int64)


@dataclass(frozen=True)
class AddingProblem:
    """Adding problem: sum the two marked values of a long sequence.

    Hochreiter & Schmidhuber 1997, "Long Short-Term Memory", Neural Computation 9(8).
    Le, Jaitly & Hinton 2015, "A Simple Way to Initialize Recurrent Networks of
    Rectified Linear Units", arXiv:1504.00941 (the variant used here).

    Channel 0 holds U[0, 1] values; channel 1 marks one step in each half. The first
    marker sits at least seq_len/2 steps before the end, so the model must carry it.
    """

    seq_len: int
    name: ClassVar[str] = "adding"
    kind: ClassVar[str] = "regression"
    input_size: ClassVar[int] = 2
    output_size: ClassVar[int] = 1

    def __post_init__(self) -> None:
        _check_int("task.seq_len", self.seq_len, minimum=2)

    @property
    def baseline(self) -> float:
        """MSE of always predicting 1, the target's mean: the variance of a sum of two
        U[0, 1] values, 2 * 1/12."""
        return 1 / 6

    def generate(self, rng: np.random.Generator, n: int,
                 seq_len: int | None = None) -> dict[str, np.ndarray]:
        """`n` rows in the numpy batch format; `seq_len` overrides the length (curricula)."""
        length = self.seq_len if seq_len is None else _check_int("seq_len", seq_len, 2)
        values = rng.random((n, length), dtype=np.float32)
        rows = np.arange(n)
        first = rng.integers(0, length // 2, size=n)
        second = rng.integers(length // 2, length, size=n)
        markers = np.zeros((n, length), dtype=np.float32)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        return {
            "inputs": np.stack([values, markers], axis=-1),
            "lengths": _full_lengths(n, length),
            "targets": (values[rows, first] + values[rows, second])[:, None],
        }


@dataclass(frozen=True)
class CopyMemory:
    """Copy memory: reproduce a short symbol string after a long blank delay.

    Arjovsky, Shah & Bengio 2016, "Unitary Evolution Recurrent Neural Networks", ICML.

    One row (L = copy_len, T = seq_len, one-hot inputs, class ids as targets):

        step     0 .. L-1 | L .. L+T-2 | L+T-1 | L+T .. T+2L-1
        input    s_1..s_L | blank      | delim | blank
        target   blank    | blank      | blank | s_1..s_L     <- `scored`

    Symbols are 0..n_symbols-1, blank = n_symbols, delimiter = n_symbols + 1 (input only).
    """

    seq_len: int
    n_symbols: int = 8
    copy_len: int = 10
    name: ClassVar[str] = "copy"
    kind: ClassVar[str] = "per_step"

    def __post_init__(self) -> None:
        _check_int("task.seq_len", self.seq_len, minimum=1)
        _check_int("task.n_symbols", self.n_symbols, minimum=2)
        _check_int("task.copy_len", self.copy_len, minimum=1)

    @property
    def input_size(self) -> int:
        return self.n_symbols + 2

    @property
    def output_size(self) -> int:
        return self.n_symbols + 1

    @property
    def baseline(self) -> float:
        """Cross-entropy per step of the memoryless strategy: blanks (exactly) until the
        last copy_len steps, then a uniform guess among the symbols."""
        return self.copy_len * math.log(self.n_symbols) / (self.seq_len + 2 * self.copy_len)

    def generate(self, rng: np.random.Generator, n: int,
                 seq_len: int | None = None) -> dict[str, np.ndarray]:
        """`n` rows in the numpy batch format; `seq_len` overrides the delay (curricula)."""
        delay = self.seq_len if seq_len is None else _check_int("seq_len", seq_len, 1)
        blank, delimiter, copy_len = self.n_symbols, self.n_symbols + 1, self.copy_len
        length = delay + 2 * copy_len
        symbols = rng.integers(0, self.n_symbols, size=(n, copy_len))
        tokens = np.full((n, length), blank, dtype=np.int64)
        tokens[:, :copy_len] = symbols
        tokens[:, copy_len + delay - 1] = delimiter
        targets = np.full((n, length), blank, dtype=np.int64)
        targets[:, -copy_len:] = symbols
        scored = np.zeros((n, length), dtype=bool)
        scored[:, -copy_len:] = True
        return {
            "inputs": np.eye(self.input_size, dtype=np.float32)[tokens],
            "lengths": _full_lengths(n, length),
            "targets": targets,
            "scored": scored,
        }


SyntheticTask = AddingProblem | CopyMemory

_TASKS: dict[str, type[AddingProblem] | type[CopyMemory]] = {
    AddingProblem.name: AddingProblem,
    CopyMemory.name: CopyMemory,
}
TASK_NAMES = tuple(_TASKS)


def make_task(name: str, seq_len: int) -> SyntheticTask:
    """The synthetic task called `name` (a `task.name` config value) at length `seq_len`."""
    if name not in _TASKS:
        raise ValueError(f"Unknown synthetic task {name!r} (task.name); expected one of "
                         f"{', '.join(TASK_NAMES)}.")
    return _TASKS[name](seq_len)


def validation_set(task: SyntheticTask, seed: int, n: int) -> dict[str, np.ndarray]:
    """The fixed validation batch: the same rows on every call and every rank, always at
    the task's own seq_len, so val_loss compares across runs and curriculum levels."""
    return task.generate(rng_for(seed, VALIDATION_STREAM), n)


def generate_at(task: SyntheticTask, rng: np.random.Generator,
                difficulties: np.ndarray) -> dict[str, np.ndarray]:
    """One batch whose row i has length (difficulty) `difficulties[i]`, padded to the
    longest: what a curriculum that mixes levels in a batch asks for. Rows come grouped
    by length, one vectorised `generate` call per distinct length."""
    levels = np.unique(difficulties)
    if len(levels) == 1:
        return task.generate(rng, len(difficulties), seq_len=int(levels[0]))
    parts = [task.generate(rng, int(np.sum(difficulties == level)), seq_len=int(level))
             for level in levels]
    columns = {name: _rows_of([part[name] for part in parts])
               for name in parts[0] if name != "lengths"}
    return pad_batch(columns, task.kind)


def _rows_of(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack parts that share a shape; otherwise one object array of rows (ragged)."""
    if all(array.shape[1:] == arrays[0].shape[1:] for array in arrays):
        return np.concatenate(arrays)
    rows = np.empty(sum(len(array) for array in arrays), dtype=object)
    rows[:] = [row for array in arrays for row in array]
    return rows
