"""A Ray cluster of two nodes on this one machine: the suite's head and a node joined to it
with `ray start --address`. Node-local storage is refused for a run that trains across
nodes, and a run that loses the node hosting one of its workers is rescheduled when a
replacement node joins, resumes from storage both nodes reach, and finishes in the same
MLflow run. An elastic run starts with the one worker the head has room for and grows to
two workers when a node joins, in the same MLflow run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient

from tests.integration.test_resume_and_restart import wait_for_checkpoint

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
CONFIG = str(Path(__file__).parents[2] / "configs" / "adding.yaml")


def alive_nodes() -> int:
    return sum(1 for node in ray.nodes() if node["Alive"])


def wait_for_nodes(count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while alive_nodes() != count:
        assert time.monotonic() < deadline, f"the cluster did not reach {count} nodes"
        time.sleep(0.5)


@pytest.fixture
def nodes(ray_head):
    """Starts worker nodes of 2 CPUs each (`start()`), whose every process `lose(node)`
    kills at once, as a lost machine would; every one is gone at the end."""
    started: list[subprocess.Popen] = []

    class Nodes:
        def start(self) -> subprocess.Popen:
            expected = alive_nodes() + 1
            node = subprocess.Popen(
                [BIN / "ray", "start", f"--address={ray_head.address}",
                 "--node-ip-address=127.0.0.1", "--num-cpus=2", "--block",
                 "--disable-usage-stats"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            started.append(node)
            wait_for_nodes(expected)
            return node

        def lose(self, node: subprocess.Popen) -> None:
            """Kill every process of `node` and wait until the head has declared it dead."""
            expected = alive_nodes() - 1
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()
            wait_for_nodes(expected)

    yield Nodes()
    for node in started:
        if node.poll() is None:
            node.terminate()
            node.wait()
    wait_for_nodes(1)


def test_node_local_storage_is_refused_and_a_lost_node_is_survived(nodes, mlflow_server,
                                                                   cli_env, workdir):
    mlflow_server.start()
    lost = nodes.start()
    refused = subprocess.run(  # the default storage, ./runs, is this node's own disk
        [BIN / "rnn-orch", "train", CONFIG, "train.steps=20", "tracking.experiment=tests",
         f"tracking.uri={mlflow_server.uri}"],
        env=cli_env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "run.storage_path" in refused.stderr and "file:///" in refused.stderr
    assert "Traceback" not in refused.stderr and not (workdir / "runs").exists()
    client = MlflowClient(mlflow_server.uri)
    assert client.get_experiment_by_name("tests") is None  # nothing recorded

    run_dir = workdir / "runs" / "lose-node"
    # 1.5 CPUs per worker: the head (2 CPUs) holds one worker, the other node the other.
    # The cluster's controller registers a checkpoint seconds after it is written, while
    # this model trains about 40 steps a second: 600 steps keep the run going well past
    # the moment the loss of the node is noticed.
    run = subprocess.Popen(
        [BIN / "rnn-orch", "train", CONFIG, "run.name=lose-node", "task.seq_len=20",
         "model.hidden_size=16", "train.steps=600", "train.eval_every=40",
         "train.checkpoint_every=40", "scaling.cpus_per_worker=1.5", "run.max_failures=2",
         f"run.storage_path={(workdir / 'runs').as_uri()}", "tracking.experiment=tests",
         f"tracking.uri={mlflow_server.uri}"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_checkpoint(run_dir, run, timeout_s=180)
    nodes.lose(lost)
    nodes.start()  # the replacement an autoscaler would start

    output, _ = run.communicate(timeout=400)
    assert run.returncode == 0, output
    [found] = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    run_id = found.info.run_id
    resumed = [m.value for m in client.get_metric_history(run_id, "resumed_from_step")]
    assert len(resumed) == 1 and resumed[0] > 0 and resumed[0] % 40 == 0, output
    assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == list(
        range(1, 601))
    assert client.get_run(run_id).info.status == "FINISHED"


def test_an_elastic_run_starts_small_and_grows_onto_a_node_that_joins(nodes, mlflow_server,
                                                                       cli_env, workdir):
    mlflow_server.start()
    # 1.5 CPUs per worker: the head (2 CPUs) has room for one worker until a node joins.
    # The node takes seconds to join and Ray Train seconds more to decide and restart, so
    # the run must still be going then. This model trains about 100 steps a second on 2
    # cores; one run grew only at step 2500, about 25 s in, and 8000 steps of a model of
    # 16 units on 20 steps once ended in 17 s of training, before the run grew.
    args = [BIN / "rnn-orch", "train", CONFIG, "run.name=grow", "task.seq_len=40",
            "model.hidden_size=64", "train.steps=8000", "train.eval_every=500",
            "train.checkpoint_every=500", "scaling.min_workers=1", "scaling.num_workers=2",
            "scaling.cpus_per_worker=1.5", "scaling.resize_every_s=1",
            "tracking.experiment=tests", f"tracking.uri={mlflow_server.uri}"]
    refused = subprocess.run(args, env=cli_env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "as an elastic run grows" in refused.stderr and not (workdir / "runs").exists()

    run_dir = workdir / "runs" / "grow"
    run = subprocess.Popen([*args, f"run.storage_path={(workdir / 'runs').as_uri()}"],
                           env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    wait_for_checkpoint(run_dir, run, timeout_s=180)
    nodes.start()

    output, _ = run.communicate(timeout=400)
    assert run.returncode == 0, output
    assert "1-2 workers" in output
    client = MlflowClient(mlflow_server.uri)
    [found] = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    run_id = found.info.run_id
    workers = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "workers"))
    assert [count for _, count in workers] == [1, 2], output
    resumed = [m.value for m in client.get_metric_history(run_id, "resumed_from_step")]
    assert resumed == [workers[1][0]] and resumed[0] % 500 == 0
    assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == list(
        range(1, 8001))
    assert client.get_run(run_id).info.status == "FINISHED"
