from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipelines.collate import (
    IGNORE_INDEX,
    cut_window,
    pad_batch,
    pad_rows,
    select_rows,
    to_torch,
)
from pipelines.synthetic import AddingProblem, CopyMemory, generate_at, rng_for


def _object_array(items: list) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = [None] * len(items)  # keep numpy from broadcasting equal-length items
    for i, item in enumerate(items):
        array[i] = item
    return array


def _arrow_rows(rows: list[np.ndarray]) -> pa.ChunkedArray:
    """A list<list<float>> column as Parquet holds it, in two chunks."""
    column = pa.array([row.tolist() for row in rows], type=pa.list_(pa.list_(pa.float32())))
    return pa.chunked_array([column[:1], column[1:]])


def test_pad_rows_pads_ragged_rows_with_the_fill_value() -> None:
    rows = _object_array([np.array([1, 2, 3]), np.array([4]), np.array([5, 6])])
    padded, lengths = pad_rows(rows, fill=IGNORE_INDEX, dtype=np.int64, name="targets")
    np.testing.assert_array_equal(lengths, [3, 1, 2])
    np.testing.assert_array_equal(padded, [[1, 2, 3], [4, -100, -100], [5, 6, -100]])
    assert padded.dtype == np.int64 and lengths.dtype == np.int64


def test_pad_rows_reads_arrow_list_columns_of_feature_rows() -> None:
    rng = np.random.default_rng(0)
    rows = [rng.random((t, 3), dtype=np.float32) for t in (4, 2, 5)]
    padded, lengths = pad_rows(_arrow_rows(rows), fill=0.0, dtype=np.float32, name="inputs")
    assert padded.shape == (3, 5, 3) and padded.dtype == np.float32
    np.testing.assert_array_equal(lengths, [4, 2, 5])
    for row, (original, length) in enumerate(zip(rows, lengths, strict=True)):
        np.testing.assert_array_equal(padded[row, :length], original)
        np.testing.assert_array_equal(padded[row, length:], 0.0)


def test_pad_rows_passes_rectangular_arrays_through() -> None:
    rows = np.ones((2, 6, 3), dtype=np.float64)
    padded, lengths = pad_rows(rows, fill=0.0, dtype=np.float32, name="inputs")
    assert padded.shape == (2, 6, 3) and padded.dtype == np.float32
    np.testing.assert_array_equal(lengths, [6, 6])


def test_pad_rows_rejects_empty_rows_and_uneven_features() -> None:
    with pytest.raises(ValueError, match="`inputs` has an empty row"):
        pad_rows(_object_array([np.ones(2), np.ones(0)]), fill=0.0, dtype=np.float32,
                 name="inputs")
    with pytest.raises(ValueError, match="`inputs` has an empty row"):
        pad_rows(pa.array([[1.0], []]), fill=0.0, dtype=np.float32, name="inputs")
    uneven = pa.array([[[1.0, 2.0, 3.0], [1.0, 2.0]]])
    with pytest.raises(ValueError, match="`inputs` must have the same number of features"):
        pad_rows(uneven, fill=0.0, dtype=np.float32, name="inputs")


def test_pad_rows_refuses_arrow_nulls_and_non_list_columns() -> None:
    with pytest.raises(ValueError, match=r"`inputs` has 1 missing \(null\) row"):
        pad_rows(pa.array([[1.0], None]), fill=0.0, dtype=np.float32, name="inputs")
    with pytest.raises(ValueError, match="`inputs` must hold one list of steps per row"):
        pad_rows(pa.array([1.0, 2.0]), fill=0.0, dtype=np.float32, name="inputs")


def test_pad_rows_reads_a_sliced_arrow_column_from_its_own_offset() -> None:
    column = pa.array([[1, 2], [3], [4, 5, 6]], type=pa.list_(pa.int64()))[1:]
    padded, lengths = pad_rows(column, fill=-1, dtype=np.int64, name="targets")
    np.testing.assert_array_equal(lengths, [1, 3])
    np.testing.assert_array_equal(padded, [[3, -1, -1], [4, 5, 6]])


def test_pad_batch_per_step_pads_inputs_targets_and_scored() -> None:
    rows = [np.full((t, 2), t, dtype=np.float32) for t in (3, 1)]
    columns = {
        "inputs": _arrow_rows(rows),
        "targets": _object_array([np.array([0, 1, 2]), np.array([5])]),
        "scored": _object_array([np.array([False, True, True]), np.array([True])]),
    }
    batch = pad_batch(columns, "per_step")
    np.testing.assert_array_equal(batch["lengths"], [3, 1])
    np.testing.assert_array_equal(batch["inputs"][1], [[1, 1], [0, 0], [0, 0]])
    np.testing.assert_array_equal(batch["targets"], [[0, 1, 2], [5, IGNORE_INDEX, IGNORE_INDEX]])
    np.testing.assert_array_equal(batch["scored"], [[False, True, True], [True, False, False]])


def test_pad_batch_regression_and_sequence_targets() -> None:
    inputs = _arrow_rows([np.ones((2, 1)), np.ones((4, 1))])
    regression = pad_batch({"inputs": inputs,
                            "targets": _object_array([np.array([0.5, 1.0]),
                                                      np.array([2.0, 3.0])])}, "regression")
    assert regression["targets"].dtype == np.float32
    np.testing.assert_array_equal(regression["targets"], [[0.5, 1.0], [2.0, 3.0]])
    sequence = pad_batch({"inputs": inputs, "targets": np.array([3, 1])}, "sequence")
    assert sequence["targets"].dtype == np.int64
    np.testing.assert_array_equal(sequence["targets"], [3, 1])


