"""Shared fixtures. Integration tests share one real Ray cluster for the whole session,
started with `ray start --head` on 127.0.0.1 so that CLI subprocesses join it through
RAY_ADDRESS exactly as they do under `ray job submit`. Token auth is on, stated on both
sides (RAY_AUTH_MODE=token): the head writes ~/.ray/auth_token if there is none and every
client on this machine reads it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

BIN = Path(sys.executable).parent
# Set before anything imports ray (Ray reads it once, at import); inherited by the head
# and by CLI subprocesses.
os.environ["RAY_AUTH_MODE"] = "token"
# Ray Train's controller polls its workers every 0.5 s, as on the local Ray rnn-orch
# starts (driver.start_ray), rather than Ray's 2 s: the suite joins a head through
# RAY_ADDRESS, where rnn-orch keeps Ray's defaults. Ray Train hands the variable from the
# driver to its controller.
os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class RayHead:
    address: str  # host:port, for ray.init and RAY_ADDRESS
    dashboard: str  # http://host:port, for `ray job submit --address`


@pytest.fixture(scope="session")
def ray_head():
    """A 2-CPU Ray head on 127.0.0.1 with this process connected, stopped at the end.

    The head runs with this virtualenv's bin/ first on PATH, as an activated environment
    would: a job submitted to it finds `rnn-orch` there."""
    import ray

    port, dashboard_port = _free_port(), _free_port()
    # The dashboard stays on: Ray Train's placement-group cleaner asks its state API
    # whether a stopped trial's controller is gone; without it a sweep's early-stopped
    # trials would hold their workers' CPUs for ever. It also serves `ray job submit`.
    # Like the local Ray that `rnn-orch` starts on a laptop, the head runs no preemption
    # watcher (see driver.start_ray). A node whose raylet is gone is declared dead after 3
    # failed health checks a second apart rather than 5 three seconds apart, so the
    # lost-node test waits seconds, not most of a minute; a live but busy raylet still
    # has Ray's full timeout to answer each check.
    subprocess.run(
        [BIN / "ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         f"--dashboard-port={dashboard_port}", "--num-cpus=2", "--disable-usage-stats"],
        check=True, capture_output=True,
        env=dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                 RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="0", RAY_health_check_period_ms="1000",
                 RAY_health_check_failure_threshold="3"),
    )
    head = RayHead(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}")
    ray.init(address=head.address, log_to_driver=False)
    yield head
    ray.shutdown()
    subprocess.run([BIN / "ray", "stop", "--force"], capture_output=True)


@pytest.fixture(scope="session")
def ray_address(ray_head):
    return ray_head.address


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory: MLflow's default store and artifacts land in it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def cli_env(ray_address, workdir):
    """Environment for `rnn-orch` subprocesses: join the test cluster, default MLflow store."""
    env = dict(os.environ, RAY_ADDRESS=ray_address)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


class MlflowServer:
    """`mlflow server` with a SQLite store and proxied artifacts under `root`; it can be
    killed and started again on the same port and store."""

    def __init__(self, root: Path):
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.root = root
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root}/server.db",
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, "mlflow server exited"
            try:
                if requests.get(f"{self.uri}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer"
            time.sleep(0.5)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def mlflow_server(tmp_path):
    """A tracking server the test starts (and may kill and start again); killed at the end."""
    server = MlflowServer(tmp_path / "mlflow-server")
    server.root.mkdir()
    yield server
    server.kill()


@pytest.fixture
def alone_in_a_group(tmp_path, monkeypatch):
    """A context manager: its block runs in a gloo process group of one, where any
    collective fails the test. A single Ray Train worker runs in such a group, and must
    not pay a round trip per step in it."""
    import torch.distributed as dist

    def refuse(*args, **kwargs):
        raise AssertionError("a collective in a process group of one")

    @contextlib.contextmanager
    def group():
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                                world_size=1)
        try:
            with monkeypatch.context() as patch:
                for collective in ("all_reduce", "all_gather", "broadcast"):
                    patch.setattr(dist, collective, refuse)
                yield
        finally:
            dist.destroy_process_group()

    return group
