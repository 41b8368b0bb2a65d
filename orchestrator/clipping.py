"""Gradient clipping policies, chosen by `clip.policy`, against exploding gradients.

    none      leave the gradients alone
    norm      scale all gradients so their global L2 norm is at most `threshold`
    value     clamp every gradient element to [-threshold, threshold]
    autoclip  `norm` with an adaptive threshold: the `threshold`-th percentile of every
              gradient norm seen so far in the run (Seetharaman et al. 2020; 10 is their
              recommendation). The history is part of the checkpoint.
    agc       adaptive gradient clipping (Brock et al. 2021): for every unit (row of a
              weight matrix), if ||G_i|| / max(||W_i||, eps) exceeds lambda = `threshold`,
              scale G_i down to that ratio. The output head is never clipped.

Clipping runs after `backward()` and before `optimizer.step()`. Under DDP the gradients are
already all-reduced at that point, so every rank sees the same gradients and clips the
same way, with no extra communication. With mixed precision, unscale first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

POLICIES = ("none", "norm", "value", "autoclip", "agc")
AGC_EPS = 1e-3  # Brock et al.: weights near zero still allow small updates


@dataclass(frozen=True)
class ClipResult:
    grad_norm: float  # global L2 norm before clipping
    grad_norm_clipped: float  # global L2 norm after clipping
    clipped: bool  # whether the policy changed any gradient
    threshold: float  # the threshold in force (the adaptive one for autoclip)


class Clipper:
    """One run's clipping policy and its memory (AutoClip's history of gradient norms)."""

    def __init__(self, policy: str, threshold: float):
        if policy not in POLICIES:
            raise ValueError(f"clip.policy {policy!r} is not one of: {', '.join(POLICIES)}.")
        self.policy, self.threshold = policy, threshold
        self.history: list[float] = []

    def __call__(self, parameters: Iterable[torch.nn.Parameter],
                 head: Iterable[torch.nn.Parameter] = ()) -> ClipResult:
        """Clip the gradients of `parameters` in place; `head` parameters are exempt from
        agc (the other policies clip the global norm, head included)."""
        parameters = [p for p in parameters if p.grad is not None]
        grads = [p.grad for p in parameters]
        total = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        before = total.item()
        threshold = self.threshold
        if self.policy == "none":
            return ClipResult(before, before, False, threshold)
        if self.policy == "autoclip":
            if np.isfinite(before):  # a diverged step must not poison the percentile
                self.history.append(before)
            threshold = float(np.percentile(self.history or [0.0], self.threshold))
        if self.policy in ("norm", "autoclip"):
            # The norm is known: scale by it instead of letting torch measure it again.
            torch.nn.utils.clip_grads_with_norm_(parameters, threshold, total)
            return ClipResult(before, before * min(1.0, threshold / (before + 1e-6)),
                              before > threshold, threshold)
        if self.policy == "value":
            torch.nn.utils.clip_grad_value_(parameters, threshold)
        elif self.policy == "agc":
            exempt = {id(p) for p in head}
            adaptive_clip_([p for p in parameters if id(p) not in exempt], threshold)
        after = torch.nn.utils.get_total_norm(grads).item() if grads else 0.0
        return ClipResult(before, after, after < before, threshold)

    @property
    def adaptive(self) -> bool:
        """Whether the threshold in force differs from `clip.threshold` (worth logging)."""
        return self.policy == "autoclip"

    def state_dict(self) -> dict:
        return {"threshold": self.threshold, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        """The history, and the threshold (the divergence guard may have tightened it)."""
        self.threshold, self.history = state["threshold"], list(state["history"])


@torch.no_grad()
def adaptive_clip_(parameters: list[torch.nn.Parameter], clip_lambda: float) -> None:
    """AGC in place: every unit's gradient norm at most lambda times its weight norm."""
    for p in parameters:
        weight_norm = _unit_norms(p.detach()).clamp_(min=AGC_EPS)
        grad_norm = _unit_norms(p.grad)
        max_norm = clip_lambda * weight_norm
        scale = torch.where(grad_norm > max_norm, max_norm / grad_norm.clamp(min=1e-12),
                            torch.ones_like(grad_norm))
        p.grad.mul_(scale)


def _unit_norms(tensor: torch.Tensor) -> torch.Tensor:
    """L2 norm of each unit: each row of a matrix (one output unit's fan-in), the whole
    tensor for a vector or a scalar; shaped to broadcast against `tensor`."""
    if tensor.ndim <= 1:
        return torch.linalg.vector_norm(tensor)
    dims = tuple(range(1, tensor.ndim))
    return torch.linalg.vector_norm(tensor, dim=dims, keepdim=True)

