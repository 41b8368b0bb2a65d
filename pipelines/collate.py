"""Padding ragged rows into the batch format, and the numpy -> torch conversion.

The training loop only ever sees one layout (batch-first, padded, with true lengths):

    inputs   float32 (B, T, F)   0.0 past each row's length
    lengths  int64   (B,)
    targets  float32 (B, O) | int64 (B, T) padded with IGNORE_INDEX | int64 (B,)
    scored   bool    (B, T)      optional, per_step only, False past each row's length
    difficulty float32 (B,)      optional, a Parquet column a curriculum orders rows by

    row 0: x x x x x x      lengths[0] = 6
    row 1: x x x . . .      lengths[1] = 3   (. = padding)

Parquet rows have their own lengths. They arrive as Arrow `list<...>` columns (a row's
steps) or `list<list<...>>` columns (a row's steps of several features), and are padded
straight from Arrow's offsets and flattened values: no Python object per row or step.
Generators hand ragged rows over as a sequence of per-row arrays. `pad_batch` turns
either into the layout above without Ray, so it is tested alone; the collates of
`ray_datasets` only wrap it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

IGNORE_INDEX = -100
"""Target value of padded steps; torch's cross_entropy skips it by default."""

KINDS = ("regression", "per_step", "sequence")
"""Target kinds of the batch format; models/ has one head per kind."""

_FIXED_DTYPES = {"inputs": np.float32, "lengths": np.int64, "scored": np.bool_,
                 "difficulty": np.float32}


def check_kind(kind: str) -> str:
    """Return `kind` if it is one of KINDS, so a typo fails where it is made."""
    if kind not in KINDS:
        raise ValueError(f"Unknown task kind {kind!r}; expected one of {', '.join(KINDS)}.")
    return kind


def pad_rows(rows: np.ndarray | pa.Array | pa.ChunkedArray, *, fill: float | int | bool,
             dtype: type, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Pad per-row arrays of shape (T_i, ...) into one (B, max T_i, ...) array.

    `rows` is an Arrow list column (Parquet rows), a numeric ndarray already rectangular
    (every row full length), or a sequence of per-row arrays (a generator's ragged rows).
    Returns the padded array and the int64 row lengths. The copy is one masked assignment,
    not a Python loop over steps, because this runs for every training batch.
    """
    if isinstance(rows, np.ndarray) and rows.dtype != object:
        if rows.ndim < 2:
            raise ValueError(f"Column `{name}` must hold one sequence per row; got a flat "
                             f"array of shape {rows.shape}.")
        return rows.astype(dtype, copy=False), np.full(len(rows), rows.shape[1], np.int64)
    lengths, steps = (_arrow_parts(rows, name) if isinstance(rows, pa.Array | pa.ChunkedArray)
                      else _sequence_parts(rows, name))
    padded = np.full((len(lengths), lengths.max(), *steps.shape[1:]), fill, dtype=dtype)
    padded[np.arange(padded.shape[1]) < lengths[:, None]] = steps
    return padded, lengths


def _sequence_parts(rows, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(each row's number of steps, all rows' steps stacked along axis 0 in row order) of
    a sequence of per-row arrays."""
    lengths = _checked_lengths(np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)), name)
    return lengths, np.concatenate([np.asarray(row) for row in rows])


