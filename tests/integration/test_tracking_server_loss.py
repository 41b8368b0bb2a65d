"""A real `mlflow server` on 127.0.0.1 that goes away: killed in the middle of a training
run or of a sweep, or missing while a logger runs and started later. Training goes on,
what could not be sent is kept in the run's storage, and it reaches MLflow once the server
is back, each figure once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.metric_logger import MetricLogger
from orchestrator.spool import SPOOL_DIR, Spool
from tests.integration.test_resume_and_restart import wait_for_checkpoint

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
CONFIG = str(Path(__file__).parents[2] / "configs" / "adding.yaml")


def steps_of(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_a_run_outlives_its_tracking_server_and_sync_records_the_rest(mlflow_server, cli_env,
                                                                      workdir):
    server = mlflow_server
    server.start()
    run_dir = workdir / "runs" / "lose-server"
    # A checkpoint is registered seconds after it is written, while this model trains
    # about 40 steps a second: 600 steps keep the run going well past the server's end.
    run = subprocess.Popen(
        [BIN / "rnn-orch", "train", CONFIG, "run.name=lose-server", "task.seq_len=20",
         "model.hidden_size=16", "train.steps=600", "train.eval_every=40",
         "train.checkpoint_every=40", "tracking.experiment=tests",
         f"tracking.uri={server.uri}"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_checkpoint(run_dir, run, timeout_s=180)
    server.kill()  # the first validation is in MLflow; the rest of the run has no server

    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, output
    assert output.count("cannot be reached (") == 1, output  # told once, by the loop
    assert f"rnn-orch sync {run_dir}" in output, output  # and how to finish, by the driver
    assert (run_dir / "checkpoint_00000600").is_dir()  # checkpoints went on being written
    spool = Spool(str(run_dir / SPOOL_DIR))
    assert spool.entries() and spool.ending() is not None

    server.start()
    synced = subprocess.run([BIN / "rnn-orch", "sync", str(run_dir)], env=cli_env,
                            capture_output=True, text=True, timeout=300)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "marked the run FINISHED" in synced.stdout
    assert spool.entries() == [] and spool.ending() is None

    client = MlflowClient(server.uri)
    [found] = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    run_id = found.info.run_id
    assert steps_of(client, run_id, "train_loss") == list(range(1, 601))  # each step once
    assert steps_of(client, run_id, "val_loss") == list(range(40, 601, 40))
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(run_id).data.tags["rnn_orch.model_uri"].startswith("models:/")
    assert "best_checkpoint" in {a.path for a in client.list_artifacts(run_id)}


def test_a_logger_started_while_the_server_is_down_sends_everything_when_it_is_back(
        mlflow_server, tmp_path):
    server = mlflow_server
    server.start()  # to create the run; then it goes away
    client = MlflowClient(server.uri)
    run_id = client.create_run(client.create_experiment("back")).info.run_id
    server.kill()
    notes: list[str] = []
    logger = MetricLogger(server.uri, run_id, str(tmp_path / SPOOL_DIR), flush_every_s=3600,
                          retry_every_s=0.0, notify=notes.append)
    for step in (1, 2):
        logger.log(step, {"train_loss": 1.0 / step})
        logger.flush()
    assert len(Spool(str(tmp_path / SPOOL_DIR)).entries()) == 2

    server.start()
    logger.log(3, {"train_loss": 1.0 / 3})
    logger.flush()  # the spool first, then the new batch
    assert Spool(str(tmp_path / SPOOL_DIR)).entries() == []
    assert [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, "train_loss"),
                                              key=lambda m: m.step)] == [
        (1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert len(notes) == 2 and "is back: sent 2 spooled entries" in notes[1], notes


def test_a_sweep_outlives_its_tracking_server_and_resume_records_its_end(mlflow_server,
                                                                          cli_env, workdir):
    """Two trials lose the server mid-run; the third starts without one, so its run is
    created only by the resume."""
    server = mlflow_server
    server.start()
    (workdir / "base.yaml").write_text(textwrap.dedent(f"""
        task: {{name: adding, seq_len: 20, val_size: 256}}
        model: {{hidden_size: 16}}
        train: {{steps: 600, batch_size: 32, eval_every: 50, checkpoint_every: 50}}
        scaling: {{num_workers: 1, cpus_per_worker: 0.9}}
        tracking: {{experiment: tests, uri: "{server.uri}"}}
        """))
    sweep = workdir / "sweep.yaml"
    sweep.write_text(textwrap.dedent("""
        name: lose-server
        base: base.yaml
        space:
          model.cell: {grid: [lstm, gru, rnn_tanh]}
        search: {max_concurrent_trials: 2}
        metric: val_loss
        mode: min
        """))
    trials = workdir / "runs" / "sweeps" / "lose-server" / "train"
    run = subprocess.Popen([BIN / "rnn-orch", "tune", str(sweep)], env=cli_env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    # Any checkpoint of a trial will do: the oldest are deleted as new ones come, and a
    # trial trains its 600 steps in seconds (one sweep here ended before a poll saw
    # both trials' checkpoint_00000050 of a 300-step run).
    while len({path.parent for path in trials.glob("lose-server-*/checkpoint_*")}) < 2:
        assert run.poll() is None, run.communicate()[0]
        assert time.monotonic() < deadline, "the two trials did not both validate"
        time.sleep(0.5)
    server.kill()  # two trial runs exist in MLflow; the rest of the sweep has no server

    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, output
    assert f"rnn-orch tune {sweep} --resume" in output, output
    kept = [Spool(str(directory / SPOOL_DIR)) for directory in trials.glob("lose-server-*")]
    assert len(kept) == 3 and all(spool.entries() for spool in kept)

    server.start()
    resumed = subprocess.run([BIN / "rnn-orch", "tune", str(sweep), "--resume"], env=cli_env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "not recorded" not in resumed.stdout
    assert all(spool.entries() == [] for spool in kept)

    client = MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("rnn_orch.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and "best.trial" in parent.data.tags
    assert sorted(child.data.params["model.cell"] for child in children) == [
        "gru", "lstm", "rnn_tanh"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["rnn_orch.model_uri"].startswith("models:/")
        assert steps_of(client, child.info.run_id, "train_loss") == list(range(1, 601))
        assert steps_of(client, child.info.run_id, "val_loss") == list(range(50, 601, 50))
