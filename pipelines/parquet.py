"""Datasets on disk: one Parquet row per sequence, described by schema metadata.

Row schema (one row = one sequence of T_i steps):

    inputs   list<list<float32>>   (T_i, F)
    targets  list<float32>         regression, length O
             list<int64>           per_step, length T_i
             int64                 sequence
    scored   list<bool>            optional, per_step only, length T_i

Rows keep their own lengths on disk (no padding), so user data of mixed lengths needs
no preprocessing; padding happens per batch in `collate.pad_batch`. The Arrow schema
metadata key b"rnn_orch.task" carries a JSON TaskInfo, so a dataset says what model it
needs; user data without it is understood from the schema plus `task.num_classes`.
Only pyarrow is used here: reading a split's description needs no Ray.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.collate import KINDS
from pipelines.errors import DataError
from pipelines.synthetic import SyntheticTask, rng_for, validation_set

METADATA_KEY = b"rnn_orch.task"
_INPUTS_TYPE = "list<list<float>>"
_TARGETS_TYPES = "list<float> (regression), list<int> (per_step) or int (sequence)"


@dataclass(frozen=True)
class TaskInfo:
    """What a dataset needs from the model; baseline is None when nobody knows it.
    `input_mean` and `input_std` (one per input channel, empty when off) are the training
    split's statistics the model normalizes its inputs with (`task.normalize_channels`)."""

    kind: str
    input_size: int
    output_size: int
    baseline: float | None = None
    input_mean: tuple[float, ...] = ()
    input_std: tuple[float, ...] = ()

    @classmethod
    def of(cls, task: SyntheticTask) -> TaskInfo:
        return cls(task.kind, task.input_size, task.output_size, task.baseline)


def write_dataset(task: SyntheticTask, out_dir: str | Path, rows: int, val_rows: int, seed: int,
                  rows_per_file: int = 4096) -> None:
    """Write `rows` training and `val_rows` validation rows of `task` under out_dir/train
    and out_dir/val, `rows_per_file` rows per part-NNNNN.parquet file.

    Training file i holds task.generate(rng_for(seed, 0, i), ...) and the validation rows
    are validation_set(task, seed, val_rows), so the files equal what the generators give
    and training from them is comparable with training on the fly.
    """
    for name, value in (("rows", rows), ("val_rows", val_rows), ("rows_per_file", rows_per_file)):
        if value < 1:
            raise ValueError(f"write_dataset: {name} must be >= 1, got {value}.")
    root = _new_output_dir(Path(out_dir))
    metadata = {METADATA_KEY: json.dumps({"task": task.name, **asdict(TaskInfo.of(task))})}
    for part, start in enumerate(range(0, rows, rows_per_file)):
        batch = task.generate(rng_for(seed, 0, part), min(rows_per_file, rows - start))
        _write_part(root / "train", part, batch, metadata)
    val = validation_set(task, seed, val_rows)
    for part, start in enumerate(range(0, val_rows, rows_per_file)):
        rows_slice = {key: array[start:start + rows_per_file] for key, array in val.items()}
        _write_part(root / "val", part, rows_slice, metadata)


