"""Heads: turn the top layer's outputs (B, T, H) into what a task's loss needs.

Every head is called as ``head(outputs, lengths)``. The RNN runs over padded input
without packing; it only looks backwards, so the output at step t < length never saw
the padding after it. The heads read only those valid steps:

    outputs (B, T, H), rows zero-padded past their length (.):

             t = 0   1   2   3   4
    row 0        o   o   o   .   .     lengths[0] = 3
    row 1        o   o   o   o   o     lengths[1] = 5
                         ^       ^
    regression:  the output at lengths - 1 (marked ^)      -> (B, O)
    per_step:    every step; padding targets are ignored    -> (B, T, O)
                 by the loss (IGNORE_INDEX)
    sequence:    the mean of the valid steps (t < lengths)  -> (B, O)

``lengths`` must be >= 1 for every row.
"""

from __future__ import annotations

import torch
from torch import nn


class RegressionHead(nn.Module):
    """Linear on the output at the last valid step, the first that has read the whole row.

    The output at the last padded step would have read the padding too, and what a row
    looks like after its end must not change its prediction.
    """

    def __init__(self, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, output_size)

    def forward(self, outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(outputs.size(0), device=outputs.device)
        return self.linear(outputs[rows, lengths.to(outputs.device) - 1])


class PerStepHead(nn.Module):
    """Linear on every step: logits (B, T, O) for one target per input step.

    Padded steps get logits too; their targets are IGNORE_INDEX, so the loss skips them.
    """

    def __init__(self, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, output_size)

    def forward(self, outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.linear(outputs)


class SequenceHead(nn.Module):
    """Linear on the mean of the valid steps: one label per row, logits (B, O).

    Mean pooling lets every step feed the gradient directly instead of only the last,
    a shorter path than backpropagating the whole sequence; the mask keeps padding out.
    """

    def __init__(self, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, output_size)

    def forward(self, outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.to(outputs.device)
        steps = torch.arange(outputs.size(1), device=outputs.device)
        valid = (steps < lengths.unsqueeze(1)).unsqueeze(2).to(outputs.dtype)  # (B, T, 1)
        mean = (outputs * valid).sum(dim=1) / lengths.unsqueeze(1).to(outputs.dtype)
        return self.linear(mean)


HEADS: dict[str, type[nn.Module]] = {
    "regression": RegressionHead,
    "per_step": PerStepHead,
    "sequence": SequenceHead,
}
HEAD_NAMES = tuple(HEADS)


def build_head(head: str, hidden_size: int, output_size: int) -> nn.Module:
    """Build the head named ``head`` (a task kind); unknown names list the valid ones."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}.")
    return HEADS[head](hidden_size, output_size)
