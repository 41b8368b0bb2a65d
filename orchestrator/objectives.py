"""Loss and validation figures for each kind of task.

The task kind (`regression`, `per_step`, `sequence`) decides the head and the loss;
`of(kind)` is the objective the loop uses for it (forecasting has its own, in
`orchestrator.forecasting`). Validation accumulates sums, not means, so shards of
different sizes on different ranks add up to the exact figure over the whole validation
set once all-reduced.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def of(kind: str) -> KindObjective:
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
