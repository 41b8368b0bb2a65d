"""The model every experiment trains: a recurrent stack and a head, built from a spec."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.cells import build_recurrent
from models.heads import build_head
from models.init import initialize_recurrent


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the model, so a checkpoint can carry it with the weights.

    ``cell`` is a name from ``CELL_NAMES``, ``head`` one from ``HEAD_NAMES``.
    """

    cell: str
    input_size: int
    hidden_size: int
    num_layers: int
    dropout: float
    head: str
    output_size: int


class SequenceModel(nn.Module):
    """Recurrent stack (``self.rnn``) then head (``self.head``) on batch-first input.

        inputs (B, T, F) --rnn--> outputs (B, T, H) --head(outputs, lengths)--> prediction

    No packing: the RNN is unidirectional, so outputs before a row's length are the
    same whatever padding follows, and the heads read only those (see ``models.heads``).
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.rnn = build_recurrent(
            spec.cell, spec.input_size, spec.hidden_size, spec.num_layers, spec.dropout
        )
        initialize_recurrent(self.rnn, spec.cell)
        self.head = build_head(spec.head, spec.hidden_size, spec.output_size)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``lengths`` (B,) int64 gives each row's true length; None means all T steps."""
        if lengths is None:
            batch, steps = inputs.shape[:2]
            lengths = torch.full((batch,), steps, dtype=torch.int64, device=inputs.device)
        outputs, _ = self.rnn(inputs)
        return self.head(outputs, lengths)


def build_model(spec: ModelSpec) -> SequenceModel:
    """Build the model for ``spec``; the one entry point the training loop uses."""
    return SequenceModel(spec)
