"""End to end with a real Ray cluster (two worker processes) and a real MLflow store."""

from __future__ import annotations

import os

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator import driver
from orchestrator.config import Config, apply_overrides
from pipelines.labelled_sequences import fetch_archive
from pipelines.parquet import channel_statistics, write_dataset
from pipelines.synthetic import make_task, validation_set

pytestmark = pytest.mark.integration

TINY = [
    "task.seq_len=20", "task.val_size=256", "model.hidden_size=32", "optim.lr=0.01",
    "train.batch_size=32", "scaling.num_workers=2", "tracking.experiment=tests",
]


def tiny_config(*overrides: str) -> Config:
    return driver.resolve(apply_overrides(Config(), [*TINY, *overrides]), {})


def history(config: Config, outcome: driver.Outcome, key: str) -> dict[int, float]:
    """{step: value} of one metric of the run."""
    client = MlflowClient(config.tracking.uri)
    return {m.step: m.value for m in client.get_metric_history(outcome.run_id, key)}


def test_adding_run_is_tracked_and_its_model_predicts(ray_address, workdir):
    config = tiny_config("train.steps=400", "train.eval_every=50", "train.checkpoint_every=200")
    outcome = driver.train(config)

    client = MlflowClient(config.tracking.uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.cell"] == "lstm"
    assert run.data.params["scaling.num_workers"] == "2"
    val = [m.value for m in client.get_metric_history(outcome.run_id, "val_loss")]
    assert len(val) == 8 and val[-1] < val[0]
    steps = [m.step for m in client.get_metric_history(outcome.run_id, "grad_norm")]
    assert steps == list(range(1, 401))  # logged every step, once
    assert {"train_loss", "clip_rate", "lr", "tokens_per_s", "grad_norm_clipped"} <= set(
        run.data.metrics)

    mlflow.set_tracking_uri(config.tracking.uri)
    model = mlflow.pytorch.load_model(f"runs:/{outcome.run_id}/model")
    batch = validation_set(make_task("adding", 20), seed=1, n=64)
    with torch.no_grad():
        predictions = model(torch.from_numpy(batch["inputs"])).numpy()
    assert predictions.shape == (64, 1)
    assert np.mean((predictions - batch["targets"]) ** 2) < outcome.baseline
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert {"config.yaml", "best_checkpoint"} <= artifacts


def test_validations_between_checkpoints_do_not_wait_for_ray_trains_controller(
        ray_address, workdir):
    """Ray Train's controller takes one report from a worker each time it polls (every
    0.5 s with this suite's head, 2 s on a cluster), and a report waits for the one
    before: a loop that reported every validation would train one validation's steps per
    poll at most. Between checkpoints nothing is reported, so 35 steps, each validated,
    take much less than 35 polls."""
    poll = float(os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"])
    config = tiny_config("train.steps=40", "train.eval_every=1", "train.checkpoint_every=40",
                         "task.val_size=32")
    outcome = driver.train(config)

    client = MlflowClient(config.tracking.uri)
    assert len(client.get_metric_history(outcome.run_id, "val_loss")) == 40
    ended = {m.step: m.timestamp for m in client.get_metric_history(outcome.run_id,
                                                                     "train_loss")}
    assert (ended[40] - ended[5]) / 1000 < 35 * poll / 2


def test_a_classifier_of_real_recordings_trains_from_parquet_shards(ray_address, workdir):
    """JapaneseVowels (12 speech channels, 7 to 29 steps, 9 speakers), converted from
    sktime's wheel into four Parquet shards per split, read through Ray Data by two
    workers: the classifier beats always answering the majority class by far, and the
    test split is scored with macro-F1 and drawn as a confusion matrix. Its channels are
    normalized with the training split's statistics, which the logged model keeps."""
    fetch_archive("japanese_vowels", workdir / "vowels")
    config = tiny_config("task.name=parquet", f"task.path={workdir / 'vowels'}",
                         "model.cell=gru", "train.steps=60", "train.eval_every=30",
                         "train.checkpoint_every=30", "task.normalize_channels=true")
    outcome = driver.train(config)

    client = MlflowClient(config.tracking.uri)
    metrics = client.get_run(outcome.run_id).data.metrics
    assert [m.step for m in client.get_metric_history(outcome.run_id, "val_loss")] == [30, 60]
    assert metrics["val_accuracy"] > metrics["accuracy_majority"] + 0.3, metrics
    assert metrics["test_accuracy"] > metrics["test_accuracy_majority"] + 0.3, metrics
    assert 0.3 < metrics["test_macro_f1"] <= 1 and 0.3 < metrics["val_macro_f1"] <= 1
    plots = {a.path for a in client.list_artifacts(outcome.run_id, "plots")}
    assert plots == {"plots/confusion_matrix_test.png"}
    mlflow.set_tracking_uri(config.tracking.uri)
    model = mlflow.pytorch.load_model(outcome.model_uri)
    mean, std = channel_statistics(workdir / "vowels" / "train")
    assert model.spec.input_mean == mean and model.spec.input_std == std
    assert len(mean) == 12 and max(abs(m) for m in mean) > 0.1  # raw channels are off-centre


def test_progress_driven_curriculum_rises_and_ranks_agree(ray_address, workdir):
    # threshold 1.0 is above the adding problem's baseline: every validation passes it.
    config = tiny_config("task.seq_len=40", "curriculum.schedule=naive", "curriculum.start=10",
                         "curriculum.increment=10", "curriculum.threshold=1.0",
                         "train.steps=100", "train.eval_every=20", "train.checkpoint_every=100")
    outcome = driver.train(config)

    levels = history(config, outcome, "curriculum_level")
    assert [levels[step] for step in (1, 21, 41, 61, 81)] == [10, 20, 30, 40, 40]
    spreads = history(config, outcome, "curriculum_level_spread")
    assert list(spreads) == [20, 40, 60, 80, 100] and set(spreads.values()) == {0}
    assert len(history(config, outcome, "val_loss_level")) == 5
    assert outcome.final["curriculum_level"] == 40


def test_curriculum_on_parquet_filters_rows_by_a_difficulty_column(ray_address, workdir):
    write_dataset(make_task("adding", 10), workdir / "data", rows=1024, val_rows=128, seed=0)
    for part in (workdir / "data").rglob("*.parquet"):  # a difficulty rank 1..4 per row
        table = pq.read_table(part)
        ranks = np.random.default_rng(0).integers(1, 5, size=table.num_rows, dtype=np.int32)
        pq.write_table(table.append_column("rank", pa.array(ranks)), part)
    # About the rows a curriculum admits, not about learning: 40 steps on filtered rows.
    config = tiny_config("task.name=parquet", f"task.path={workdir / 'data'}",
                         "curriculum.schedule=step", "curriculum.difficulty=rank",
                         "curriculum.start=1", "curriculum.increment=1", "curriculum.every=10",
                         "train.steps=40", "train.eval_every=20", "train.checkpoint_every=40")
    outcome = driver.train(config)

    levels = history(config, outcome, "curriculum_level")
    assert [levels[step] for step in (1, 10, 20, 30, 40)] == [1, 2, 3, 4, 4]
    assert history(config, outcome, "curriculum_level_spread") == {20: 0, 40: 0}
    assert outcome.final["step"] == 40


def test_nan_data_on_one_rank_is_survived_by_the_guard(ray_address, workdir):
    # Eight files of 128 rows; the rows of one file are NaN, so whichever rank reads it
    # gets several bad batches in a row (read in the files' order, not shuffled, which
    # would spread them over every batch). About surviving them, not about learning.
    write_dataset(make_task("adding", 10), workdir / "data", rows=1024, val_rows=128, seed=0,
                  rows_per_file=128)
    poisoned = sorted((workdir / "data" / "train").glob("*.parquet"))[3]
    table = pq.read_table(poisoned)
    nan_rows = pa.array([[[float("nan")] * 2] * 10] * table.num_rows, table.schema.field(
        "inputs").type)
    column = table.schema.get_field_index("inputs")
    pq.write_table(table.set_column(column, "inputs", nan_rows), poisoned)
    config = tiny_config("task.name=parquet", f"task.path={workdir / 'data'}",
                         "task.shuffle_rows=0", "guard.patience=2", "guard.max_rollbacks=20",
                         "train.steps=48", "train.eval_every=16", "train.checkpoint_every=48")
    outcome = driver.train(config)

    run = MlflowClient(config.tracking.uri).get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["guard_rollbacks"] >= 1
    assert run.data.metrics["guard_skipped_steps"] >= 2
    incidents = [v for k, v in run.data.tags.items() if k.startswith("guard.incident.")]
    assert any(v.startswith("non-finite loss: rolled back to step") for v in incidents)
    assert np.isfinite(outcome.final["val_loss"])


@pytest.mark.parametrize("cell, time_loop", [
    ("ln_lstm", "compiled"), ("ln_gru", "compiled"),
    ("bn_lstm", "python"),  # its statistics are all-reduced between the workers step by step
])
def test_normalized_cells_train_data_parallel(cell, time_loop, ray_address, workdir):
    config = tiny_config(f"model.cell={cell}", "train.steps=200", "train.eval_every=50",
                         "train.checkpoint_every=200")
    outcome = driver.train(config)

    run = MlflowClient(config.tracking.uri).get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["model.time_loop"] == time_loop
    val = list(history(config, outcome, "val_loss").values())
    assert len(val) == 4 and val[-1] < 0.5 * val[0]