def _new_output_dir(out_dir: Path) -> Path:
    """Create train/ and val/ under out_dir, refusing to mix with an earlier dataset."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"Output directory {out_dir} already exists and is not empty; "
                        f"write_dataset only writes into a new or empty directory, so that a "
                        f"dataset never mixes files from two runs. Remove it or pick another.")
    for split in ("train", "val"):
        (out_dir / split).mkdir(parents=True, exist_ok=True)
    return out_dir


def _write_part(split_dir: Path, part: int, batch: dict[str, np.ndarray],
                metadata: dict[bytes, str]) -> None:
    lengths = batch["lengths"]
    columns = {"inputs": _list_column(batch["inputs"], lengths),
               "targets": _targets_column(batch["targets"], lengths)}
    if "scored" in batch:
        columns["scored"] = _list_column(batch["scored"], lengths)
    table = pa.table(columns).replace_schema_metadata(metadata)
    pq.write_table(table, split_dir / f"part-{part:05d}.parquet")


def _targets_column(targets: np.ndarray, lengths: np.ndarray) -> pa.Array:
    if targets.ndim == 1:
        return pa.array(targets)
    if targets.dtype.kind == "f":  # regression: every row has output_size values
        return _list_column(targets, np.full(len(targets), targets.shape[1], np.int64))
    return _list_column(targets, lengths)


def _list_column(padded: np.ndarray, lengths: np.ndarray) -> pa.ListArray:
    """(B, T, ...) padded rows -> list<...> holding each row's first lengths[i] steps.

    Built from offsets over one flat buffer: no per-row Python objects.
    """
    steps = padded[np.arange(padded.shape[1]) < lengths[:, None]]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(offsets, _steps_array(steps))


def _steps_array(steps: np.ndarray) -> pa.Array:
    if steps.ndim == 1:
        return pa.array(steps)
    width = steps.shape[1]
    offsets = np.arange(0, steps.size + 1, width, dtype=np.int32)
    return pa.ListArray.from_arrays(offsets, pa.array(steps.reshape(-1)))


def split_files(split_dir: str | Path) -> list[Path]:
    """The .parquet files of one split (searched recursively), in a stable order."""
    root = Path(split_dir)
    if not root.is_dir():
        raise DataError(f"Dataset split directory {root} does not exist or is not a "
                        f"directory; expected a directory of .parquet files (e.g. DIR/train "
                        f"as written by `rnn-orch data make`).")
    files = sorted(root.rglob("*.parquet"))
    if not files:
        raise DataError(f"Dataset split directory {root} contains no .parquet files; expected "
                        f"one or more files with columns inputs ({_INPUTS_TYPE}) and targets.")
    return files


def arrow_bytes(split_dir: str | Path) -> int:
    """About what the split's rows take in memory as Arrow: the uncompressed sizes its
    files' footers record, read without reading a row."""
    total = 0
    for path in split_files(split_dir):
        metadata = pq.read_metadata(path)
        total += sum(metadata.row_group(i).total_byte_size
                     for i in range(metadata.num_row_groups))
    return total


def difficulty_quantiles(split_dir: str | Path, column: str) -> list[int]:
    """The 0th, 1st, ..., 100th percentiles of the rows' difficulty: the values of `column`
    (config key curriculum.difficulty), or each row's number of steps for "length".

    A curriculum on data needs them to turn a level or a competence into the rows it
    admits. "length" streams the `inputs` column once, a batch of rows at a time, and
    keeps only each row's length, so a split larger than memory is measured; a numeric
    column is cheaper still.
    """
    files = split_files(split_dir)
    if column == "length":
        values = pa.chunked_array(
            [pc.list_value_length(batch.column("inputs")) for path in files
             for batch in pq.ParquetFile(path).iter_batches(columns=["inputs"])],
            pa.int32())
    else:
        kind = _column_type(files[0], pq.read_schema(files[0]), column,
                            "an integer per row (curriculum.difficulty)")
        if not pa.types.is_integer(kind):
            raise DataError(f"{files[0]}: column `{column}` (curriculum.difficulty) has type "
                            f"{kind}; expected an integer per row (a length, a count, a "
                            "rank), on the scale of curriculum.start and round_to.")
        values = pq.ParquetDataset(files).read(columns=[column])[column]
    quantiles = pc.quantile(values, q=np.linspace(0.0, 1.0, 101).tolist(),
                            interpolation="lower")
    return [int(value) for value in quantiles.to_pylist()]


