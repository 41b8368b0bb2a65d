"""Gradient diagnostics end to end: two Ray Train workers, rank 0 logs to a real MLflow store."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import driver
from orchestrator.config import Config, apply_overrides
from orchestrator.diagnostics import read_matrix

pytestmark = pytest.mark.integration

GATES = ("input", "forget", "output")
LAYER_GROUPS = ("rnn_l0_ih", "rnn_l0_hh", "rnn_l1_ih", "rnn_l1_hh", "head")


def test_diagnostics_log_layer_time_and_gate_figures_and_the_heatmap(ray_address, workdir):
    config = driver.resolve(apply_overrides(Config(), [
        "task.seq_len=20", "task.val_size=128", "model.cell=lstm", "model.hidden_size=16",
        "model.num_layers=2", "train.batch_size=16", "train.steps=40", "train.eval_every=20",
        "train.checkpoint_every=40", "diagnostics.every=10", "diagnostics.rows=4",
        "scaling.num_workers=2", "tracking.experiment=tests",
    ]), {})
    outcome = driver.train(config)

    client = MlflowClient(config.tracking.uri)

    def steps(key: str) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(outcome.run_id, key))

    diagnostic_steps = [10, 20, 30, 40]
    for group in LAYER_GROUPS:
        assert steps(f"grad_norm/{group}") == diagnostic_steps, group
    for key in ("grad_time_first", "grad_time_last", "grad_time_ratio",
                *(f"gate_saturation/{gate}" for gate in GATES)):
        assert steps(key) == diagnostic_steps, key
    ratios = [m.value for m in client.get_metric_history(outcome.run_id, "grad_time_ratio")]
    assert all(ratio > 0 for ratio in ratios)

    artifacts = {a.path for a in client.list_artifacts(outcome.run_id, "diagnostics")}
    assert artifacts == {"diagnostics/grad_through_time.png", "diagnostics/grad_through_time.csv"}
    back = client.download_artifacts(outcome.run_id, "diagnostics", str(workdir))
    matrix_steps, matrix = read_matrix(f"{back}/grad_through_time.csv")
    assert matrix_steps.tolist() == diagnostic_steps and matrix.shape == (4, 20)
    assert open(f"{back}/grad_through_time.png", "rb").read(4) == b"\x89PNG"
