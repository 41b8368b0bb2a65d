"""Gradient clipping policies, chosen by `clip.policy`, against exploding gradients.

    none      leave the gradients alone
    norm      scale all gradients so their global L2 norm is at most `threshold`
    value     clamp every gradient element to [-threshold, threshold]
    autoclip  `norm` with an adaptive threshold: the `threshold`-th percentile of every
              gradient norm seen so far in the run (Seetharaman et al. 2020; 10 is their
              recommendation). The norms are counted in a log-scale histogram (see
              `NormHistogram`), so a step costs the same at step 10 and at step 10^7 and
              the checkpoint stays small; the percentile is within 1.82% of the exact one.
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

import torch

POLICIES = ("none", "norm", "value", "autoclip", "agc")
AGC_EPS = 1e-3  # Brock et al.: weights near zero still allow small updates


@dataclass(frozen=True)
class ClipResult:
    """The step's clipping figures, as 0-dim tensors on the gradients' device: the step
    reads them back together with its other figures (`training_step.read_figures`)."""

    grad_norm: torch.Tensor  # global L2 norm before clipping
    grad_norm_clipped: torch.Tensor  # global L2 norm after clipping
    clipped: torch.Tensor  # whether the policy changed any gradient (bool)
    threshold: torch.Tensor | float  # the threshold in force (the adaptive one for autoclip)


class NormHistogram:
    """Every gradient norm seen, counted in log-spaced bins: BINS_PER_DECADE per decade
    from 1e-12 to 1e12 (a norm outside counts in the first or last bin).

    A bin stands for its geometric centre, at most half a bin (10^(1/128) - 1 = 1.82%) from
    any norm in it, so a percentile interpolated between two ranks' bins, as numpy's
    linear percentile does between the ranks' values, is within 1.82% of numpy's. Memory and
    time per step are fixed by the bin count, not by the number of steps. The counts live
    on the norms' device and are counted and searched there: AutoClip's threshold never
    waits for a GPU to hand a norm back to the host.
    """

    BINS_PER_DECADE = 64
    LOW, HIGH = -12, 12  # decades

    def __init__(self) -> None:
        self.counts = torch.zeros((self.HIGH - self.LOW) * self.BINS_PER_DECADE,
                                  dtype=torch.int64)

    def add(self, norms: torch.Tensor) -> None:
        """Count every finite norm in `norms` (any shape); a non-finite one, from a
        diverged step, is left out so it cannot poison the percentile."""
        norms = norms.detach().to(torch.float64).reshape(-1)
        self.counts = self.counts.to(norms.device)
        position = (torch.log10(norms.clamp(min=1e-300)) - self.LOW) * self.BINS_PER_DECADE
        bins = torch.nan_to_num(position).clamp(0, len(self.counts) - 1).long()
        self.counts.index_add_(0, bins, torch.isfinite(norms).long())

    def percentile(self, q: float) -> torch.Tensor:
        """numpy's linear percentile of the norms, each taken as its bin's centre; 0 when
        no norm was counted. A float64 0-dim tensor on the counts' device."""
        cumulative = torch.cumsum(self.counts, 0)
        total = cumulative[-1]
        rank = q / 100 * (total - 1).clamp(min=0).to(torch.float64)
        low = rank.floor()
        below, above = self._centres(cumulative, torch.stack([low, rank.ceil()]))
        return torch.where(total > 0, below + (rank - low) * (above - below), 0.0)

    def _centres(self, cumulative: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
        """The centre of the bin holding each rank-th smallest norm (0-based)."""
        index = torch.searchsorted(cumulative, ranks.long() + 1).clamp(max=len(cumulative) - 1)
        return 10 ** (self.LOW + (index.to(torch.float64) + 0.5) / self.BINS_PER_DECADE)

    def state_dict(self) -> dict:
        """The bins that hold norms, as {bin: count} (plain ints, weights-only loadable)."""
        held = torch.nonzero(self.counts).flatten()
        return dict(zip(held.tolist(), self.counts[held].tolist(), strict=True))

    def load_state_dict(self, state: dict) -> None:
        self.counts = torch.zeros_like(self.counts)
        for index, count in state.items():
            self.counts[int(index)] = count


class Clipper:
    """One run's clipping policy and its memory (AutoClip's histogram of gradient norms).

    Clipping reads nothing back from the device: every figure it returns is a tensor, and
    every decision (the AutoClip threshold, how far to scale) is taken on the device.
    """

    def __init__(self, policy: str, threshold: float):
        if policy not in POLICIES:
            raise ValueError(f"clip.policy {policy!r} is not one of: {', '.join(POLICIES)}.")
        self.policy, self.threshold = policy, threshold
        self.norms = NormHistogram()

    def __call__(self, parameters: Iterable[torch.nn.Parameter],
                 head: Iterable[torch.nn.Parameter] = ()) -> ClipResult:
        """Clip the gradients of `parameters` in place; `head` parameters are exempt from
        agc (the other policies clip the global norm, head included)."""
        parameters = [p for p in parameters if p.grad is not None]
        grads = [p.grad for p in parameters]
        if not grads:
            zero = torch.zeros(())
            return ClipResult(zero, zero, torch.tensor(False), self.threshold)
        before = torch.nn.utils.get_total_norm(grads)
        threshold = self.threshold
        if self.policy == "none":
            return ClipResult(before, before, torch.zeros_like(before, dtype=torch.bool),
                              threshold)
        if self.policy == "autoclip":
            self.norms.add(before)
            threshold = self.norms.percentile(self.threshold).to(before.dtype)
        if self.policy in ("norm", "autoclip"):
            after = scale_to_norm_(grads, threshold, before)
            return ClipResult(before, after, before > threshold, threshold)
        if self.policy == "value":
            torch.nn.utils.clip_grad_value_(parameters, threshold)
        elif self.policy == "agc":
            exempt = {id(p) for p in head}
            adaptive_clip_([p for p in parameters if id(p) not in exempt], threshold)
        after = torch.nn.utils.get_total_norm(grads)
        return ClipResult(before, after, after < before, threshold)

    @property
    def adaptive(self) -> bool:
        """Whether the threshold in force differs from `clip.threshold` (worth logging)."""
        return self.policy == "autoclip"

    def state_dict(self) -> dict:
        return {"threshold": self.threshold, "norms": self.norms.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """The norms seen, and the threshold (the divergence guard may have tightened it).
        A checkpoint written before the histogram kept a list of every norm instead."""
        self.threshold = state["threshold"]
        if "norms" in state:
            self.norms.load_state_dict(state["norms"])
            return
        self.norms = NormHistogram()
        self.norms.add(torch.tensor(state["history"], dtype=torch.float64))


@torch.no_grad()
def scale_to_norm_(grads: list[torch.Tensor], threshold: torch.Tensor | float,
                   norm: torch.Tensor) -> torch.Tensor:
    """Scale `grads`, whose global norm is `norm`, down to at most `threshold`; their norm
    after. torch's `clip_grads_with_norm_` computes the same factor, but reads a tensor
    threshold (AutoClip's) back to the host first."""
    factor = torch.clamp(threshold / (norm + 1e-6), max=1.0)
    for grad in grads:
        grad.mul_(factor)
    return norm * factor


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

