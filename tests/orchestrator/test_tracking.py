"""MLflow helpers against a real SQLite store in a temporary directory (no server, no Ray)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import tracking
from orchestrator.tracking import DEFAULT_URI, MetricLogger, resolve_uri, ui_command

# --- resolve_uri ------------------------------------------------------------------------

def test_configured_uri_wins_over_the_environment():
    environ = {"MLFLOW_TRACKING_URI": "http://env:5000"}
    assert resolve_uri("http://configured:5000", environ) == "http://configured:5000"


def test_environment_wins_over_the_default():
    assert resolve_uri("", {"MLFLOW_TRACKING_URI": "http://env:5000"}) == "http://env:5000"


def test_default_is_sqlite_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_URI == "sqlite:///mlflow.db"
    assert resolve_uri("", {}) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


@pytest.mark.parametrize("source", ["configured", "environment"])
def test_relative_sqlite_paths_become_absolute(tmp_path, monkeypatch, source):
    monkeypatch.chdir(tmp_path)
    relative = "sqlite:///runs/store.db"
    uri = (resolve_uri(relative, {}) if source == "configured"
           else resolve_uri("", {"MLFLOW_TRACKING_URI": relative}))
    assert uri == f"sqlite:///{tmp_path.resolve()}/runs/store.db"
    assert uri.startswith("sqlite:////")


def test_absolute_sqlite_and_other_uris_are_kept(tmp_path):
    absolute = f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_uri(absolute, {}) == absolute
    assert resolve_uri("file:./mlruns", {}) == "file:./mlruns"


# --- ui_command -------------------------------------------------------------------------

def test_ui_command_for_a_server_is_the_run_page():
    assert ui_command("http://mlflow:5000/", "3", "abc") == "http://mlflow:5000/#/experiments/3/runs/abc"


def test_ui_command_for_a_local_store_starts_the_ui_on_it():
    command = ui_command("sqlite:////tmp/x/mlflow.db", "3", "abc")
    assert command.startswith("mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db")
    assert "#/experiments/3/runs/abc" in command


# --- MetricLogger on a real store ---------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, MlflowClient]:
    """One SQLite store for the module: creating its schema takes a couple of seconds."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    return uri, MlflowClient(uri)


@pytest.fixture
def run_id(store) -> str:
    _, client = store
    experiment = client.get_experiment_by_name("tests") or client.get_experiment(
        client.create_experiment("tests"))
    return client.create_run(experiment.experiment_id).info.run_id


@pytest.fixture
def batches(monkeypatch) -> list[int]:
    """The size of every `log_batch` call any MlflowClient makes (the calls still go through)."""
    sizes: list[int] = []
    original = MlflowClient.log_batch

    def log_batch(self, run_id, metrics=(), *args, **kwargs):
        sizes.append(len(metrics))
        return original(self, run_id, metrics, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", log_batch)
    return sizes


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_metric_logger_buffers_until_flush(store, run_id, batches):
    uri, client = store
    logger = MetricLogger(uri, run_id, flush_every_s=3600)
    for step in range(1, 4):
        logger.log(step, {"train_loss": 1.0 / step, "grad_norm": float(step)})
    assert batches == []
    assert history(client, run_id, "train_loss") == []
    assert client.get_run(run_id).data.metrics == {}

    logger.flush()
    assert batches == [6]  # one call for everything
    assert history(client, run_id, "train_loss") == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert history(client, run_id, "grad_norm") == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_metric_logger_flushes_by_itself_once_the_interval_passed(store, run_id):
    uri, client = store
    logger = MetricLogger(uri, run_id, flush_every_s=0.0)
    logger.log(5, {"val_loss": 0.25})
    assert history(client, run_id, "val_loss") == [(5, 0.25)]


def test_metric_logger_sends_each_metric_once(store, run_id, batches):
    uri, client = store
    logger = MetricLogger(uri, run_id, flush_every_s=3600)
    logger.log(1, {"lr": 0.001})
    logger.flush()
    logger.flush()  # nothing pending: no call
    logger.log(2, {"lr": 0.002})
    logger.flush()
    assert batches == [1, 1]
    assert history(client, run_id, "lr") == [(1, 0.001), (2, 0.002)]


def test_metric_logger_splits_large_batches(store, run_id, monkeypatch, batches):
    monkeypatch.setattr(tracking, "_BATCH_LIMIT", 7)
    uri, client = store
    logger = MetricLogger(uri, run_id, flush_every_s=3600)
    for step in range(20):
        logger.log(step, {"a": step, "b": -step})
    logger.flush()
    assert batches == [7] * 5 + [5]
    assert history(client, run_id, "a") == [(step, float(step)) for step in range(20)]
    assert history(client, run_id, "b") == [(step, float(-step)) for step in range(20)]


def test_metric_logger_uploads_files_and_a_redrawing_replaces_them(store, tmp_path):
    uri, client = store
    experiment = client.create_experiment(  # artifacts in tmp_path, not ./mlruns
        f"artifacts-{tmp_path.name}", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    logger = MetricLogger(uri, run_id)
    drawn = tmp_path / "drawn"
    drawn.mkdir()
    for version in ("first", "second"):
        (drawn / "figure.png").write_text(version)
        logger.log_artifacts(drawn, "diagnostics")
    assert [a.path for a in client.list_artifacts(run_id, "diagnostics")] == [
        "diagnostics/figure.png"]
    local = client.download_artifacts(run_id, "diagnostics/figure.png", str(tmp_path / "back"))
    assert open(local).read() == "second"
