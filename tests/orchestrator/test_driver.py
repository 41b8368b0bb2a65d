"""The driver's pure parts: resolving a config, turning worker failures into one paragraph."""

from __future__ import annotations

from pathlib import Path

from ray.train import WorkerGroupError

from orchestrator import driver
from orchestrator.config import Config, apply_overrides
from pipelines.errors import DataError


def test_resolve_fills_name_storage_and_tracking(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = driver.resolve(Config(), {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"})
    assert config.run.name.startswith("adding-lstm-")
    assert Path(config.run.storage_path) == tmp_path / "runs"
    assert config.tracking.uri == "http://127.0.0.1:5000"


def test_resolve_makes_the_data_path_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = apply_overrides(Config(), ["task.name=parquet", "task.path=data"])
    assert driver.resolve(config, {}).task.path == str(tmp_path / "data")


def test_resolve_keeps_a_given_name_and_remote_storage():
    config = apply_overrides(Config(), ["run.name=mine", "run.storage_path=s3://bucket/x"])
    resolved = driver.resolve(config, {})
    assert (resolved.run.name, resolved.run.storage_path) == ("mine", "s3://bucket/x")


def test_a_data_error_in_a_worker_stays_a_data_error():
    error = driver.failure(WorkerGroupError("worker 1 failed", {1: DataError("too few rows")}))
    assert isinstance(error, DataError) and str(error) == "too few rows"


def test_a_crash_in_a_worker_becomes_one_paragraph():
    crash = FileNotFoundError("/data/x.parquet: no such file\n\nTo change retry attempts...")
    error = driver.failure(WorkerGroupError("worker 0 failed", {0: crash}))
    assert isinstance(error, driver.TrainingFailed)
    assert str(error).startswith(
        "training failed on a worker: FileNotFoundError: /data/x.parquet: no such file (")
    assert "\n" not in str(error)


def test_task_info_carries_the_training_split_statistics_when_asked(tmp_path):
    from pipelines.parquet import channel_statistics, write_dataset
    from pipelines.synthetic import make_task

    write_dataset(make_task("adding", 8), tmp_path / "data", rows=64, val_rows=16, seed=0)
    overrides = ["task.name=parquet", f"task.path={tmp_path / 'data'}"]
    plain = driver.task_info(apply_overrides(Config(), overrides))
    assert plain.input_mean == plain.input_std == ()
    info = driver.task_info(apply_overrides(Config(), [*overrides,
                                                       "task.normalize_channels=true"]))
    assert (info.input_mean, info.input_std) == channel_statistics(tmp_path / "data" / "train")
    assert len(info.input_mean) == info.input_size == 2


def test_an_elastic_run_hands_ray_train_its_range_and_resize_interval():
    elastic = apply_overrides(Config(), ["scaling.min_workers=1", "scaling.num_workers=3",
                                         "scaling.resize_every_s=5", "scaling.cpus_per_worker=1"])
    scaling = driver.scaling_config(elastic)
    assert (scaling.min_workers, scaling.max_workers) == (1, 3)
    assert scaling.elasticity_enabled and scaling.elastic_resize_monitor_interval_s == 5
    fixed = driver.scaling_config(apply_overrides(Config(), ["scaling.cpus_per_worker=1"]))
    assert fixed.num_workers == 2 and not fixed.elasticity_enabled
