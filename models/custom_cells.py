"""What the custom cells (``ln_lstm``, ``ln_gru``, ``bn_lstm``) share: torch's parameter
layout, the layer stack, and the LSTM and GRU time loops.

A normalized cell has to normalise inside the recurrence, between the matrix product and
the gates, where torch's fused kernels give no access; so these cells run their own time
loop, one step at a time:

    inputs (B, T, F) --layer 0--> h (B, T, H) --dropout--> layer 1 --> ... --> outputs (B, T, H)

    one layer:   ih = W_ih x_t for every t at once (one matrix product), normalised, biased
                 for t = 0..T-1:  h_t, c_t = step(ih_t, W_hh h_{t-1}, c_{t-1})

Only the recurrent product has to wait for the previous step; everything on the input
side is one large product over the whole sequence. On CPU a layer's forward runs a
compiled loop with a backward written by hand (``models.compiled_loops``), 2 to 3 times
as fast as the Python loop here (``benchmarks/cells.py``). The Python loop runs
everything else: ``unroll``, which needs every step's tensors, GPUs, autocast, and
machines without a C++ compiler. Its steps are taken with ``unbind`` rather than
``ih[:, t]``: the backward of an index writes a full-size zero tensor per step, which
made a 100-step loop four times slower. TorchScript, ``torch.compile`` and a backward
written by hand in Python, with ATen's kernels, were measured no faster on torch 2.13
(CPU): the twenty-odd small kernels of a step, each a pass over memory, are the cost,
which only fusing them into one pass per row removed.

The parameters keep torch's names and layout (``weight_ih_l{k}``, ``weight_hh_l{k}``,
``bias_ih_l{k}``, ``bias_hh_l{k}``, gates stacked along the rows in torch's order), so
``models.init`` initialises them like the fused cells, weight drop replaces
``weight_hh_l{k}`` the same way, and an unnormalised cell loads a fused module's
``state_dict`` as it is.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models import compiled_loops
from models.unrolled import Unrolled

StepNorm = Callable[[torch.Tensor, int], torch.Tensor]  # (pre-activation, step t) -> normalised


class LayerRun(NamedTuple):
    """One layer over the sequence: its outputs (B, T, H); h_t for every t as the tensors
    the next step was computed from (empty from a compiled kernel, which is not used when
    unrolling); the final state; and, when unrolling, the post-activation gates by name,
    each (B, T, H)."""

    outputs: torch.Tensor
    hidden: list[torch.Tensor]
    final: tuple[torch.Tensor, ...]
    gates: dict[str, torch.Tensor]


class CustomRecurrent(nn.Module, abc.ABC):
    """A batch-first multi-layer recurrent stack in torch's parameter layout.

    Subclasses set ``gate_count`` (rows of ``weight_hh_l{k}`` per hidden unit) and write
    ``_layer``, one layer over the whole sequence. ``forward(inputs, state=None)`` takes
    and returns the state like the fused modules: ``(h, c)`` for an LSTM and ``h`` for a
    GRU, each (num_layers, B, H); None starts from zeros. ``dropout`` is applied to the
    outputs of every layer but the last, in training only, as torch does.
    """

    gate_count: int

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, compiled: bool = True) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_layers, self.dropout, self.compiled = num_layers, dropout, compiled
        self.batch_first = True
        rows = self.gate_count * hidden_size
        bound = 1 / math.sqrt(hidden_size)  # torch's own default, until models.init runs
        for k in range(num_layers):
            width = input_size if k == 0 else hidden_size
            for name, shape in ((f"weight_ih_l{k}", (rows, width)),
                                (f"weight_hh_l{k}", (rows, hidden_size)),
                                (f"bias_ih_l{k}", (rows,)), (f"bias_hh_l{k}", (rows,))):
                self.register_parameter(
                    name, nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))

    def forward(self, inputs: torch.Tensor, state=None):
        outputs, _, finals, _ = self._stack(inputs, unrolling=False, state=state)
        state = tuple(torch.stack(parts) for parts in zip(*finals, strict=True))
        return outputs, state if len(state) > 1 else state[0]

    def time_loop(self, inputs: torch.Tensor) -> str:
        """How ``forward`` would step through ``inputs``: ``compiled`` or ``python``. A
        run tags itself with it."""
        return "compiled" if self._runs_compiled(inputs, unrolling=False) else "python"

    def _runs_compiled(self, inputs: torch.Tensor, unrolling: bool) -> bool:
        """Whether a layer runs its compiled time loop (``models.compiled_loops``): not
        when unrolling, which needs every step's tensors, nor with ``compiled=False``,
        nor where no kernel applies (a GPU, autocast, no compiler)."""
        return self.compiled and not unrolling and compiled_loops.applies(inputs)

    def unroll(self, inputs: torch.Tensor) -> Unrolled:
        """The same pass as ``forward``, exposing the top layer's h_t and gates.

        ``hidden`` holds the very tensors the next step was computed from, so
        ``torch.autograd.grad(loss, unrolled.hidden)`` is dL/dh_t through time.
        """
        outputs, hidden, _, gates = self._stack(inputs, unrolling=True)
        return Unrolled(outputs, hidden, gates)

    def _stack(self, inputs: torch.Tensor, unrolling: bool, state=None):
        layer_inputs, finals = inputs, []
        initial = _per_layer(state, self.num_layers)
        for k in range(self.num_layers):
            if k:
                layer_inputs = F.dropout(layer_inputs, self.dropout, self.training)
            run = self._layer(k, layer_inputs, unrolling, initial[k])
            layer_inputs = run.outputs
            finals.append(run.final)
        return layer_inputs, run.hidden, finals, run.gates

    @abc.abstractmethod
    def _layer(self, k: int, inputs: torch.Tensor, unrolling: bool,
               initial: tuple[torch.Tensor, ...] | None) -> LayerRun:
        """Layer ``k`` over ``inputs`` (B, T, F_k) from its ``initial`` state (None: zeros);
        keep the gates when ``unrolling``."""

    def _weights(self, k: int) -> tuple[torch.Tensor, ...]:
        """Read by name at every call, so ``torch.func.functional_call`` can swap them."""
        return tuple(getattr(self, f"{name}_l{k}")
                     for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))


def _per_layer(state, num_layers: int) -> list[tuple[torch.Tensor, ...] | None]:
    """A stack's state ((num_layers, B, H) tensors, one or a tuple) as each layer's own."""
    if state is None:
        return [None] * num_layers
    parts = state if isinstance(state, tuple) else (state,)
    return [tuple(part[k] for part in parts) for k in range(num_layers)]


def lstm_steps(ih: torch.Tensor, weight_hh: torch.Tensor, norm_hh: StepNorm,
               norm_cell: StepNorm, keep_gates: bool,
               initial: tuple[torch.Tensor, ...] | None = None) -> LayerRun:
    """The LSTM time loop, gates in torch's order (input, forget, cell, output).

    ``ih`` (B, T, 4H) is the input side of every step, normalised, with both biases added
    (so a forget bias sits outside the normalisation, where it cannot be normalised away).

        gates_t = ih_t + norm_hh(W_hh h_{t-1}, t)
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
        h_t = sigmoid(o) * tanh(norm_cell(c_t, t))

    With identity norms this is exactly torch's LSTM.
    """
    batch, hidden_size = ih.size(0), weight_hh.size(1)
    h, c = initial or (ih.new_zeros(batch, hidden_size),) * 2
    hidden, gate_steps = [], []
    for t, ih_t in enumerate(ih.unbind(1)):
        i, f, g, o = (ih_t + norm_hh(F.linear(h, weight_hh), t)).chunk(4, dim=1)
        i, f, o = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o)
        c = f * c + i * torch.tanh(g)
        h = o * torch.tanh(norm_cell(c, t))
        hidden.append(h)
        if keep_gates:
            gate_steps.append((i, f, o))
    return LayerRun(torch.stack(hidden, dim=1), hidden, (h, c),
                    stacked_gates(("input", "forget", "output"), gate_steps))


def gru_steps(ih: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor,
              norm_hh: StepNorm, keep_gates: bool,
              initial: tuple[torch.Tensor, ...] | None = None) -> LayerRun:
    """The GRU time loop, gates in torch's order (reset, update, new).

    ``ih`` (B, T, 3H) is the input side of every step, normalised, ``bias_ih`` added.
    ``bias_hh`` is added after the recurrent normalisation because torch's new gate
    scales it by the reset gate:

        hh_t = norm_hh(W_hh h_{t-1}, t) + b_hh
        r = sigmoid(ih_r + hh_r),  z = sigmoid(ih_z + hh_z)
        n = tanh(ih_n + r * hh_n)
        h_t = (1 - z) * n + z * h_{t-1}

    With an identity norm this is exactly torch's GRU.
    """
    batch, hidden_size = ih.size(0), weight_hh.size(1)
    (h,) = initial or (ih.new_zeros(batch, hidden_size),)
    hidden, gate_steps = [], []
    for t, ih_t in enumerate(ih.unbind(1)):
        x_r, x_z, x_n = ih_t.chunk(3, dim=1)
        h_r, h_z, h_n = (norm_hh(F.linear(h, weight_hh), t) + bias_hh).chunk(3, dim=1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = n + z * (h - n)
        hidden.append(h)
        if keep_gates:
            gate_steps.append((r, z))
    return LayerRun(torch.stack(hidden, dim=1), hidden, (h,),
                    stacked_gates(("reset", "update"), gate_steps))


def stacked_gates(names: tuple[str, ...],
                  steps: list[tuple[torch.Tensor, ...]]) -> dict[str, torch.Tensor]:
    """Per-step gate tuples -> {name: (B, T, H)}; empty when none were kept."""
    if not steps:
        return {}
    return {name: torch.stack(values, dim=1)
            for name, values in zip(names, zip(*steps, strict=True), strict=True)}
