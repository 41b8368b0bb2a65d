"""Loss and validation figures for each kind of task.

The task kind (`regression`, `per_step`, `sequence`) decides the head and the loss;
`of(kind)` is the objective the loop uses for it (forecasting has its own, in
`orchestrator.forecasting`). Validation accumulates sums, not means, so shards of
different sizes on different ranks add up to the exact figure over the whole validation
set once all-reduced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from pipelines.collate import IGNORE_INDEX


class Objective(Protocol):
    """What the loop needs of a task: its training loss, and validation as sums that
    all-reduce, turned into named figures (`val_loss`, ...; `test_...` at the end)."""

    sums_width: int  # the length of validation_sums' result

    def loss(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def validation_sums(self, outputs: torch.Tensor,
                        batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def summarize(self, sums: torch.Tensor, prefix: str = "val") -> dict[str, float]: ...


@dataclass(frozen=True)
class KindObjective:
    """The objective of a task kind, from the functions below."""

    kind: str
    sums_width: int = 4

    def loss(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss(self.kind, outputs, batch)

    def validation_sums(self, outputs: torch.Tensor,
                        batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return validation_sums(self.kind, outputs, batch)

    def summarize(self, sums: torch.Tensor, prefix: str = "val") -> dict[str, float]:
        return {f"{prefix}_{name[4:]}": value
                for name, value in summarize(self.kind, sums).items()}


@dataclass(frozen=True)
class ClassificationObjective(KindObjective):
    """Sequence classification: besides loss and accuracy, the confusion counts
    (true class x predicted class, all-reduced like every sum), from which `val_macro_f1`
    (the mean over classes of F1, so a rare class counts as much as a common one) and the
    confusion-matrix plot come."""

    kind: str = "sequence"
    num_classes: int = 2
    sums_width: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sums_width", 4 + self.num_classes ** 2)

    def validation_sums(self, outputs: torch.Tensor,
                        batch: dict[str, torch.Tensor]) -> torch.Tensor:
        k = self.num_classes
        cells = batch["targets"] * k + outputs.argmax(-1)
        confusion = torch.bincount(cells, minlength=k * k).double()
        return torch.cat([super().validation_sums(outputs, batch), confusion])

    def summarize(self, sums: torch.Tensor, prefix: str = "val") -> dict[str, float]:
        figures = super().summarize(sums[:4], prefix)
        return {**figures, f"{prefix}_macro_f1": macro_f1(self.confusion(sums))}

    def confusion(self, sums: torch.Tensor) -> torch.Tensor:
        """(true, predicted) counts from summed validation sums."""
        return sums[4:].reshape(self.num_classes, self.num_classes)


def macro_f1(confusion: torch.Tensor) -> float:
    """The mean F1 over classes; a class never true nor predicted scores 0."""
    hits = confusion.diagonal()
    denominator = confusion.sum(0) + confusion.sum(1)
    f1 = torch.where(denominator > 0, 2 * hits / denominator.clamp_min(1), 0.0)
    return float(f1.mean())


def of(kind: str, output_size: int = 0) -> KindObjective:
    """The objective of a task kind; classes need their count (`output_size`)."""
    if kind == "sequence":
        return ClassificationObjective(num_classes=output_size)
    return KindObjective(kind)


def loss(kind: str, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean loss of one batch: MSE for regression, cross-entropy per step or per sequence."""
    if kind == "regression":
        return F.mse_loss(outputs, batch["targets"])
    return F.cross_entropy(_flat_logits(outputs), batch["targets"].reshape(-1),
                           ignore_index=IGNORE_INDEX)


def validation_sums(kind: str, outputs: torch.Tensor,
                    batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[loss sum, loss count, correct, scored] of one batch, as one tensor to all-reduce."""
    targets = batch["targets"]
    if kind == "regression":
        errors = F.mse_loss(outputs, targets, reduction="none")
        zero = errors.new_zeros(())
        return _as_row(errors.sum(), errors.new_tensor(errors.numel()), zero, zero)
    losses = F.cross_entropy(_flat_logits(outputs), targets.reshape(-1),
                             ignore_index=IGNORE_INDEX, reduction="sum")
    valid = targets != IGNORE_INDEX
    scored = batch.get("scored", valid) & valid
    correct = (outputs.argmax(-1) == targets) & scored
    return _as_row(losses, valid.sum(), correct.sum(), scored.sum())


def summarize(kind: str, sums: torch.Tensor) -> dict[str, float]:
    """`val_loss` (and `val_accuracy` for classification) from all-reduced sums."""
    loss_sum, count, correct, scored = sums.tolist()
    figures = {"val_loss": loss_sum / max(count, 1.0)}
    if kind != "regression":
        figures["val_accuracy"] = correct / max(scored, 1.0)
    return figures


def _flat_logits(outputs: torch.Tensor) -> torch.Tensor:
    return outputs.reshape(-1, outputs.shape[-1])


def _as_row(*values: torch.Tensor) -> torch.Tensor:
    return torch.stack([v.double() for v in values])
