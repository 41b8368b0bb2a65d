"""Ray Data end to end: read_split + iter_torch_batches(collate_fn=PaddingCollate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.collate import IGNORE_INDEX
from pipelines.parquet import read_task_info, write_dataset
from pipelines.ray_datasets import PaddingCollate, read_split
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
