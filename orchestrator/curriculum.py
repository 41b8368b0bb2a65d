"""Curriculum learning: train on easy examples first, then on harder ones.

For sequences, difficulty is first of all length: a long-dependency task that a cell
cannot learn at full length from scratch often becomes learnable when the length grows
during training. The curriculum decides, at every step, the difficulty of every example
in the batch. A synthetic generator makes examples of that difficulty (`difficulties`);
Parquet data, whose rows are what they are, is filtered to the rows the curriculum
admits (`keep`), by their length or by a difficulty column.

Schedules (`curriculum.schedule`):

    none        always the target difficulty
    linear      start -> target over warmup_steps, rounded to round_to   (Li et al. 2021)
    root        the same with a square-root ramp (fast early growth)      (Li et al. 2021)
    step        +increment every `every` steps ("baby steps")
    competence  competence c(t) = min(1, (t (1 - c0^p) / warmup + c0^p)^(1/p)); each
                example's difficulty is drawn from the easiest fraction c(t) of the
                difficulty range (p=1 linear, p=2 square root)  (Platanios et al. 2019)
    naive       +increment when the validation loss at the current level reaches
                `threshold`, or has not improved for `patience` validations
    mixed       every example's difficulty uniform up to the target
    combined    a `mix_fraction` of every batch from `mixed`, the rest from `naive`
                                                             (Zaremba & Sutskever 2014)

The step-driven schedules are pure functions of the step, and the progress-driven ones
of all-reduced validation figures, so every rank computes the same level; the worker
loop also checks that they agree. The level (and what naive needs to go on) is part of
the checkpoint, so a resumed run continues at its level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCHEDULES = ("none", "linear", "root", "step", "competence", "naive", "mixed", "combined")
PROGRESS_DRIVEN = ("naive", "combined")


@dataclass(frozen=True)
class Plan:
    """The plain values a schedule needs (the `curriculum` config section plus the target)."""

    schedule: str
    target: int
    start: int = 10
    warmup_steps: int = 1000
    round_to: int = 1
    every: int = 500
    increment: int = 10
    competence_start: float = 0.1
    power: int = 2
    threshold: float = 0.0
    patience: int = 0
    mix_fraction: float = 0.25
    # Data only: the 0th..100th percentiles of the rows' difficulty, so competence c
    # admits exactly the easiest fraction c of the rows (Platanios et al.'s CDF).
    quantiles: tuple[int, ...] = ()


def linear_level(step: int, plan: Plan) -> int:
    # Integer arithmetic: float rounding would land one below a grid point now and then.
    t = min(step, plan.warmup_steps)
    return _rounded(plan.start + (plan.target - plan.start) * t // plan.warmup_steps, plan)


def root_level(step: int, plan: Plan) -> int:
    t, span = min(step, plan.warmup_steps), plan.target - plan.start
    return _rounded(plan.start + math.isqrt(span * span * t // plan.warmup_steps), plan)


def step_level(step: int, plan: Plan) -> int:
    return min(plan.target, plan.start + plan.increment * (step // plan.every))


def competence(step: int, plan: Plan) -> float:
    """Platanios et al. 2019, eq. 7 (p=1) and eq. 8 (p=2)."""
    if step >= plan.warmup_steps:
        return 1.0  # exactly: the formula can land a rounding error below 1
    p, c0 = plan.power, plan.competence_start
    return min(1.0, (step * (1 - c0**p) / plan.warmup_steps + c0**p) ** (1 / p))


def uniform_difficulties(rng: np.random.Generator, n: int, low: int, high: int,
                         plan: Plan) -> np.ndarray:
    """`n` difficulties uniform on [low, high], on the round_to grid."""
    grid = np.arange(low, high + 1)
    grid = grid[(grid % plan.round_to == 0) | (grid == low) | (grid == high)]
    return rng.choice(grid, size=n)


class Curriculum:
    """The state of one run's curriculum: its level, and for `naive` what it has seen."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.level = plan.target if plan.schedule in ("none", "mixed") else plan.start
        self._best = math.inf
        self._stale = 0

    @property
    def uses_level_validation(self) -> bool:
        return self.plan.schedule in PROGRESS_DRIVEN

    def at_step(self, step: int) -> int:
        """Move a step-driven schedule to `step`; returns the level."""
        schedule = self.plan.schedule
        if schedule == "linear":
            self.level = linear_level(step, self.plan)
        elif schedule == "root":
            self.level = root_level(step, self.plan)
        elif schedule == "step":
            self.level = step_level(step, self.plan)
        elif schedule == "competence":
            c = competence(step, self.plan)
            if self.plan.quantiles:
                self.level = max(self.plan.start, self.plan.quantiles[round(c * 100)])
            else:
                self.level = _rounded(
                    self.plan.start + c * (self.plan.target - self.plan.start), self.plan)
        return self.level

    def after_validation(self, level_loss: float) -> bool:
        """Feed a progress-driven schedule the validation loss at the current level;
        returns whether the level rose."""
        if not self.uses_level_validation or self.level >= self.plan.target:
            return False
        if level_loss < self._best:
            self._best, self._stale = level_loss, 0
        else:
            self._stale += 1
        passed = level_loss <= self.plan.threshold
        stuck = self.plan.patience > 0 and self._stale >= self.plan.patience
        if not (passed or stuck):
            return False
        self.level = min(self.plan.target, self.level + self.plan.increment)
        self._best, self._stale = math.inf, 0
        return True

    def difficulties(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """The difficulty of each of the `n` examples of the next batch."""
        plan = self.plan
        if plan.schedule == "mixed":
            return uniform_difficulties(rng, n, plan.start, plan.target, plan)
        if plan.schedule == "competence":
            return uniform_difficulties(rng, n, plan.start, self.level, plan)
        levels = np.full(n, self.level)
        if plan.schedule == "combined":
            mixed = rng.random(n) < plan.mix_fraction
            levels[mixed] = uniform_difficulties(rng, int(mixed.sum()), plan.start,
                                                 plan.target, plan)
        return levels

    def keep(self, rng: np.random.Generator, difficulties: np.ndarray) -> np.ndarray:
        """Which rows of a batch of data the curriculum admits (data cannot be made at a
        length, only chosen): those at or below the level; `mixed` admits every row (the
        data's own mix), `combined` also a `mix_fraction` of the others."""
        if self.plan.schedule in ("none", "mixed"):
            return np.ones(len(difficulties), dtype=bool)
        admitted = difficulties <= self.level
        if self.plan.schedule == "combined":
            admitted |= rng.random(len(difficulties)) < self.plan.mix_fraction
        return admitted

    def state_dict(self) -> dict:
        return {"level": self.level, "best": self._best, "stale": self._stale}

    def load_state_dict(self, state: dict) -> None:
        self.level, self._best, self._stale = state["level"], state["best"], state["stale"]


def _rounded(level: float, plan: Plan) -> int:
    """Down to the round_to grid, never below start nor above target."""
    if level >= plan.target:
        return plan.target
    snapped = int(level // plan.round_to * plan.round_to)
    return int(min(plan.target, max(plan.start, snapped)))
