"""A recurrent stack run one time step at a time, for diagnostics.

Training runs the fused kernels, which hide the per-step hidden states inside one call:
a hook on their output tensor sees only the head's direct gradient, not the gradient
that flows back through the recurrence. The diagnostics need exactly that flow,
dL/dh_t for every t, and the gate activations. So on a diagnostic step a small slice of
the batch goes through the same weights again, unrolled, with every h_t a node of the
autograd graph. Training itself never takes this path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
