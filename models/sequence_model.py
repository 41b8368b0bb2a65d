"""The model every experiment trains: a recurrent stack and a head, built from a spec."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.cells import build_recurrent
from models.heads import build_head
from models.init import initialize_recurrent
from models.regularization import SequenceDropout, weight_dropped


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the model, so a checkpoint can carry it with the weights.

    ``cell`` is a name from ``CELL_NAMES``, ``head`` one from ``HEAD_NAMES``. The
    regularization fields (see ``models.regularization``) change training only, never
    the parameters, and default to off, so specs saved before they existed still load.
    """

    cell: str
    input_size: int
    hidden_size: int
    num_layers: int
    dropout: float
    head: str
    output_size: int
    input_dropout: float = 0.0
    output_dropout: float = 0.0
    variational: bool = False
    weight_drop: float = 0.0


class SequenceModel(nn.Module):
    """Recurrent stack (``self.rnn``) then head (``self.head``) on batch-first input.

        inputs (B, T, F) --input_dropout--> --rnn--> outputs (B, T, H)
                         --output_dropout--> --head(outputs, lengths)--> prediction

    In training ``rnn`` runs with its recurrent weights dropped when ``weight_drop`` > 0;
    ``self.rnn`` itself stays the plain module, with the parameter names a checkpoint
    and the diagnostics expect.

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
        self.input_dropout = SequenceDropout(spec.input_dropout, spec.variational)
        self.output_dropout = SequenceDropout(spec.output_dropout, spec.variational)
        self.head = build_head(spec.head, spec.hidden_size, spec.output_size)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``lengths`` (B,) int64 gives each row's true length; None means all T steps."""
        if lengths is None:
            batch, steps = inputs.shape[:2]
            lengths = torch.full((batch,), steps, dtype=torch.int64, device=inputs.device)
        inputs = self.input_dropout(inputs)
        if self.training and self.spec.weight_drop > 0:
            outputs, _ = weight_dropped(self.rnn, inputs, self.spec.weight_drop)
        else:
            outputs, _ = self.rnn(inputs)
        return self.head(self.output_dropout(outputs), lengths)


def build_model(spec: ModelSpec) -> SequenceModel:
    """Build the model for ``spec``; the one entry point the training loop uses."""
    return SequenceModel(spec)
