"""Ray Data end to end: read_split + iter_torch_batches(collate_fn=PaddingCollate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.data
import torch

from pipelines import sources
from pipelines.collate import IGNORE_INDEX
from pipelines.errors import DataError
from pipelines.parquet import read_task_info, write_dataset
from pipelines.ray_datasets import PaddingCollate, WindowCollate, read_split
from pipelines.sources import ShardBatches
from pipelines.synthetic import CopyMemory, rng_for

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def shared_ray(ray_address):
    """The session's Ray cluster (tests/conftest.py)."""


def _collect(split_dir: Path, kind: str) -> list[dict[str, torch.Tensor]]:
    dataset = read_split(split_dir)
    return list(dataset.iter_torch_batches(batch_size=8, collate_fn=PaddingCollate(kind)))


def test_synthetic_split_yields_the_batch_format(tmp_path: Path) -> None:
    task = CopyMemory(6, n_symbols=4, copy_len=3)
    write_dataset(task, tmp_path, rows=20, val_rows=4, seed=1, rows_per_file=8)
    info = read_task_info(tmp_path / "train")
    batches = _collect(tmp_path / "train", info.kind)
    length = 6 + 2 * 3
    assert [len(batch["lengths"]) for batch in batches] == [8, 8, 4]
    for batch in batches:
        rows = len(batch["lengths"])
        assert batch.keys() == {"inputs", "lengths", "targets", "scored"}
        assert batch["inputs"].shape == (rows, length, info.input_size)
        assert batch["inputs"].dtype == torch.float32
        assert batch["lengths"].dtype == torch.int64 and (batch["lengths"] == length).all()
        assert batch["targets"].shape == (rows, length) and batch["targets"].dtype == torch.int64
        assert batch["scored"].shape == (rows, length) and batch["scored"].dtype == torch.bool
    generated = [task.generate(rng_for(1, 0, part), n)["targets"]
                 for part, n in enumerate((8, 8, 4))]
    read_back = torch.cat([batch["targets"] for batch in batches]).numpy()
    assert sorted(map(bytes, read_back)) == sorted(map(bytes, np.concatenate(generated)))


def test_ragged_split_is_padded(tmp_path: Path) -> None:
    """Row i has length i + 1 and its inputs hold i, so each padded row can be checked."""
    lengths = list(range(1, 13))
    inputs = [[[float(i), 1.0]] * length for i, length in enumerate(lengths)]
    targets = [[i % 3] * length for i, length in enumerate(lengths)]
    scored = [[True] * length for length in lengths]
    pq.write_table(pa.table({
        "inputs": pa.array(inputs, type=pa.list_(pa.list_(pa.float32()))),
        "targets": pa.array(targets, type=pa.list_(pa.int64())),
        "scored": pa.array(scored, type=pa.list_(pa.bool_())),
    }), tmp_path / "part-00000.parquet")
    info = read_task_info(tmp_path, num_classes=3)
    batches = _collect(tmp_path, info.kind)
    assert sum(len(batch["lengths"]) for batch in batches) == len(lengths)
    for batch in batches:
        steps = batch["inputs"].shape[1]
        assert steps == int(batch["lengths"].max())
        assert batch["targets"].shape == batch["scored"].shape == (len(batch["lengths"]), steps)
        for row, length in enumerate(batch["lengths"].tolist()):
            row_id = int(batch["inputs"][row, 0, 0])
            assert length == lengths[row_id]
            assert (batch["inputs"][row, :length, 1] == 1.0).all()
            assert (batch["inputs"][row, length:] == 0.0).all()
            assert (batch["targets"][row, :length] == row_id % 3).all()
            assert (batch["targets"][row, length:] == IGNORE_INDEX).all()
            assert batch["scored"][row, :length].all() and not batch["scored"][row, length:].any()


class _AllRows:
    """A curriculum that admits every row."""

    def keep(self, rng, difficulties):
        return np.ones(len(difficulties), dtype=bool)


