"""Steady-state timing of real `rnn-orch` training, leaving out what every run pays once
(Ray Train's actors, imports, the MLflow run, the model at the end): one run, timed
between two steps' MLflow timestamps (`train_loss` is logged as each step ends). Start-up
varies by seconds from run to run on a busy machine, so differencing two runs of
different lengths is noisier."""

from __future__ import annotations

import sys
import time

from mlflow.tracking import MlflowClient

from orchestrator import driver
from orchestrator.config import Config, apply_overrides


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
