"""`ray job submit` of a training run and of a sweep, as users submit to a cluster: the real
job client against the test head (token authentication on, see conftest), the project as
the working directory, logs followed to the end (the sweep's with `ray job logs --follow`,
after a `--no-wait` submission), each job's status asked afterwards, and the runs found
in MLflow under the job's submission id."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration

RAY = str(Path(sys.executable).parent / "ray")
ROOT = Path(__file__).resolve().parents[2]
# The job client finds the cluster by --address, as a user's laptop does, not RAY_ADDRESS.
JOB_CLIENT_ENV = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}


def job_client(ray_head, *args: str, timeout: int = 400) -> str:
    """`ray job ARGS...` against the test head; it must succeed. Returns its output."""
    done = subprocess.run([RAY, "job", *args[:1], "--address", ray_head.dashboard, *args[1:]],
                          env=JOB_CLIENT_ENV, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def submit(ray_head, *command: str, wait: bool = True) -> tuple[str, str]:
    """`ray job submit` of `command` with the project as the working directory, followed to
    the end unless `wait` is false. Returns its submission id and the client's output."""
    output = job_client(ray_head, "submit", "--working-dir", str(ROOT),
                        *([] if wait else ["--no-wait"]), "--", *command)
    submission_id = re.search(r"raysubmit_\w+", output).group()
    if wait:
        assert f"Job '{submission_id}' succeeded" in output
    return submission_id, output


def test_a_training_job_and_a_sweep_job_run_side_by_side_and_are_tracked(ray_head, tmp_path):
    # The sweep goes first and is not waited for; its one trial (0.9 CPU) and the training
    # job's two workers (half a CPU each) share the 2-CPU test head.
    sweep_store = f"sqlite:///{tmp_path / 'sweep.db'}"
    (tmp_path / "base.yaml").write_text(
        "task: {name: adding, seq_len: 10}\nmodel: {cell: gru, hidden_size: 16}\n"
        "train: {steps: 20, eval_every: 10, checkpoint_every: 20}\n"
        "scaling: {num_workers: 1, cpus_per_worker: 0.9}\n"
        f"run: {{storage_path: {tmp_path / 'sweep-runs'}}}\n"
        f"tracking: {{experiment: jobs, uri: '{sweep_store}'}}\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: submitted\nbase: base.yaml\nspace:\n  optim.lr: {grid: [0.01]}\n"
                     "metric: val_loss\nmode: min\n")
    sweep_id, _ = submit(ray_head, "rnn-orch", "tune", str(sweep), wait=False)

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train_id, output = submit(
        ray_head, "rnn-orch", "train", "configs/adding.yaml", "run.name=submitted",
        "task.seq_len=10", "model.hidden_size=16", "train.steps=20", "train.eval_every=10",
        "train.checkpoint_every=20", "tracking.experiment=jobs", f"tracking.uri={store}",
        f"run.storage_path={tmp_path / 'runs'}")
    assert "rnn-orch: run submitted" in output  # the job's own logs, followed

    sweep_logs = job_client(ray_head, "logs", "--follow", sweep_id)
    assert "rnn-orch: sweep submitted:" in sweep_logs, sweep_logs
    for submission_id in (train_id, sweep_id):
        status = job_client(ray_head, "status", submission_id, timeout=60)
        assert f"Job '{submission_id}' succeeded" in status, status

    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("jobs").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["ray.submission_id"] == train_id
    assert 20 in {m.step for m in client.get_metric_history(run.info.run_id, "val_loss")}

    client = MlflowClient(sweep_store)
    runs = client.search_runs([client.get_experiment_by_name("jobs").experiment_id])
    [parent] = [run for run in runs if run.data.tags.get("rnn_orch.kind") == "sweep"]
    [trial] = [run for run in runs if run.data.tags.get("mlflow.parentRunId")
               == parent.info.run_id]
    assert parent.data.tags["ray.submission_id"] == sweep_id
    assert trial.info.status == "FINISHED"
    assert 20 in {m.step for m in client.get_metric_history(trial.info.run_id, "val_loss")}