def _write_ragged(directory: Path, rows: int, files: int) -> None:
    """Sequence-classification rows of lengths 1..16 over several files; row i's inputs
    hold i, so a batch names its rows, and its `difficulty` is i % 4."""
    directory.mkdir()
    per_file = rows // files
    for part in range(files):
        ids = range(part * per_file, (part + 1) * per_file)
        pq.write_table(pa.table({
            "inputs": pa.array([[[float(i)]] * (1 + i * 7 % 16) for i in ids],
                               type=pa.list_(pa.list_(pa.float32()))),
            "targets": pa.array([i % 2 for i in ids], type=pa.int64()),
            "difficulty": pa.array([i % 4 for i in ids], type=pa.float32()),
        }), directory / f"part-{part:05d}.parquet")


def _stream(directory: Path, steps: int, position=None, window: int = 1, seed: int = 7,
            keep_rows: bool = False, shuffle_rows: int = 32
            ) -> tuple[list[list[int]], list[float], dict]:
    """The row ids of `steps` training batches of 8 rows, each batch's padding
    efficiency, and where the stream stands after them."""
    split = read_split(directory)
    batches = ShardBatches(split.iterator(), split.iterator(), 8, PaddingCollate("sequence"),
                           WindowCollate("sequence", 8, window),
                           shuffle_rows=shuffle_rows, seed=seed, rank=0, position=position,
                           keep_rows=keep_rows)
    ids, efficiency = [], []
    for step in range(steps):
        batch = batches.train_batch(step + 1, _AllRows())
        ids.append(batch["inputs"][:, 0, 0].int().tolist())
        efficiency.append(float(batch["lengths"].sum() / batch["inputs"].shape[:2].numel()))
    return ids, efficiency, batches.position()


@pytest.fixture
def ordered_reads():
    """Ray Data in the order the files hold, as the driver sets it for training."""
    context = ray.data.DataContext.get_current()
    before, context.execution_options.preserve_order = (
        context.execution_options.preserve_order, True)
    yield
    context.execution_options.preserve_order = before


@pytest.mark.parametrize("keep_rows", [False, True], ids=["streamed", "kept"])
def test_shard_batches_shuffle_every_epoch_repeat_with_the_seed_and_resume_exactly(
        tmp_path: Path, ordered_reads, keep_rows: bool) -> None:
    _write_ragged(tmp_path / "train", rows=64, files=4)  # 8 batches an epoch
    ids, _, position = _stream(tmp_path / "train", 16, keep_rows=keep_rows)
    assert position == {"epoch": 1, "taken": 8}
    first, second = ids[:8], ids[8:]
    files_order = [list(range(i, i + 8)) for i in range(0, 64, 8)]
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(64))
    assert first != second  # every epoch has its own order
    assert first != files_order
    assert _stream(tmp_path / "train", 16, keep_rows=keep_rows)[0] == ids  # the seed repeats
    assert _stream(tmp_path / "train", 8, seed=8, keep_rows=keep_rows)[0] != first

    # A run stopped mid-epoch continues where it stood.
    head, _, stopped = _stream(tmp_path / "train", 11, keep_rows=keep_rows)
    assert stopped == {"epoch": 1, "taken": 3}
    tail, _, _ = _stream(tmp_path / "train", 5, position=stopped, keep_rows=keep_rows)
    assert head + tail == ids

    # shuffle_rows=0 reads the files' order; only the batches' order changes.
    unshuffled = _stream(tmp_path / "train", 16, keep_rows=keep_rows, shuffle_rows=0)[0]
    assert sorted(unshuffled[:8]) == sorted(unshuffled[8:]) == files_order


def test_a_shard_kept_in_memory_is_read_once(tmp_path: Path, ordered_reads) -> None:
    _write_ragged(tmp_path / "train", rows=64, files=4)  # 8 batches an epoch
    split = read_split(tmp_path / "train")
    for keep_rows, passes in ((False, 3), (True, 1)):
        train = _CountedPasses(split.iterator())
        batches = ShardBatches(train, split.iterator(), 8, PaddingCollate("sequence"),
                               WindowCollate("sequence", 8, 1), shuffle_rows=32, seed=0,
                               rank=0, keep_rows=keep_rows)
        for step in range(1, 18):  # into the third epoch
            batches.train_batch(step, _AllRows())
        assert train.passes == passes, keep_rows


