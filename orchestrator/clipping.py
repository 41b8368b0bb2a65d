"""Gradient clipping policies, chosen by `clip.policy`.

Clipping runs after `backward()` and before `optimizer.step()`. Under DDP the gradients are
already all-reduced at that point, so every rank computes the same global norm and clips
the same way: no extra communication is needed. With mixed precision, unscale first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClipResult:
    grad_norm: float  # global L2 norm before clipping
    grad_norm_clipped: float  # global L2 norm after clipping
    clipped: bool  # whether the policy changed any gradient


def clip_gradients(
    parameters: Iterable[torch.nn.Parameter], policy: str, threshold: float
) -> ClipResult:
    """Apply `policy` in place and measure the global gradient norm before and after."""
    parameters = [p for p in parameters if p.grad is not None]
    grads = [p.grad for p in parameters]
    before = _global_norm(grads)
    if policy == "none":
        return ClipResult(before, before, False)
    if policy == "norm":
        # torch's own clip: scales every gradient by threshold / norm when norm > threshold.
        torch.nn.utils.clip_grad_norm_(parameters, threshold)
    elif policy == "value":
        torch.nn.utils.clip_grad_value_(parameters, threshold)
    else:
        raise ValueError(f"clip.policy {policy!r} is not one of: none, norm, value.")
    after = _global_norm(grads)
    return ClipResult(before, after, after < before)


def _global_norm(grads: list[torch.Tensor]) -> float:
    return torch.nn.utils.get_total_norm(grads).item() if grads else 0.0
