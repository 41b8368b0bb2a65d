"""Labelled sequences of different lengths and several channels (sensor recordings,
speech features, gestures), converted into the Parquet rows a `task.name: parquet` run
trains a sequence classifier on (`pipelines.parquet`: `inputs` T_i x C, `targets` a
class id).

Two inputs, read by libraries that already know them:

- the UEA/UCR archive's `.ts` files, through sktime's reader (`load_from_tsfile`);
  sktime also carries some of the archive's datasets inside its wheel, such as
  JapaneseVowels (`rnn-orch data fetch japanese_vowels`);
- a long table, CSV or Parquet, one row per step: a sequence id, a time (or step)
  column, the channel columns, and the label, through pyarrow.

    rnn-orch data sequences --train X_TRAIN.ts --test X_TEST.ts --out data/x
    rnn-orch data sequences --train steps.csv --sequence-id take --time t \\
        --channels ax,ay,az --label gesture --out data/gestures

The output is `train/`, `val/` and, with a test input, `test/`, each in several Parquet
shards, with the classes' names in the metadata. A validation split is drawn from the
training input (stratified by class, seeded) when none is given.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.errors import DataError
from pipelines.parquet import METADATA_KEY, TaskInfo
from pipelines.tables import read_columns

CLASSES_KEY = b"rnn_orch.classes"


@dataclass(frozen=True)
class Labelled:
    """Sequences (each T_i x C float32) and their labels, as read from `source`."""

    sequences: list[np.ndarray]
    labels: list[str]
    source: str


def read_ts(path: str | Path) -> Labelled:
    """A `.ts` file of the UEA/UCR archive: one case per row, a label per case."""
    from sktime.datasets import load_from_tsfile

    try:
        frame, labels = load_from_tsfile(str(path), return_data_type="nested_univ")
    except (OSError, ValueError, TypeError) as error:  # sktime's words for a bad file
        raise DataError(f"{path}: not a readable .ts file ({error}).") from None
    sequences = []
    for case, row in enumerate(frame.itertuples(index=False)):
        lengths = {len(channel) for channel in row}
        if len(lengths) > 1:
            raise DataError(f"{path}: case {case} has channels of different lengths "
                            f"({sorted(lengths)}); expected every channel of a case to "
                            "have one value per step.")
        sequences.append(np.stack([np.asarray(channel, dtype=np.float32) for channel in row],
                                  axis=1))
    return checked(Labelled(sequences, [str(label) for label in labels], str(path)))


def read_long_table(path: str, sequence_id: str, time_column: str, channels: list[str],
                    label: str) -> Labelled:
    """A table with one row per step: rows of one sequence (same `sequence_id`) in the
    order of `time_column`, `channels` as the features, `label` constant per sequence."""
    table = read_columns(path, [sequence_id, time_column, *channels, label])
    if pc.any(pc.is_null(table[label])).as_py():
        raise DataError(f"{path}: label column `{label}` has empty values; expected a label "
                        "for every sequence.")
    table = table.sort_by([(sequence_id, "ascending"), (time_column, "ascending")])
    ids = table[sequence_id].to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    try:
        values = np.stack([table[name].cast(pa.float32()).to_numpy(zero_copy_only=False)
                           for name in channels], axis=1)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise DataError(f"{path}: a channel column is not numeric ({error}); expected "
                        f"numbers in {', '.join(channels)}.") from None
    labels = table[label].cast(pa.string()).to_numpy(zero_copy_only=False)
    sequences, names = [], []
    for start, end in zip(starts, ends, strict=True):
        if len(set(labels[start:end])) > 1:
            raise DataError(f"{path}: sequence {ids[start]!r} has more than one value in "
                            f"label column `{label}` ({', '.join(sorted(set(labels[start:end])))}"
                            "); expected one label per sequence.")
        sequences.append(values[start:end])
        names.append(labels[start])
    return checked(Labelled(sequences, names, path))


def checked(data: Labelled) -> Labelled:
    """Refuse what no classifier can train on, naming the source."""
    if not data.sequences:
        raise DataError(f"{data.source}: no sequences; expected labelled sequences.")
    counts = {len(sequence) for sequence in data.sequences}
    if 0 in counts:
        case = next(i for i, s in enumerate(data.sequences) if len(s) == 0)
        raise DataError(f"{data.source}: sequence {case} has no steps; expected at least one.")
    widths = Counter(sequence.shape[1] for sequence in data.sequences)
    if len(widths) > 1:
        raise DataError(f"{data.source}: sequences have different numbers of channels "
                        f"({dict(widths)}); expected the same channels in every sequence.")
    for case, sequence in enumerate(data.sequences):
        if not np.isfinite(sequence).all():
            raise DataError(f"{data.source}: sequence {case} holds NaN or infinite values; "
                            "expected finite numbers (fill or drop them first).")
    return data


def classes_of(train: Labelled) -> list[str]:
    """The training labels, sorted (numbers numerically); at least two."""
    names = sorted(set(train.labels), key=_label_order)
    if len(names) < 2:
        raise DataError(f"{train.source}: every sequence has label {names[0]!r}; a "
                        "classifier needs at least two classes.")
    return names


def _label_order(label: str) -> tuple:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def split_off(data: Labelled, fraction: float, seed: int) -> tuple[Labelled, Labelled]:
    """(rest, split): `fraction` of each class's sequences, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    chosen = []
    labels = np.asarray(data.labels)
    for name in sorted(set(data.labels)):
        members = np.flatnonzero(labels == name)
        count = int(round(len(members) * fraction))
        chosen.extend(rng.choice(members, size=count, replace=False).tolist())
    picked = set(chosen)

    def subset(indices, tag: str) -> Labelled:
        return Labelled([data.sequences[i] for i in indices], [data.labels[i] for i in indices],
                        f"{data.source} ({tag})")
    rest = [i for i in range(len(data.labels)) if i not in picked]
    return subset(rest, "training part"), subset(sorted(picked), "validation part")


