"""The divergence guard: a run that explodes recovers instead of crashing.

Every step, before the optimizer moves, the guard looks at the step's loss and gradient
norm (both already the same on every rank: the loss is averaged over ranks and DDP has
all-reduced the gradients, and a NaN anywhere stays a NaN in both, so one rank's NaN is
every rank's NaN). A step is bad when either is not finite or the loss spikes above
`spike_factor` times the median of the recent good losses; a bad step is skipped.

After `patience` bad steps in a row the run rolls back to the last good state it kept in
memory, multiplies the learning rate by `lr_factor` and the clip threshold by
`clip_factor`, and carries on. After `max_rollbacks` rollbacks it gives up with a clear
message; the checkpoints written so far stay where they are.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

MIN_HISTORY = 10  # good losses needed before a spike can be judged


@dataclass(frozen=True)
class Verdict:
    cause: str | None  # None for a good step, else why it is bad
    rollback: bool  # this bad step completes `patience` in a row: roll back now


class Diverged(RuntimeError):
    """The run kept diverging after every rollback the guard was allowed."""


class DivergenceGuard:
    def __init__(self, spike_factor: float, window: int, patience: int, max_rollbacks: int):
        self.spike_factor, self.patience, self.max_rollbacks = spike_factor, patience, max_rollbacks
        self.recent: deque[float] = deque(maxlen=window)
        self.bad_in_a_row = 0
        self.skipped = 0
        self.rollbacks = 0

    def judge(self, loss: float, grad_norm: float) -> Verdict:
        """Classify one step; raises Diverged when a rollback is due but none is left."""
        cause = self._cause(loss, grad_norm)
        if cause is None:
            self.bad_in_a_row = 0
            self.recent.append(loss)
            return Verdict(None, False)
        self.bad_in_a_row += 1
        self.skipped += 1
        if self.bad_in_a_row < self.patience:
            return Verdict(cause, False)
        if self.rollbacks >= self.max_rollbacks:
            raise Diverged(
                f"training diverged: {self.patience} bad steps in a row ({cause}) after "
                f"{self.rollbacks} rollbacks (guard.max_rollbacks); lower optim.lr or "
                "clip.threshold, or resume from the last good checkpoint."
            )
        self.rollbacks += 1
        self.bad_in_a_row = 0
        return Verdict(cause, True)

    def forget_losses(self) -> None:
        """Drop the loss history, when the task itself changed (a curriculum raised its
        level, and a higher loss is expected, not a spike)."""
        self.recent.clear()

    def _cause(self, loss: float, grad_norm: float) -> str | None:
        if not math.isfinite(loss):
            return "non-finite loss"
        if not math.isfinite(grad_norm):
            return "non-finite gradient"
        if len(self.recent) >= MIN_HISTORY:
            median = statistics.median(self.recent)
            if loss > self.spike_factor * median:
                return f"loss spike ({loss:.3g} > {self.spike_factor:g} x median {median:.3g})"
        return None

    def state_dict(self) -> dict:
        return {"recent": list(self.recent), "skipped": self.skipped,
                "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict) -> None:
        self.recent.extend(state["recent"])
        self.skipped, self.rollbacks = state["skipped"], state["rollbacks"]