def test_too_few_rows_for_one_batch_is_a_data_error(tmp_path: Path, ordered_reads) -> None:
    _write_ragged(tmp_path / "train", rows=4, files=1)
    for keep_rows in (False, True):
        with pytest.raises(DataError, match=r"fewer than train.batch_size=8 rows"):
            _stream(tmp_path / "train", 1, keep_rows=keep_rows)


def test_length_bucketing_pads_less_and_resumes_exactly(tmp_path: Path, ordered_reads) -> None:
    _write_ragged(tmp_path / "train", rows=64, files=4)
    plain_ids, plain, _ = _stream(tmp_path / "train", 8)
    bucketed_ids, bucketed, _ = _stream(tmp_path / "train", 8, window=8)  # a whole epoch
    assert sorted(sum(bucketed_ids, [])) == list(range(64))  # an epoch is still every row
    assert np.mean(bucketed) > np.mean(plain) + 0.2, (np.mean(bucketed), np.mean(plain))
    assert _stream(tmp_path / "train", 16, window=8)[0][8:] != bucketed_ids  # reshuffled
    head, _, stopped = _stream(tmp_path / "train", 6, window=8)
    tail, _, _ = _stream(tmp_path / "train", 2, window=8, position=stopped)
    assert head + tail == bucketed_ids


@pytest.mark.parametrize(("shuffle_rows", "bucket_batches", "read", "buffer"), [
    (32, 1, 16, 32), (20, 1, 8, 20), (64, 2, 32, 64), (32, 3, 24, 48), (0, 1, 8, None),
    (0, 2, 16, None)])
def test_a_streamed_epoch_is_read_half_a_shuffle_buffer_at_a_time(
        tmp_path: Path, ordered_reads, shuffle_rows: int, bucket_batches: int, read: int,
        buffer: int | None) -> None:
    """Each read Ray Data hands over costs about the same CPU whatever its size, so a read
    holds half the shuffle buffer's rows, in whole windows of `bucket_batches` batches of
    8, and the buffer holds at least two reads."""
    _write_ragged(tmp_path / "train", rows=64, files=4)
    split = read_split(tmp_path / "train")
    train = _CountedPasses(split.iterator())
    batches = ShardBatches(train, split.iterator(), 8, PaddingCollate("sequence"),
                           WindowCollate("sequence", 8, bucket_batches),
                           shuffle_rows=shuffle_rows, seed=0, rank=0)
    ids = [batches.train_batch(step, _AllRows())["inputs"][:, 0, 0].int().tolist()
           for step in range(1, 9)]  # one epoch
    assert sorted(sum(ids, [])) == list(range(64))
    assert train.options["batch_size"] == read
    assert train.options["local_shuffle_buffer_size"] == buffer


def test_a_streamed_epoch_holds_every_row_when_a_window_is_the_whole_shuffle_buffer(
        tmp_path: Path, ordered_reads) -> None:
    """Ray's shuffle buffer hands over what it holds, short of a read, when it holds less
    than two reads; the rows short of a batch would be dropped from the epoch."""
    _write_ragged(tmp_path / "train", rows=1000, files=4)  # files of 7.8 windows of 32
    split = read_split(tmp_path / "train")
    batches = ShardBatches(split.iterator(), split.iterator(), 8, PaddingCollate("sequence"),
                           WindowCollate("sequence", 8, 4), shuffle_rows=32, seed=0, rank=0)
    ids = [batches.train_batch(step, _AllRows())["inputs"][:, 0, 0].int().tolist()
           for step in range(1, 126)]  # 125 batches an epoch
    assert sorted(sum(ids, [])) == list(range(1000))
    assert batches.position() == {"epoch": 0, "taken": 125}