def test_pad_batch_rejects_targets_that_do_not_match_the_inputs() -> None:
    inputs = _arrow_rows([np.ones((3, 1)), np.ones((2, 1))])
    with pytest.raises(ValueError, match="`targets` must have one entry per input step"):
        pad_batch({"inputs": inputs,
                   "targets": _object_array([np.zeros(3, int), np.zeros(3, int)])}, "per_step")
    with pytest.raises(ValueError, match="`targets` of a regression task"):
        pad_batch({"inputs": inputs,
                   "targets": _object_array([np.zeros(1), np.zeros(2)])}, "regression")
    with pytest.raises(ValueError, match="regression, per_step, sequence"):
        pad_batch({"inputs": inputs, "targets": np.array([0, 1])}, "classification")


@pytest.mark.parametrize("task, target_dtype",
                         [(AddingProblem(9), torch.float32), (CopyMemory(9), torch.int64)],
                         ids=["adding", "copy"])
def test_to_torch_uses_the_batch_format_dtypes(task, target_dtype) -> None:
    batch_np = task.generate(rng_for(0, 0, 0), 4)
    batch = to_torch(batch_np)
    assert batch.keys() == batch_np.keys()
    assert batch["inputs"].dtype == torch.float32 and batch["lengths"].dtype == torch.int64
    assert batch["targets"].dtype == target_dtype
    if "scored" in batch:
        assert batch["scored"].dtype == torch.bool
    for key, array in batch_np.items():
        np.testing.assert_array_equal(batch[key].numpy(), array)


@pytest.mark.filterwarnings("error")  # torch warns when handed a read-only array
def test_to_torch_converts_dtypes_and_read_only_arrays() -> None:
    inputs = np.ones((1, 2, 1))
    inputs.flags.writeable = False
    batch = to_torch({"inputs": inputs, "lengths": np.array([2], dtype=np.int32),
                      "targets": np.array([1], dtype=np.int32)})
    assert batch["inputs"].dtype == torch.float32
    assert batch["lengths"].dtype == torch.int64 and batch["targets"].dtype == torch.int64
    with pytest.raises(ValueError, match="'mask'"):
        to_torch({"mask": np.ones(2)})


def test_select_rows_keeps_the_chosen_rows_and_trims_their_padding():
    task = CopyMemory(20, copy_len=2)
    batch = to_torch(generate_at(task, rng_for(0, 0, 1), np.array([3, 30, 5, 3])))
    keep = batch["lengths"] < 20  # the rows of delay 3 and 5 (lengths 7, 7, 9)
    kept = select_rows(batch, keep)
    assert kept["lengths"].tolist() == [7, 7, 9]
    assert kept["inputs"].shape == (3, 9, task.input_size)
    assert kept["targets"].shape == kept["scored"].shape == (3, 9)
    assert torch.equal(kept["targets"], batch["targets"][keep][:, :9])


def test_select_rows_leaves_regression_targets_whole():
    batch = to_torch(generate_at(AddingProblem(20), rng_for(0, 0, 1), np.array([4, 20])))
    kept = select_rows(batch, torch.tensor([True, False]))
    assert kept["inputs"].shape == (1, 4, 2) and kept["targets"].shape == (1, 1)


def _ragged_window(lengths: list[int]) -> pa.Table:
    """Sequence-classification rows of the given lengths; each row's label is its index."""
    inputs = _arrow_rows([np.full((n, 2), float(i), np.float32)
                          for i, n in enumerate(lengths)])
    return pa.table({"inputs": inputs, "targets": np.arange(len(lengths))})


def test_cut_window_buckets_rows_by_length_and_pads_each_batch_alone() -> None:
    lengths = [9, 2, 7, 3, 8, 1, 9]
    batches = cut_window(_ragged_window(lengths), "sequence", batch_size=2, by_length=True)
    # Sorted by length (stable): 1, 2, 3, 7, 8, 9, 9 -> three full batches, one row left.
    assert [b["lengths"].tolist() for b in batches] == [[1, 2], [3, 7], [8, 9]]
    assert [b["inputs"].shape[1] for b in batches] == [2, 7, 9]
    assert [b["targets"].tolist() for b in batches] == [[5, 1], [3, 2], [4, 0]]
    # Each row's features travel with it.
    for batch in batches:
        assert (batch["inputs"][:, 0, 0] == batch["targets"]).all()


def test_cut_window_without_bucketing_keeps_the_order_and_drops_the_remainder() -> None:
    lengths = [9, 2, 7, 3, 8]
    batches = cut_window(_ragged_window(lengths), "sequence", batch_size=2, by_length=False)
    assert [b["targets"].tolist() for b in batches] == [[0, 1], [2, 3]]
    assert [b["inputs"].shape[1] for b in batches] == [9, 7]
    padded = sum(b["inputs"].shape[0] * b["inputs"].shape[1] for b in batches)
    bucketed = cut_window(_ragged_window(lengths), "sequence", batch_size=2, by_length=True)
    assert sum(b["inputs"].shape[0] * b["inputs"].shape[1] for b in bucketed) < padded