def channel_statistics(split_dir: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and standard deviation of each input channel over every step of every row of
    a split, read file by file in record batches (float64 sums, so memory stays bounded
    and the figures repeat exactly). A channel that never varies gets std 1: it is only
    shifted. A non-finite value is refused, naming its file: it would turn every
    normalized input into NaN."""
    count, total, squares = 0, 0.0, 0.0
    for path in split_files(split_dir):
        for batch in pq.ParquetFile(path).iter_batches(columns=["inputs"]):
            steps = pc.list_flatten(batch.column("inputs"))
            if len(steps) == 0:
                continue
            widths = pc.min_max(pc.list_value_length(steps)).as_py()
            if widths["min"] != widths["max"]:
                raise DataError(f"{path}: the steps in column `inputs` hold between "
                                f"{widths['min']} and {widths['max']} features; expected the "
                                "same number in every step.")
            values = pc.list_flatten(steps).to_numpy(zero_copy_only=False)
            values = values.astype(np.float64).reshape(len(steps), widths["max"])
            if not np.isfinite(values).all():
                raise DataError(f"{path}: column `inputs` holds NaN or infinite values, so "
                                "task.normalize_channels cannot fit the channels' statistics; "
                                "expected finite numbers (clean the data or leave the key off).")
            count += len(values)
            total = total + values.sum(axis=0)
            squares = squares + (values ** 2).sum(axis=0)
    if count == 0:
        raise DataError(f"{split_dir}: no steps in column `inputs`; expected at least one "
                        "to fit task.normalize_channels on.")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
    std = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def read_task_info(split_dir: str | Path, num_classes: int | None = None) -> TaskInfo:
    """Describe a split from its first file: the metadata when present, else the schema.

    The schema is checked either way, so a file that does not fit the row schema fails
    here, naming the file and column, instead of deep inside a training worker.
    `num_classes` (config key task.num_classes) gives the output size of classification
    data written without metadata.
    """
    path = split_files(split_dir)[0]
    schema = pq.read_schema(path)
    kind = _kind_from_schema(path, schema)
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return _info_from_rows(path, kind, num_classes)
    info = _info_from_metadata(path, raw)
    if info.kind != kind:
        targets_type = schema.field("targets").type
        raise DataError(f"{path}: the {METADATA_KEY.decode()} metadata says kind "
                        f"{info.kind!r} but the `targets` column type {targets_type} means "
                        f"{kind!r}; expected them to agree.")
    if num_classes is not None and kind != "regression" and num_classes != info.output_size:
        raise DataError(f"{path}: task.num_classes is {num_classes} but the dataset metadata "
                        f"says output_size {info.output_size}; expected them to agree (or "
                        f"leave task.num_classes unset).")
    return info


def _column_type(path: Path, schema: pa.Schema, column: str, expected: str) -> pa.DataType:
    if column not in schema.names:
        raise DataError(f"{path}: column `{column}` is missing; expected a column `{column}` "
                        f"of type {expected} (found columns: {', '.join(schema.names)}).")
    return schema.field(column).type


def _is_list(arrow_type: pa.DataType) -> bool:
    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)


def _kind_from_schema(path: Path, schema: pa.Schema) -> str:
    """Check the column types and return the kind that the `targets` type implies."""
    inputs = _column_type(path, schema, "inputs", _INPUTS_TYPE)
    if not (_is_list(inputs) and _is_list(inputs.value_type)
            and pa.types.is_floating(inputs.value_type.value_type)):
        raise DataError(f"{path}: column `inputs` has type {inputs}; expected {_INPUTS_TYPE} "
                        f"(one list of F features per step).")
    targets = _column_type(path, schema, "targets", _TARGETS_TYPES)
    if pa.types.is_integer(targets):
        kind = "sequence"
    elif _is_list(targets) and pa.types.is_floating(targets.value_type):
        kind = "regression"
    elif _is_list(targets) and pa.types.is_integer(targets.value_type):
        kind = "per_step"
    else:
        raise DataError(f"{path}: column `targets` has type {targets}; expected "
                        f"{_TARGETS_TYPES}.")
    if "scored" in schema.names:
        scored = schema.field("scored").type
        if kind != "per_step" or not (_is_list(scored) and pa.types.is_boolean(scored.value_type)):
            raise DataError(f"{path}: column `scored` has type {scored} with {kind} targets; "
                            f"expected list<bool> and only with per_step (list<int>) targets.")
    return kind


def _info_from_metadata(path: Path, raw: bytes) -> TaskInfo:
    key = METADATA_KEY.decode()
    try:
        meta = json.loads(raw)
        info = TaskInfo(str(meta["kind"]), int(meta["input_size"]), int(meta["output_size"]),
                        None if meta.get("baseline") is None else float(meta["baseline"]))
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: schema metadata {key} is not a JSON object with kind, "
                        f"input_size, output_size and baseline ({error!r}).") from error
    if info.kind not in KINDS:
        raise DataError(f"{path}: schema metadata {key} has kind {info.kind!r}; expected one "
                        f"of {', '.join(KINDS)}.")
    return info


def _info_from_rows(path: Path, kind: str, num_classes: int | None) -> TaskInfo:
    """Sizes of a dataset without metadata: features from its first row; the class count
    cannot be seen in a sample, so classification data must state it."""
    first = next(pq.ParquetFile(path).iter_batches(batch_size=1, columns=["inputs", "targets"]),
                 None)
    if first is None or first.num_rows == 0:
        raise DataError(f"{path}: the file has no rows; expected at least one sequence.")
    row = first.to_pylist()[0]
    if not row["inputs"]:
        raise DataError(f"{path}: the first row of column `inputs` has no steps; expected a "
                        f"sequence of at least one step.")
    input_size = len(row["inputs"][0])
    if kind == "regression":
        return TaskInfo(kind, input_size, len(row["targets"]))
    if num_classes is None:
        raise DataError(f"{path}: column `targets` holds {kind} class ids and the file has no "
                        f"{METADATA_KEY.decode()} metadata, so the number of classes is unknown; "
                        f"set task.num_classes.")
    return TaskInfo(kind, input_size, num_classes)
