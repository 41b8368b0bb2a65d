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
    ``vocab_size`` > 0 makes the inputs token ids (B, T) of a vocabulary that large,
    embedded into ``input_size`` features (a language model); 0 means the inputs are
    features already (B, T, input_size). ``input_mean`` and ``input_std`` (one per
    feature, empty = off) make the model normalize those features itself, so a logged or
    served model takes raw inputs just as training read them.
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
    vocab_size: int = 0
    input_mean: tuple[float, ...] = ()
    input_std: tuple[float, ...] = ()


class SequenceModel(nn.Module):
    """Recurrent stack (``self.rnn``) then head (``self.head``) on batch-first input.

        inputs (B, T, F) --input_dropout--> --rnn--> outputs (B, T, H)
                         --output_dropout--> --head(outputs, lengths)--> prediction

    With a vocabulary, token ids (B, T) first go through ``self.embedding`` to (B, T, F).

    In training ``rnn`` runs with its recurrent weights dropped when ``weight_drop`` > 0;
    ``self.rnn`` itself stays the plain module, with the parameter names a checkpoint
    and the diagnostics expect.

    No packing: the RNN is unidirectional, so outputs before a row's length are the
    same whatever padding follows, and the heads read only those (see ``models.heads``).
    Torch's fused cells ran 2.6 to 8 times slower on packed batches than on padded ones on
    CPU, and about twice as slow with cuDNN on a GPU (benchmarks/packed_sequences.py);
    length bucketing is what cuts the padding.
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
        self.embedding = (nn.Embedding(spec.vocab_size, spec.input_size)
                          if spec.vocab_size else None)
        # Not weights: they come from the spec, stay out of state_dict (so checkpoints and
        # transfer between runs with and without them agree) and follow the model's device.
        self.register_buffer("input_mean", torch.tensor(spec.input_mean) if spec.input_mean
                             else None, persistent=False)
        self.register_buffer("input_scale", 1 / torch.tensor(spec.input_std)
                             if spec.input_std else None, persistent=False)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """The features the recurrent stack reads: token ids embedded, features normalized
        when the spec says so, else as they are."""
        if self.embedding is not None:
            return self.embedding(inputs)
        if self.input_mean is not None:
            return (inputs - self.input_mean) * self.input_scale
        return inputs

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None,
                state=None, return_state: bool = False):
        """``lengths`` (B,) int64 gives each row's true length; None means all T steps.

        ``state`` is the recurrent stack's state to start from (None: zeros), in the form
        torch's module of the cell takes: ``(h, c)`` for an LSTM, ``h`` otherwise, each
        (num_layers, B, H). With ``return_state`` the call returns ``(prediction, final
        state)``: a language model carries it from one chunk of text to the next.
        """
        if lengths is None:
            batch, steps = inputs.shape[:2]
            lengths = torch.full((batch,), steps, dtype=torch.int64, device=inputs.device)
        inputs = self.input_dropout(self.embed(inputs))
        if self.training and self.spec.weight_drop > 0:
            outputs, final = weight_dropped(self.rnn, inputs, self.spec.weight_drop, state)
        else:
            outputs, final = self.rnn(inputs, state)
        prediction = self.head(self.output_dropout(outputs), lengths)
        return (prediction, final) if return_state else prediction


def build_model(spec: ModelSpec) -> SequenceModel:
    """Build the model for ``spec``; the one entry point the training loop uses."""
    return SequenceModel(spec)