def write_splits(out_dir: str | Path, splits: dict[str, Labelled], shards: int = 4) -> Path:
    """Write each split as `shards` Parquet files under `out_dir/<split>/`, labels as class
    ids of the training split's classes; a label the training split lacks is refused."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"Output directory {out_dir} already exists and is not empty; "
                        "expected a new or empty directory, so a dataset never mixes files "
                        "from two conversions. Remove it or pick another.")
    classes = classes_of(splits["train"])
    index = {name: i for i, name in enumerate(classes)}
    channels = splits["train"].sequences[0].shape[1]
    info = TaskInfo("sequence", channels, len(classes))
    metadata = {METADATA_KEY: json.dumps({"task": "sequences", **info.__dict__}),
                CLASSES_KEY: json.dumps(classes)}
    for split, data in splits.items():
        unknown = sorted(set(data.labels) - set(classes))
        if unknown:
            raise DataError(f"{data.source}: label(s) {', '.join(map(repr, unknown))} never "
                            f"occur in the training split; expected labels among "
                            f"{', '.join(classes)}.")
        width = {sequence.shape[1] for sequence in data.sequences}
        if width != {channels}:
            raise DataError(f"{data.source}: {sorted(width)} channels; the training split "
                            f"has {channels}.")
        (out_dir / split).mkdir(parents=True)
        order = np.array_split(np.arange(len(data.labels)), min(shards, len(data.labels)))
        for part, rows in enumerate(order):
            table = pa.table({
                "inputs": pa.array([data.sequences[i].tolist() for i in rows],
                                   pa.list_(pa.list_(pa.float32()))),
                "targets": pa.array([index[data.labels[i]] for i in rows], pa.int64()),
            }).replace_schema_metadata(metadata)
            pq.write_table(table, out_dir / split / f"part-{part:05d}.parquet")
    return out_dir


def read_classes(split_dir: str | Path) -> list[str] | None:
    """The class names a converted dataset keeps in its metadata (None for other data)."""
    files = sorted(Path(split_dir).rglob("*.parquet"))
    raw = (pq.read_schema(files[0]).metadata or {}).get(CLASSES_KEY) if files else None
    return json.loads(raw) if raw else None


def convert(train: Labelled, out_dir: str | Path, test: Labelled | None = None,
            val_fraction: float = 0.2, seed: int = 0) -> dict[str, int]:
    """Write `train` (less a stratified `val_fraction` for validation) and `test` as a
    Parquet task under `out_dir`; the sequences in each split."""
    if not 0 < val_fraction < 1:
        raise DataError(f"--val-fraction must be in (0, 1), got {val_fraction}.")
    classes_of(train)
    rest, val = split_off(train, val_fraction, seed)
    if not val.labels:
        raise DataError(f"{train.source}: {len(train.labels)} sequences leave none for "
                        f"validation at --val-fraction {val_fraction}; give more sequences or "
                        "a larger fraction.")
    splits = {"train": rest, "val": val, **({"test": test} if test else {})}
    write_splits(out_dir, splits)
    return {split: len(data.labels) for split, data in splits.items()}


ARCHIVE = {"japanese_vowels": "JapaneseVowels", "basic_motions": "BasicMotions"}
"""UEA archive datasets that sktime's wheel carries, by the name `data fetch` knows."""


def fetch_archive(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Convert an archive dataset of sktime's wheel: its TRAIN file (less a validation
    fifth) and its TEST file, the archive's own split, with SOURCE.json."""
    import hashlib

    import sktime

    problem = ARCHIVE[name]
    folder = Path(sktime.__file__).parent / "datasets" / "data" / problem
    files = {split: folder / f"{problem}_{split.upper()}.ts" for split in ("train", "test")}
    counts = convert(read_ts(files["train"]), out_dir, read_ts(files["test"]), seed=seed)
    source = {"dataset": name, "archive_name": problem, "package": "sktime",
              "version": sktime.__version__, "val_fraction": 0.2, "seed": seed,
              "sequences": counts,
              "files": {split: {"member": f"sktime/datasets/data/{problem}/{path.name}",
                                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
                        for split, path in files.items()}}
    (Path(out_dir) / "SOURCE.json").write_text(json.dumps(source, indent=1) + "\n")
    return Path(out_dir)
