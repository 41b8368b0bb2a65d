"""The CLI in a subprocess, joined to the test cluster: a run stopped after a checkpoint
and started again, or whose worker dies, continues from that checkpoint in the same
MLflow run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration

RNN_ORCH = str(Path(sys.executable).parent / "rnn-orch")
CONFIG = str(Path(__file__).parents[2] / "configs" / "adding.yaml")
ARGS = [
    "run.name=resume-me", "task.seq_len=20", "model.hidden_size=16", "train.steps=3000",
    "train.eval_every=20", "train.checkpoint_every=20", "tracking.experiment=tests",
]


def wait_for_checkpoint(run_dir: Path, process: subprocess.Popen, timeout_s: float) -> None:
    """Until Ray has registered a checkpoint (its snapshot file lists the run's checkpoints)."""
    deadline = time.monotonic() + timeout_s
    while not (run_dir / "checkpoint_manager_snapshot.json").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.5)


def only_run(workdir: Path):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 1
    return client, runs[0].info.run_id


# A curriculum whose level rises by 2 at every validation (the threshold always passes),
# so a resume that forgot its level would start again at 4.
CURRICULUM = ["curriculum.schedule=naive", "curriculum.start=4", "curriculum.increment=2",
              "curriculum.threshold=10"]


def test_stopped_run_resumes_from_its_checkpoint_in_the_same_mlflow_run(cli_env, workdir):
    args = [*ARGS, *CURRICULUM]
    first = subprocess.Popen([RNN_ORCH, "train", CONFIG, *args], env=cli_env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_checkpoint(workdir / "runs" / "resume-me", first, timeout_s=180)
    first.send_signal(signal.SIGINT)
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 130 and "interrupted" in output, output
    last_checkpoint = max(int(p.name.split("_")[1]) for p in (workdir / "runs" / "resume-me")
                          .glob("checkpoint_0*"))
    assert 0 < last_checkpoint < 3000

    end = last_checkpoint + 40
    second = subprocess.run([RNN_ORCH, "train", CONFIG, *args, f"train.steps={end}"],
                            env=cli_env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "(resumed)" in second.stdout

    client, run_id = only_run(workdir)
    resumed = [m.value for m in client.get_metric_history(run_id, "resumed_from_step")]
    assert len(resumed) == 1 and 0 < resumed[0] <= last_checkpoint and resumed[0] % 20 == 0
    start = int(resumed[0])
    levels = {m.step: m.value for m in client.get_metric_history(run_id, "curriculum_level")}
    assert levels[start + 1] == min(20, 4 + 2 * (start // 20))  # the level it had reached
    val_steps = [m.step for m in client.get_metric_history(run_id, "val_loss")]
    assert end in val_steps and len(val_steps) == len(set(val_steps))
    assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == list(
        range(1, end + 1))
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize("keep_rows_mb", [256, 0], ids=["rows-kept", "rows-streamed"])
def test_killed_worker_restarts_from_the_checkpoint_in_the_same_mlflow_run(cli_env, workdir,
                                                                          keep_rows_mb):
    """A Parquet run read through Ray Data, shuffled every epoch and bucketed: an epoch is
    32 steps, so the restart continues from a checkpoint in the middle of one. Each worker
    keeps its rows in memory (the default for data this small) or reads every epoch
    through Ray Data."""
    subprocess.run([RNN_ORCH, "data", "make", "adding", "--rows", "4096", "--val-rows",
                    "256", "--seq-len", "20", "--out", "rows"], env=cli_env, check=True)
    args = [*ARGS, "task.name=parquet", "task.path=rows", "task.bucket_batches=4",
            "train.steps=120", "run.max_failures=1", "scaling.cpus_per_worker=0.25",
            f"task.keep_rows_mb={keep_rows_mb}"]
    # The same run never interrupted, for the exact comparison. The two runs take half a
    # CPU each on the 2-CPU test cluster, so they train side by side and leave a CPU to
    # Ray Data's read tasks. The store is created first: two processes creating one SQLite
    # store at once race in MLflow's migrations.
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    client.create_experiment("tests")
    straight = subprocess.Popen([RNN_ORCH, "train", CONFIG, *args, "run.name=straight"],
                                env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    run = subprocess.Popen([RNN_ORCH, "train", CONFIG, *args, "run.name=restart-me"],
                           env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    wait_for_checkpoint(workdir / "runs" / "restart-me", run, timeout_s=180)
    workers = workers_of("restart-me")
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, output
    output, _ = straight.communicate(timeout=300)
    assert straight.returncode == 0, output

    run_id, reference_id = (
        client.search_runs([client.get_experiment_by_name("tests").experiment_id],
                           filter_string=f"tags.`rnn_orch.run_name` = '{name}'")[0].info.run_id
        for name in ("restart-me", "straight"))
    resumed = [m.value for m in client.get_metric_history(run_id, "resumed_from_step")]
    assert len(resumed) == 1 and resumed[0] > 0 and resumed[0] % 32 != 0  # mid-epoch
    # Steps the dead attempt logged after its checkpoint are trained again, logged once.
    assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == list(
        range(1, 121))
    assert client.get_run(run_id).info.status == "FINISHED"

    # Exact: the uninterrupted run validates to the same losses after the restart, so
    # the restarted workers read the same batches from where the checkpoint stood.
    restarted, uninterrupted = (
        {m.step: m.value for m in client.get_metric_history(run, "val_loss")}
        for run in (run_id, reference_id))
    assert restarted.keys() == uninterrupted.keys() and 120 in restarted
    for step in restarted:
        assert restarted[step] == pytest.approx(uninterrupted[step], rel=1e-6, abs=1e-9), step


def workers_of(run_name: str) -> list[int]:
    """The pids of a run's Ray Train workers: Ray Train runs each in a working directory
    under the run's name. A process that ends meanwhile is no one's."""
    pids = subprocess.run(["pgrep", "-f", "ray::RayTrainWorker"], capture_output=True,
                          text=True).stdout.split()
    return [int(pid) for pid in pids if f"/{run_name}/" in f"{working_directory(pid)}/"]


def working_directory(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except FileNotFoundError:
        return ""


def test_bad_data_found_by_a_worker_exits_2_naming_the_key(cli_env, workdir):
    subprocess.run([RNN_ORCH, "data", "make", "adding", "--rows", "8", "--val-rows", "8",
                    "--seq-len", "10", "--out", "tiny"], env=cli_env, check=True)
    result = subprocess.run(
        [RNN_ORCH, "train", CONFIG, "task.name=parquet", "task.path=tiny", "train.steps=20",
         "train.eval_every=10", "train.checkpoint_every=10", "tracking.experiment=tests"],
        env=cli_env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "train.batch_size" in result.stderr and "Traceback" not in result.stderr
    client, run_id = only_run(workdir)
    assert client.get_run(run_id).info.status == "FAILED"
