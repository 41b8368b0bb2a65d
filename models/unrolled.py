"""A recurrent stack run one time step at a time, for diagnostics.

Training runs the fused kernels, which hide the per-step hidden states inside one call:
a hook on their output tensor sees only the head's direct gradient, not the gradient
that flows back through the recurrence. The diagnostics need exactly that flow,
dL/dh_t for every t, and the gate activations. So on a diagnostic step a small slice of
the batch goes through the same weights again, unrolled, with every h_t a node of the
autograd graph. Training itself never takes this path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Unrolled:
    """What an unrolled pass exposes.

    ``outputs``: (B, T, H), the top layer's outputs, equal to the fused module's.
    ``hidden``: the top layer's h_t for t = 0..T-1, each (B, H) and part of the graph,
    so ``torch.autograd.grad(loss, hidden)`` gives dL/dh_t through time.
    ``gates``: post-activation gate values by name, e.g. ``{"input", "forget", "output"}``
    for an LSTM or ``{"reset", "update"}`` for a GRU, each (B, T, H) over the top
    layer; empty for cells without gates.
    """

    outputs: torch.Tensor
    hidden: list[torch.Tensor]
    gates: dict[str, torch.Tensor]


def unroll(rnn: nn.Module, cell: str, inputs: torch.Tensor) -> Unrolled:
    """Run ``rnn`` (batch-first, built for ``cell``) over ``inputs`` (B, T, F) step by step.

    A module with its own ``unroll(inputs)`` method (the custom cells) runs that. torch's
    fused ``nn.RNN``/``nn.LSTM``/``nn.GRU`` are replayed here with their own weights, layer
    by layer from a zero state, as their forward does; between layers dropout applies as
    in theirs (only in training mode).
    """
    if hasattr(rnn, "unroll"):
        return rnn.unroll(inputs)
    if cell not in _FUSED_STEPS:
        raise ValueError(
            f"model.cell {cell!r} has no unrolled pass: its module needs an "
            f"unroll(inputs) method (torch's fused cells are {', '.join(_FUSED_STEPS)})."
        )
    step, state_count = _FUSED_STEPS[cell]
    layer_inputs = inputs
    for layer in range(rnn.num_layers):
        if layer:
            layer_inputs = F.dropout(layer_inputs, rnn.dropout, rnn.training)
        hidden, gates = _unroll_layer(rnn, layer, layer_inputs, step, state_count)
        layer_inputs = torch.stack(hidden, dim=1)
    return Unrolled(layer_inputs, hidden, gates)


State = tuple[torch.Tensor, ...]  # (h,) or, for an LSTM, (h, c)
Step = Callable[[torch.Tensor, State, torch.Tensor, torch.Tensor | None],
                tuple[State, dict[str, torch.Tensor]]]


def _unroll_layer(rnn: nn.Module, layer: int, inputs: torch.Tensor, step: Step,
                  state_count: int) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """One layer of a fused module: h_t for every t and its gates, each (B, T, H).

    The input side of every step is one matrix product over the whole sequence; only the
    recurrent side has to go one step at a time.
    """
    w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
    b_ih, b_hh = getattr(rnn, f"bias_ih_l{layer}", None), getattr(rnn, f"bias_hh_l{layer}", None)
    projected = F.linear(inputs, w_ih, b_ih)  # (B, T, gates * H)
    state = (inputs.new_zeros(inputs.size(0), rnn.hidden_size),) * state_count
    hidden, gates = [], []
    for t in range(inputs.size(1)):
        state, gate_values = step(projected[:, t], state, w_hh, b_hh)
        hidden.append(state[0])
        gates.append(gate_values)
    names = gates[0] if gates else {}
    return hidden, {name: torch.stack([g[name] for g in gates], dim=1) for name in names}


def _tanh_step(x, state, w_hh, b_hh):
    return (torch.tanh(x + F.linear(state[0], w_hh, b_hh)),), {}


def _relu_step(x, state, w_hh, b_hh):
    return (torch.relu(x + F.linear(state[0], w_hh, b_hh)),), {}


def _lstm_step(x, state, w_hh, b_hh):
    """torch's gate order along the rows: input, forget, cell candidate, output."""
    h, c = state
    i, f, g, o = (x + F.linear(h, w_hh, b_hh)).chunk(4, dim=1)
    i, f, o = i.sigmoid(), f.sigmoid(), o.sigmoid()
    c = f * c + i * g.tanh()
    return (o * c.tanh(), c), {"input": i, "forget": f, "output": o}


def _gru_step(x, state, w_hh, b_hh):
    """torch's gate order: reset, update, new; the reset gate scales W_hn h + b_hn."""
    (h,) = state
    x_r, x_z, x_n = x.chunk(3, dim=1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=1)
    r, z = (x_r + h_r).sigmoid(), (x_z + h_z).sigmoid()
    n = torch.tanh(x_n + r * h_n)
    return ((1 - z) * n + z * h,), {"reset": r, "update": z}


# The step of each fused cell and how many state tensors it carries.
_FUSED_STEPS: dict[str, tuple[Step, int]] = {
    "rnn_tanh": (_tanh_step, 1),
    "rnn_relu": (_relu_step, 1),
    "lstm": (_lstm_step, 2),
    "gru": (_gru_step, 1),
}
