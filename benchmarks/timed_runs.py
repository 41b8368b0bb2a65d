"""Steady-state timing of real `rnn-orch` training, leaving out what every run pays once
(Ray Train's actors, imports, the MLflow run, the model at the end), two ways:
- `logged_seconds`: one run, timed between two steps' MLflow timestamps (`train_loss` is
  logged as each step ends). Start-up varies by seconds from run to run on a busy
  machine, so this is the steadier of the two;
- `extra_seconds`: the same run at two lengths; the difference is the extra steps'."""

from __future__ import annotations

import sys
import time

from mlflow.tracking import MlflowClient

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


def logged_seconds(overrides: list[str], skip: int, steps: int) -> float:
    """Seconds between the ends of step `skip` and of the last step, `steps`, of one
    `driver.train` run on the Ray that the caller started (checkpointing at its end)."""
    config = driver.resolve(apply_overrides(Config(), [
        *overrides, f"train.steps={steps}", f"train.checkpoint_every={steps}",
        f"run.name=bench-{time.time_ns()}"]), {})
    outcome = driver.train(config, stream=sys.stderr)
    ended = {metric.step: metric.timestamp for metric in MlflowClient(
        config.tracking.uri).get_metric_history(outcome.run_id, "train_loss")}
    if skip not in ended or steps not in ended:
        sys.exit(f"{overrides}: steps {skip} and {steps} were not both logged")
    return (ended[steps] - ended[skip]) / 1000