@pytest.mark.parametrize("keep_rows", [False, True], ids=["streamed", "kept"])
def test_bucketed_ranks_take_batches_of_like_lengths_at_each_step(
        tmp_path: Path, ordered_reads, keep_rows: bool) -> None:
    """Each rank shuffles its rows with a seed of its own, but takes the batches of a read
    in the same order, so the ranks of a bucketed run wait little for each other."""
    _write_ragged(tmp_path / "train", rows=256, files=4)  # lengths 1 to 16

    def longest(rank: int) -> list[int]:
        split = read_split(tmp_path / "train")
        batches = ShardBatches(split.iterator(), split.iterator(), 8,
                               PaddingCollate("sequence"), WindowCollate("sequence", 8, 4),
                               shuffle_rows=64, seed=0, rank=rank, keep_rows=keep_rows)
        return [int(batches.train_batch(step, _AllRows())["lengths"].max())
                for step in range(1, 33)]  # one epoch

    first, second = longest(0), longest(1)
    assert first != second  # the ranks' rows differ
    assert np.mean(np.abs(np.subtract(first, second))) <= 1.5, (first, second)


def test_window_collate_sorts_each_window_of_a_read_alone() -> None:
    lengths = [9, 2, 7, 3, 8, 1, 6, 4]
    rows = pa.table({
        "inputs": pa.array([[[float(i)]] * n for i, n in enumerate(lengths)],
                           type=pa.list_(pa.list_(pa.float32()))),
        "targets": pa.array(range(len(lengths)), type=pa.int64()),
    })
    batches = WindowCollate("sequence", 2, 2)(rows)  # two windows of 4 rows
    assert [batch["lengths"].tolist() for batch in batches] == [[2, 3], [7, 9], [1, 4],
                                                                 [6, 8]]
    unsorted = WindowCollate("sequence", 2, 1)(rows)
    assert [batch["targets"].tolist() for batch in unsorted] == [[0, 1], [2, 3], [4, 5],
                                                                  [6, 7]]


class _CountedPasses:
    """A Ray Data iterator that counts the passes started over it and keeps the last
    pass's options."""

    def __init__(self, iterator) -> None:
        self.iterator, self.passes, self.options = iterator, 0, {}

    def iter_torch_batches(self, **options):
        self.passes += 1
        self.options = options
        return self.iterator.iter_torch_batches(**options)

    def iter_batches(self, **options):
        self.passes += 1
        return self.iterator.iter_batches(**options)


@pytest.mark.parametrize(("limit", "passes"), [(sources.VALIDATION_CACHE_BYTES, 1), (1, 4)])
def test_validation_rows_are_read_once_when_they_fit_and_streamed_when_not(
        tmp_path: Path, monkeypatch, limit: int, passes: int) -> None:
    _write_ragged(tmp_path / "val", rows=32, files=2)
    monkeypatch.setattr(sources, "VALIDATION_CACHE_BYTES", limit)
    val = _CountedPasses(read_split(tmp_path / "val", "difficulty").iterator())
    batches = ShardBatches(read_split(tmp_path / "val").iterator(), val, 8,
                           PaddingCollate("sequence"), WindowCollate("sequence", 8, 1),
                           shuffle_rows=0, seed=0, rank=0)

    def rows(level=None) -> dict[int, int]:
        """Row id -> length, over one validation pass."""
        return {int(row_id): int(length)
                for batch in batches.validation_batches(level)
                for row_id, length in zip(batch["inputs"][:, 0, 0], batch["lengths"],
                                          strict=True)}

    every = rows()
    assert sorted(every) == list(range(32))
    easy = rows(level=1)  # a curriculum's level: the rows of difficulty 0 and 1
    assert sorted(easy) == [row for row in range(32) if row % 4 <= 1]
    assert rows() == every
    assert rows(level=1) == easy  # the kept batches keep their difficulty column
    assert val.passes == passes
