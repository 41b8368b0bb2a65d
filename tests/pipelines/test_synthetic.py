from __future__ import annotations

import math
import time

import numpy as np
import pytest

from pipelines.synthetic import (
    IGNORE_INDEX,
    AddingProblem,
    CopyMemory,
    generate_at,
    make_task,
    rng_for,
    validation_set,
)


def _assert_batches_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def _batches_differ(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return not np.array_equal(a["inputs"], b["inputs"])


@pytest.mark.parametrize("seq_len", [2, 7, 100])
def test_adding_has_one_marker_per_half_and_target_is_their_sum(seq_len: int) -> None:
    batch = AddingProblem(seq_len).generate(rng_for(0, 0, 0), 256)
    values, markers = batch["inputs"][..., 0], batch["inputs"][..., 1]
    half = seq_len // 2
    assert batch["inputs"].shape == (256, seq_len, 2) and batch["inputs"].dtype == np.float32
    assert set(np.unique(markers)) <= {0.0, 1.0}
    np.testing.assert_array_equal(markers[:, :half].sum(axis=1), 1)
    np.testing.assert_array_equal(markers[:, half:].sum(axis=1), 1)
    assert values.min() >= 0.0 and values.max() < 1.0
    assert batch["targets"].shape == (256, 1) and batch["targets"].dtype == np.float32
    np.testing.assert_allclose(batch["targets"][:, 0], (values * markers).sum(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(batch["lengths"], np.full(256, seq_len))
    assert batch["lengths"].dtype == np.int64


def test_adding_seq_len_override_changes_the_length() -> None:
    batch = AddingProblem(100).generate(rng_for(0, 0, 0), 4, seq_len=10)
    assert batch["inputs"].shape == (4, 10, 2)
    np.testing.assert_array_equal(batch["lengths"], 10)


def test_adding_predicting_one_scores_the_baseline() -> None:
    task = AddingProblem(50)
    targets = task.generate(rng_for(1, 0, 0), 20_000)["targets"]
    assert task.baseline == pytest.approx(1 / 6)
    assert abs(float(np.mean((targets - 1.0) ** 2)) - 1 / 6) < 0.01


@pytest.mark.parametrize("task", [AddingProblem(20), CopyMemory(20)], ids=["adding", "copy"])
def test_generation_is_deterministic_per_seed_rank_step(task) -> None:
    reference = task.generate(rng_for(7, 1, 5), 8)
    _assert_batches_equal(reference, task.generate(rng_for(7, 1, 5), 8))
    for other in [(7, 2, 5), (7, 1, 6), (8, 1, 5)]:
        assert _batches_differ(reference, task.generate(rng_for(*other), 8)), other


def test_copy_layout() -> None:
    seq_len, n_symbols, copy_len = 15, 6, 4
    task = CopyMemory(seq_len, n_symbols=n_symbols, copy_len=copy_len)
    batch = task.generate(rng_for(0, 0, 0), 64)
    length = seq_len + 2 * copy_len
    blank, delimiter = n_symbols, n_symbols + 1
    assert task.input_size == n_symbols + 2 and task.output_size == n_symbols + 1
    assert batch["inputs"].shape == (64, length, n_symbols + 2)
    np.testing.assert_array_equal(batch["inputs"].sum(axis=-1), 1.0)  # one-hot
    tokens = batch["inputs"].argmax(axis=-1)
    symbols = tokens[:, :copy_len]
    assert symbols.max() < n_symbols and len(np.unique(symbols)) == n_symbols
    np.testing.assert_array_equal(tokens[:, copy_len:copy_len + seq_len - 1], blank)
    np.testing.assert_array_equal(tokens[:, copy_len + seq_len - 1], delimiter)
    np.testing.assert_array_equal(tokens[:, -copy_len:], blank)
    targets = batch["targets"]
    assert targets.shape == (64, length) and targets.dtype == np.int64
    np.testing.assert_array_equal(targets[:, :-copy_len], blank)
    np.testing.assert_array_equal(targets[:, -copy_len:], symbols)
    expected_scored = np.zeros(length, dtype=bool)
    expected_scored[-copy_len:] = True
    assert batch["scored"].dtype == np.bool_
    np.testing.assert_array_equal(batch["scored"], np.broadcast_to(expected_scored, (64, length)))
    np.testing.assert_array_equal(batch["lengths"], length)


def test_copy_baseline_formula() -> None:
    assert CopyMemory(100).baseline == pytest.approx(10 * math.log(8) / 120)
    assert CopyMemory(30, n_symbols=4, copy_len=5).baseline == pytest.approx(5 * math.log(4) / 40)


def test_copy_memoryless_strategy_scores_the_baseline() -> None:
    """Blanks with certainty, then uniform over symbols: a wrong layout would give inf."""
    task = CopyMemory(40, n_symbols=8, copy_len=10)
    batch = task.generate(rng_for(2, 0, 0), 2000)
    length = batch["targets"].shape[1]
    probs = np.zeros((length, task.output_size))
    probs[: length - task.copy_len, task.n_symbols] = 1.0
    probs[length - task.copy_len:, : task.n_symbols] = 1.0 / task.n_symbols
    with np.errstate(divide="ignore"):
        log_p = np.log(probs[np.arange(length), batch["targets"]])
    assert float(-log_p.mean()) == pytest.approx(task.baseline, rel=1e-9)


def test_validation_set_is_fixed_and_not_a_training_stream() -> None:
    task = CopyMemory(12)
    first = validation_set(task, seed=3, n=16)
    _assert_batches_equal(first, validation_set(task, seed=3, n=16))
    assert _batches_differ(first, validation_set(task, seed=4, n=16))
    assert _batches_differ(first, task.generate(rng_for(3, 0, 0), 16))


def test_make_task_builds_by_name_and_lists_valid_names() -> None:
    assert make_task("adding", 30) == AddingProblem(30)
    assert make_task("copy", 30) == CopyMemory(30)
    with pytest.raises(ValueError, match="adding, copy"):
        make_task("addition", 30)


def test_bad_lengths_and_seeds_are_rejected_naming_the_key() -> None:
    with pytest.raises(ValueError, match="task.seq_len"):
        AddingProblem(1)
    with pytest.raises(ValueError, match="task.copy_len"):
        CopyMemory(10, copy_len=0)
    with pytest.raises(ValueError, match="seed"):
        rng_for(-1, 0, 0)


@pytest.mark.parametrize("task", [AddingProblem(1000), CopyMemory(1000)], ids=["adding", "copy"])
def test_generation_is_fast(task) -> None:
    rng = rng_for(0, 0, 0)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        task.generate(rng, 64)
        best = min(best, time.perf_counter() - start)
    assert best < 0.010


# --- generate_at (rows of mixed difficulty) ------------------------------------------------

MIXED_DIFFICULTIES = np.array([7, 3, 12, 3, 7, 5, 12, 2])


@pytest.mark.parametrize("task", [AddingProblem(20), CopyMemory(20, copy_len=3)],
                         ids=["adding", "copy"])
def test_generate_at_rows_have_the_requested_lengths(task) -> None:
    batch = generate_at(task, rng_for(0, 0, 0), MIXED_DIFFICULTIES)
    extra = 0 if task.name == "adding" else 2 * task.copy_len  # copy: difficulty = delay
    expected = np.sort(MIXED_DIFFICULTIES) + extra
    assert batch["lengths"].dtype == np.int64
    np.testing.assert_array_equal(batch["lengths"], expected)
    assert batch["inputs"].shape == (len(expected), expected.max(), task.input_size)
    assert batch["inputs"].dtype == np.float32


def test_generate_at_pads_copy_rows_with_zeros_and_ignore_index() -> None:
    task = CopyMemory(20, n_symbols=5, copy_len=3)
    batch = generate_at(task, rng_for(1, 0, 0), MIXED_DIFFICULTIES)
    lengths, width = batch["lengths"], batch["inputs"].shape[1]
    inside = np.arange(width) < lengths[:, None]
    np.testing.assert_array_equal(batch["inputs"][~inside], 0.0)
    np.testing.assert_array_equal(batch["inputs"][inside].sum(axis=-1), 1.0)  # one-hot
    assert batch["targets"].dtype == np.int64 and batch["targets"].shape == (8, width)
    np.testing.assert_array_equal(batch["targets"][~inside], IGNORE_INDEX)
    assert np.all(batch["targets"][inside] >= 0)
    assert batch["scored"].dtype == np.bool_
    assert not batch["scored"][~inside].any()
    # each row keeps its own layout: delimiter at copy_len + delay - 1, symbols copied to
    # the last copy_len steps of its own length, and only those scored
    tokens = batch["inputs"].argmax(axis=-1)
    for row, delay in enumerate(np.sort(MIXED_DIFFICULTIES)):
        length = lengths[row]
        assert tokens[row, task.copy_len + delay - 1] == task.n_symbols + 1
        np.testing.assert_array_equal(batch["targets"][row, length - task.copy_len:length],
                                      tokens[row, :task.copy_len])
        np.testing.assert_array_equal(np.flatnonzero(batch["scored"][row]),
                                      np.arange(length - task.copy_len, length))


def test_generate_at_adding_target_is_the_sum_within_each_row() -> None:
    batch = generate_at(AddingProblem(20), rng_for(2, 0, 0), np.repeat(MIXED_DIFFICULTIES, 8))
    values, markers = batch["inputs"][..., 0], batch["inputs"][..., 1]
    lengths, width = batch["lengths"], values.shape[1]
    inside = np.arange(width) < lengths[:, None]
    np.testing.assert_array_equal(batch["inputs"][~inside], 0.0)
    half = np.arange(width) < (lengths // 2)[:, None]
    np.testing.assert_array_equal((markers * half).sum(axis=1), 1)  # one in the first half
    np.testing.assert_array_equal((markers * (inside & ~half)).sum(axis=1), 1)  # and second
    assert batch["targets"].shape == (len(lengths), 1)
    np.testing.assert_allclose(batch["targets"][:, 0], (values * markers).sum(axis=1),
                               rtol=1e-6)


@pytest.mark.parametrize("task", [AddingProblem(20), CopyMemory(20)], ids=["adding", "copy"])
def test_generate_at_one_difficulty_is_plain_generate(task) -> None:
    batch = generate_at(task, rng_for(3, 0, 0), np.full(16, 9))
    _assert_batches_equal(batch, task.generate(rng_for(3, 0, 0), 16, seq_len=9))


@pytest.mark.parametrize("task", [AddingProblem(20), CopyMemory(20)], ids=["adding", "copy"])
def test_generate_at_is_deterministic_given_the_rng(task) -> None:
    first = generate_at(task, rng_for(4, 1, 2), MIXED_DIFFICULTIES)
    _assert_batches_equal(first, generate_at(task, rng_for(4, 1, 2), MIXED_DIFFICULTIES))
    assert _batches_differ(first, generate_at(task, rng_for(4, 1, 3), MIXED_DIFFICULTIES))
