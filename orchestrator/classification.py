"""What a sequence classifier (a Parquet task whose `targets` are one class per row) adds
to a run: the majority-class baseline, the test split's figures and a confusion matrix.

The majority class is the training split's most common one; predicting it for every row
is the accuracy a model must beat (`accuracy_majority` on val, `test_accuracy_majority`
on test), logged at the start so every run shows it next to `val_accuracy`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from orchestrator.objectives import ClassificationObjective
from pipelines.collate import pad_batch, to_torch
from pipelines.parquet import split_files

CONFUSION_FILE = "confusion_matrix_test.png"
BATCH_ROWS = 256


def _targets(split_dir: Path) -> np.ndarray:
    return pq.ParquetDataset(split_files(split_dir)).read(columns=["targets"])[
        "targets"].to_numpy()


def majority_figures(root: Path, num_classes: int) -> dict[str, float]:
    """Accuracy of always answering the training split's most common class, on val and,
    when the task has one, on test."""
    majority = int(np.bincount(_targets(root / "train"), minlength=num_classes).argmax())
    figures = {"accuracy_majority": float((_targets(root / "val") == majority).mean())}
    if (root / "test").is_dir():
        figures["test_accuracy_majority"] = float((_targets(root / "test") == majority).mean())
    return figures


def batches(split_dir: Path) -> Iterator[dict[str, torch.Tensor]]:
    """The split's rows in padded batches, read with pyarrow (no Ray) for the driver."""
    for file in split_files(split_dir):
        for part in pq.ParquetFile(file).iter_batches(batch_size=BATCH_ROWS,
                                                      columns=["inputs", "targets"]):
            columns = {name: part.column(name) for name in ("inputs", "targets")}
            yield to_torch(pad_batch(columns, "sequence"))


@torch.no_grad()
def test_sums(model: torch.nn.Module, split_dir: Path,
              objective: ClassificationObjective) -> torch.Tensor:
    model.eval()
    sums = torch.zeros(objective.sums_width, dtype=torch.float64)
    for batch in batches(split_dir):
        sums += objective.validation_sums(model(batch["inputs"], batch["lengths"]), batch)
    return sums


def plot_confusion(confusion: torch.Tensor, classes: list[str], out_dir: str | Path) -> Path:
    """Rows: the true class; columns: the predicted one; each cell its count, shaded by
    the share of its row (so a rare class's errors show as plainly as a common one's)."""
    from matplotlib.figure import Figure  # loaded only by runs that draw

    counts = confusion.numpy().astype(int)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(classes) + 2)
    figure = Figure(figsize=(size, size), layout="tight")
    axes = figure.subplots()
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(counts):
        if count:
            axes.text(column, row, str(count), ha="center", va="center", fontsize=8,
                      color="white" if shares[row, column] > 0.5 else "black")
    ticks = range(len(classes))
    axes.set_xticks(ticks, classes, rotation=90 if len(classes) > 10 else 0)
    axes.set_yticks(ticks, classes)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"test split: {counts.trace()} of {counts.sum()} right")
    path = Path(out_dir) / CONFUSION_FILE
    figure.savefig(path, dpi=120)
    return path
