"""Transfer learning end to end on a real Ray cluster and a real MLflow registry: a model
pretrained on one task is registered, then fine-tuned from `models:/name@alias` on a
forecasting table with a new head, part of it frozen and lower layers at lower rates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator import driver, tracking
from orchestrator.config import Config, apply_overrides

pytestmark = pytest.mark.integration

SHAPE = ["model.cell=lstm", "model.hidden_size=16", "model.num_layers=2", "optim.lr=0.01",
         "train.batch_size=16", "train.eval_every=20", "train.checkpoint_every=20",
         "scaling.num_workers=2", "tracking.experiment=tests"]


def forecasting_table(path: Path) -> None:
    hours = np.arange(400)
    times = pd.date_range("2024-01-01", periods=400, freq="h").strftime("%Y-%m-%d %H:%M:%S")
    pd.DataFrame({"time": times, "load": 10 + np.sin(2 * np.pi * hours / 24),
                  "temp": np.cos(2 * np.pi * hours / 24)}).to_csv(path, index=False)


def test_fine_tuning_from_the_registry_loads_freezes_and_records_lineage(ray_address, workdir):
    pretrain = driver.resolve(apply_overrides(Config(), [
        *SHAPE, "task.name=adding", "task.seq_len=10", "task.val_size=64", "train.steps=40",
        "run.name=pretrain"]), {})
    source = driver.train(pretrain)
    uri = pretrain.tracking.uri
    assert tracking.register_model(uri, source.model_uri, "adder", "pretrained") == "1"
    weights_before = tracking.model_weights("models:/adder/1", uri)["model"]

    forecasting_table(workdir / "load.csv")
    tune = driver.resolve(apply_overrides(Config(), [
        *SHAPE, "task.name=timeseries", "task.path=load.csv", "task.time_column=time",
        "task.targets=load", "task.covariates=temp", "task.input_len=24", "task.horizon=4",
        "train.steps=40", "run.name=finetune", "init.from=models:/adder@pretrained",
        "init.freeze=[rnn.*_l0]", "init.lr_decay=2"]), {})
    tuned = driver.train(tune)

    client = MlflowClient(uri)
    run = client.get_run(tuned.run_id)
    assert run.data.tags["rnn_orch.init.from"] == "models:/adder@pretrained"
    assert run.data.tags["rnn_orch.init.registered_model"] == "adder/1"
    assert run.data.tags["rnn_orch.init.source_run_id"] == source.run_id
    report = client.download_artifacts(tuned.run_id, driver.TRANSFER_REPORT, str(workdir))
    text = Path(report).read_text()
    assert "Loaded (8)" in text and "a new head: 1 outputs (regression) in the source, 4" in text

    after = tracking.model_weights(f"runs:/{tuned.run_id}/model", uri)["model"]
    for name, tensor in after.items():
        if name.startswith("rnn.") and name.endswith("_l0"):
            assert torch.equal(tensor, weights_before[name]), f"{name} was frozen"
        elif name.startswith("rnn."):
            assert not torch.equal(tensor, weights_before[name]), f"{name} should train"
    rates = {key: run.data.metrics[f"lr/{key}"] for key in ("head", "rnn_l1", "rnn_l0")}
    assert rates == pytest.approx({"head": 0.01, "rnn_l1": 0.005, "rnn_l0": 0.0025})

    version = tracking.register_model(uri, tuned.model_uri, "load-forecaster")
    tags = client.get_model_version("load-forecaster", version).tags
    assert tags["rnn_orch.init.registered_model"] == "adder/1"
