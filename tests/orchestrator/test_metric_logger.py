"""The training loop's MLflow logging against a real SQLite store, and against a server
that is not there (nothing listens on its port): batches, files, the spool, sending it."""

from __future__ import annotations

import socket
import time

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import spool as spool_module
from orchestrator.metric_logger import MetricLogger
from orchestrator.spool import Spool
from pipelines.errors import DataError


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, MlflowClient]:
    """One SQLite store for the module: creating its schema takes a couple of seconds."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    return uri, MlflowClient(uri)


@pytest.fixture
def run_id(store, tmp_path) -> str:
    _, client = store
    experiment = client.create_experiment(  # artifacts in tmp_path, not ./mlruns
        f"tests-{tmp_path.name}", artifact_location=(tmp_path / "artifacts").as_uri())
    return client.create_run(experiment).info.run_id


@pytest.fixture
def spool_dir(tmp_path) -> str:
    return str(tmp_path / "run" / spool_module.SPOOL_DIR)


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


@pytest.fixture
def gone() -> str:
    """The URI of a tracking server that is not running: a port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_metric_logger_buffers_until_flush(store, run_id, spool_dir, batches):
    uri, client = store
    logger = MetricLogger(uri, run_id, spool_dir, flush_every_s=3600)
    for step in range(1, 4):
        logger.log(step, {"train_loss": 1.0 / step, "grad_norm": float(step)})
    time.sleep(0.2)
    assert batches == []
    assert client.get_run(run_id).data.metrics == {}

    logger.flush()
    assert batches == [6]  # one call for everything
    assert history(client, run_id, "train_loss") == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert history(client, run_id, "grad_norm") == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_metric_logger_sends_by_itself_once_the_interval_passed(store, run_id, spool_dir):
    uri, client = store
    logger = MetricLogger(uri, run_id, spool_dir, flush_every_s=0.0)
    logger.log(5, {"val_loss": 0.25})
    deadline = time.monotonic() + 30
    while not history(client, run_id, "val_loss") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert history(client, run_id, "val_loss") == [(5, 0.25)]


def test_metric_logger_sends_each_metric_once(store, run_id, spool_dir, batches):
    uri, client = store
    logger = MetricLogger(uri, run_id, spool_dir, flush_every_s=3600)
    logger.log(1, {"lr": 0.001})
    logger.flush()
    logger.flush()  # nothing pending: no call
    logger.log(2, {"lr": 0.002})
    logger.flush()
    assert batches == [1, 1]
    assert history(client, run_id, "lr") == [(1, 0.001), (2, 0.002)]


def test_metric_logger_splits_large_batches(store, run_id, spool_dir, monkeypatch, batches):
    monkeypatch.setattr(spool_module, "_BATCH_LIMIT", 7)
    uri, client = store
    logger = MetricLogger(uri, run_id, spool_dir, flush_every_s=3600)
    for step in range(20):
        logger.log(step, {"a": step, "b": -step})
    logger.flush()
    assert batches == [7] * 5 + [5]
    assert history(client, run_id, "a") == [(step, float(step)) for step in range(20)]
    assert history(client, run_id, "b") == [(step, float(-step)) for step in range(20)]


def test_metric_logger_uploads_files_and_a_redrawing_replaces_them(store, run_id, spool_dir,
                                                                   tmp_path):
    uri, client = store
    logger = MetricLogger(uri, run_id, spool_dir)
    drawn = tmp_path / "drawn"
    drawn.mkdir()
    for version in ("first", "second"):
        (drawn / "figure.png").write_text(version)
        logger.log_artifacts(drawn, "diagnostics")
    (drawn / "figure.png").write_text("drawn after the upload was asked for")
    logger.flush()
    assert [a.path for a in client.list_artifacts(run_id, "diagnostics")] == [
        "diagnostics/figure.png"]
    local = client.download_artifacts(run_id, "diagnostics/figure.png", str(tmp_path / "back"))
    assert open(local).read() == "second"


def test_a_spool_location_that_cannot_be_opened_fails_the_flush(store, run_id):
    """The sender thread opens the spool; what stops it is raised on the training thread."""
    uri, _ = store
    logger = MetricLogger(uri, run_id, "nosuch://bucket/run/mlflow_spool", flush_every_s=3600)
    logger.log(1, {"train_loss": 1.0})
    with pytest.raises(DataError, match="nosuch://bucket/run/mlflow_spool: cannot open"):
        logger.flush()
    with pytest.raises(DataError):
        logger.last_step("train_loss")


def test_last_step_is_read_from_the_store(store, run_id, spool_dir):
    uri, _ = store
    logger = MetricLogger(uri, run_id, spool_dir, flush_every_s=3600)
    assert logger.last_step("train_loss") == 0
    for step in (1, 7, 3):
        logger.log(step, {"train_loss": 1.0})
    logger.flush()
    assert logger.last_step("train_loss") == 7