def _arrow_parts(rows: pa.Array | pa.ChunkedArray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The same of an Arrow list column, read from its offsets and flattened values."""
    rows = _arrow_rows(rows, name)
    lengths = _checked_lengths(pc.list_value_length(rows).to_numpy().astype(np.int64), name)
    return lengths, _arrow_steps(rows, name)


def _checked_lengths(lengths: np.ndarray, name: str) -> np.ndarray:
    """`lengths`, once it is known that every row has a step: checked before the steps
    are stacked, which an empty batch could not be."""
    if len(lengths) == 0 or lengths.min() == 0:
        raise ValueError(f"Column `{name}` has an empty row (or the batch has no rows); every "
                         f"row needs at least one step, got lengths {lengths.tolist()}.")
    return lengths


def _arrow_rows(rows: pa.Array | pa.ChunkedArray, name: str) -> pa.Array:
    """The column as one Arrow list array, after checking that it is one with no nulls."""
    if not _is_list(rows.type):
        raise ValueError(f"Column `{name}` must hold one list of steps per row; got Arrow "
                         f"type {rows.type}.")
    if rows.null_count:
        raise ValueError(f"Column `{name}` has {rows.null_count} missing (null) row(s); "
                         "every row needs its steps.")
    return rows.combine_chunks() if isinstance(rows, pa.ChunkedArray) else rows


def _arrow_steps(rows: pa.Array, name: str) -> np.ndarray:
    """All rows' steps stacked along axis 0 in row order (what the masked write expects):
    (steps,) or (steps, features)."""
    steps = rows.flatten()  # respects a sliced array's offset, unlike `.values`
    if not _is_list(steps.type):
        return steps.to_numpy(zero_copy_only=False)
    if steps.null_count:
        raise ValueError(f"Column `{name}` has {steps.null_count} missing (null) step(s); "
                         "every step needs its features.")
    widths = pc.list_value_length(steps).to_numpy()
    if widths.min() != widths.max():
        raise ValueError(f"Column `{name}` must have the same number of features at every "
                         f"step; found between {widths.min()} and {widths.max()}.")
    return steps.flatten().to_numpy(zero_copy_only=False).reshape(len(steps), widths[0])


def _is_list(arrow_type: pa.DataType) -> bool:
    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)


def pad_batch(columns: Mapping[str, np.ndarray | pa.Array | pa.ChunkedArray], kind: str
              ) -> dict[str, np.ndarray]:
    """Turn a batch of dataset rows (columns inputs, targets, optional scored and
    difficulty; numpy arrays or Arrow columns) into the numpy batch format, padding ragged
    rows and computing `lengths`."""
    inputs, lengths = pad_rows(columns["inputs"], fill=0.0, dtype=np.float32, name="inputs")
    batch = {"inputs": inputs, "lengths": lengths,
             "targets": _targets(columns["targets"], check_kind(kind), lengths)}
    if "scored" in columns:
        batch["scored"] = _per_step(columns["scored"], "scored", False, np.bool_, lengths)
    if "difficulty" in columns:
        batch["difficulty"] = np.asarray(columns["difficulty"], dtype=np.float32)
    return batch


def cut_window(window: pa.Table, kind: str, batch_size: int,
               by_length: bool) -> list[dict[str, np.ndarray]]:
    """A window of rows (an Arrow table) -> its full batches of `batch_size` rows, each
    padded on its own (rows left over, fewer than a batch, are dropped, as drop_last would).

    With `by_length`, the rows are ordered by length first (stable), so each batch holds
    rows of similar lengths and computes few padded steps: length bucketing. A window of
    many batches buckets better and shuffles less; the caller shuffles the batches' order.
    """
    order = np.arange(window.num_rows)
    if by_length:
        lengths = pc.list_value_length(window.column("inputs")).to_numpy()
        order = np.argsort(lengths, kind="stable")
    batches = []
    for start in range(0, window.num_rows - batch_size + 1, batch_size):
        rows = window.take(order[start:start + batch_size])
        batches.append(pad_batch({name: rows.column(name) for name in rows.column_names},
                                 kind))
    return batches


def select_rows(batch: Mapping[str, torch.Tensor], keep: torch.Tensor
                ) -> dict[str, torch.Tensor]:
    """The rows where `keep` is True, with padding trimmed to the longest of them (a
    curriculum that drops long rows also stops paying for their steps)."""
    kept = {name: tensor[keep] for name, tensor in batch.items()}
    steps = int(kept["lengths"].max())
    for name in ("inputs", "scored"):
        if name in kept:
            kept[name] = kept[name][:, :steps]
    if kept["targets"].ndim == 2 and not kept["targets"].is_floating_point():
        kept["targets"] = kept["targets"][:, :steps]  # per-step class targets
    return kept


def _targets(column: np.ndarray, kind: str, lengths: np.ndarray) -> np.ndarray:
    if kind == "sequence":
        return np.asarray(column, dtype=np.int64).reshape(-1)
    if kind == "per_step":
        return _per_step(column, "targets", IGNORE_INDEX, np.int64, lengths)
    targets, widths = pad_rows(column, fill=0.0, dtype=np.float32, name="targets")
    if widths.min() != widths.max():
        raise ValueError(f"Column `targets` of a regression task must have the same length "
                         f"(output_size) in every row; found lengths {sorted(set(widths))}.")
    return targets


def _per_step(column: np.ndarray, name: str, fill: int | bool, dtype: type,
              lengths: np.ndarray) -> np.ndarray:
    padded, column_lengths = pad_rows(column, fill=fill, dtype=dtype, name=name)
    if not np.array_equal(column_lengths, lengths):
        raise ValueError(f"Column `{name}` must have one entry per input step; row lengths "
                         f"{column_lengths.tolist()} differ from `inputs` row lengths "
                         f"{lengths.tolist()}.")
    return padded


def to_torch(batch_np: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Convert a numpy batch to torch tensors with the batch format's dtypes.

    Targets keep their family (float -> float32, integer -> int64) because the kind is
    decided by the task, not here. Arrays are copied only when the dtype differs or the
    array is read-only (Ray hands out read-only views; torch warns on those).
    """
    return {name: torch.from_numpy(np.require(array, dtype=_numpy_dtype(name, array),
                                              requirements=("C", "W")))
            for name, array in batch_np.items()}


def _numpy_dtype(name: str, array: np.ndarray) -> type:
    if name == "targets":
        return np.float32 if np.issubdtype(array.dtype, np.floating) else np.int64
    if name not in _FIXED_DTYPES:
        raise ValueError(f"Batch key {name!r} is not part of the batch format; expected "
                         f"inputs, lengths, targets and optionally scored.")
    return _FIXED_DTYPES[name]
