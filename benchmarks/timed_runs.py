"""Steady-state timing of real `rnn-orch` training: the same run at two lengths, so that
what every run pays once (Ray Train's actors, imports, the MLflow run, the model at the
end) cancels out of the difference."""

from __future__ import annotations

import sys
import time

from orchestrator import driver
from orchestrator.config import Config, apply_overrides


def extra_seconds(overrides: list[str], short: int, long: int) -> float:
    """Seconds the run of `long` steps takes beyond the run of `short` steps (each trains
    with `driver.train` on the Ray that the caller started, checkpointing at its end)."""
    seconds = {}
    for steps in (short, long):
        config = driver.resolve(apply_overrides(Config(), [
            *overrides, f"train.steps={steps}", f"train.checkpoint_every={steps}",
            f"run.name=bench-{time.time_ns()}"]), {})
        started = time.monotonic()
        outcome = driver.train(config, stream=sys.stderr)
        seconds[steps] = time.monotonic() - started
        if outcome.final.get("step") != steps:
            sys.exit(f"{overrides}: the run ended at step {outcome.final.get('step')}, "
                     f"not {steps}")
        print(f"  {' '.join(overrides[-2:])}: {steps} steps in {seconds[steps]:.1f} s",
              file=sys.stderr, flush=True)
    extra = seconds[long] - seconds[short]
    if extra <= 0:
        sys.exit(f"{overrides}: the long run was not slower than the short one; rerun with "
                 "more steps")
    return extra