# --- the server goes away ------------------------------------------------------------------

def test_a_lost_server_is_reported_once_and_everything_is_spooled_in_order(
        store, run_id, spool_dir, gone, tmp_path):
    notes: list[str] = []
    logger = MetricLogger(gone, run_id, spool_dir, flush_every_s=3600, notify=notes.append)
    logger.log(1, {"train_loss": 1.0})
    logger.flush()
    logger.log(2, {"train_loss": 0.5})
    logger.tag("guard.incident.00000002", "nan loss: skipped")
    logger.flush()
    drawn = tmp_path / "drawn"
    drawn.mkdir()
    (drawn / "figure.png").write_text("heatmap")
    logger.log_artifacts(drawn, "diagnostics")
    logger.log(3, {"train_loss": 0.25})
    logger.flush()

    assert len(notes) == 1, notes
    assert gone in notes[0] and spool_dir in notes[0] and "rnn-orch sync" in notes[0]
    spool = Spool(spool_dir)
    assert len(spool.entries()) == 4  # three batches and one upload, in the order made

    uri, client = store  # the run's store, reached again: send what was kept
    assert spool.send(uri) == 4
    assert spool.entries() == []
    assert history(client, run_id, "train_loss") == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert client.get_run(run_id).data.tags["guard.incident.00000002"] == "nan loss: skipped"
    local = client.download_artifacts(run_id, "diagnostics/figure.png", str(tmp_path / "back"))
    assert open(local).read() == "heatmap"
    assert spool.send(uri) == 0  # sent once


def test_a_spool_that_cannot_be_sent_keeps_every_entry(run_id, spool_dir, gone):
    logger = MetricLogger(gone, run_id, spool_dir, flush_every_s=3600, notify=lambda _: None)
    for step in (1, 2):
        logger.log(step, {"train_loss": 1.0})
        logger.flush()
    spool = Spool(spool_dir)
    before = spool.entries()
    with pytest.raises(Exception, match="127.0.0.1"):
        spool.send()
    assert spool.entries() == before


def test_the_end_of_a_run_is_kept_until_it_is_recorded(spool_dir):
    spool = Spool(spool_dir)
    assert spool.ending() is None
    ending = {"tracking_uri": "http://mlflow:5000", "run_id": "abc", "forecast": None,
              "final": "/runs/x/checkpoint_00000100", "best": "/runs/x/checkpoint_00000050"}
    spool.keep_ending(ending)
    assert spool.ending() == ending
    assert spool.entries() == []  # not a batch to send
    spool.drop_ending()
    assert spool.ending() is None


def test_a_run_that_could_not_be_created_is_created_by_the_first_send(store, spool_dir, gone,
                                                                      tmp_path):
    """A trial that starts while the server is away logs under the run id "" and keeps
    what its run is made of; the first send once the server is back creates the run."""
    uri, client = store
    experiment = f"tests-{tmp_path.name}"
    client.create_experiment(experiment, artifact_location=(tmp_path / "artifacts").as_uri())
    spool = Spool(spool_dir)
    spool.keep_opening(gone, experiment, "sweep-t1", {"model.cell": "gru", "train.lr": 0.01},
                       "model: {cell: gru}\n", {"mlflow.parentRunId": "parent"})
    logger = MetricLogger(gone, "", spool_dir, flush_every_s=3600, notify=lambda _: None)
    for step in (1, 2):
        logger.log(step, {"train_loss": 1.0 / step})
        logger.flush()
    assert len(spool.entries()) == 2  # the opening is not an entry to send
    assert client.search_runs([client.get_experiment_by_name(experiment).experiment_id]) == []

    assert spool.send(uri) == 2  # the store, reached again (here under another URI)
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.data.params == {"model.cell": "gru", "train.lr": "0.01"}
    assert run.data.tags["mlflow.parentRunId"] == "parent"
    assert run.data.tags["rnn_orch.run_name"] == "sweep-t1"
    assert history(client, run.info.run_id, "train_loss") == [(1, 1.0), (2, 0.5)]
    assert spool.run_id_for("") == run.info.run_id  # later entries go to the same run
    spool.add_batch(uri, "", [], [])
    assert spool.send(uri) == 1
    assert len(client.search_runs([run.info.experiment_id])) == 1  # created once


def test_entries_without_a_run_and_nothing_to_create_it_from_stay_kept(spool_dir, gone):
    spool = Spool(spool_dir)
    spool.add_batch(gone, "", [], [])
    with pytest.raises(FileNotFoundError, match="no run to create"):
        spool.send()
    assert len(spool.entries()) == 1
