"""Forecasting end to end: a two-series table trained on a real Ray cluster (two worker
processes) into a real MLflow store, forecasts written by `rnn-orch predict`, and the same
forecasts answered over HTTP by a real `mlflow models serve` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator import driver
from orchestrator.config import load_config

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
HORIZON = 6


def write_table(path: Path, steps: int = 900) -> pd.DataFrame:
    """Two hourly series, a daily cycle plus a covariate, noise, a few missing values,
    written as a directory of Parquet shards."""
    rng = np.random.default_rng(0)
    frames = []
    for station, level, amplitude in (("north", 50.0, 10.0), ("south", 20.0, 4.0)):
        hours = np.arange(steps)
        temp = 10 + 5 * np.sin(2 * np.pi * hours / 24 + 1) + rng.normal(0, 0.3, steps)
        load = (level + amplitude * np.sin(2 * np.pi * hours / 24) + 0.3 * temp
                + rng.normal(0, 0.5, steps))
        times = pd.date_range("2024-01-01", periods=steps, freq="h")
        frames.append(pd.DataFrame({"time": times.strftime("%Y-%m-%d %H:%M:%S"),
                                    "station": station, "load": load, "temp": temp}))
    table = pd.concat(frames, ignore_index=True)
    table.loc[[100, 1300], "load"] = np.nan  # interpolated (task.missing default)
    path.mkdir()  # one Parquet shard per station: prepared in two Ray tasks
    for station, rows in table.groupby("station"):
        rows.to_parquet(path / f"{station}.parquet", index=False)
    return table


def write_config(workdir: Path) -> Path:
    config = {
        "task": {"name": "timeseries", "path": "load", "time_column": "time",
                 "targets": ["load"], "covariates": ["temp"], "series_id": "station",
                 "input_len": 24, "horizon": HORIZON, "quantiles": [0.1, 0.5, 0.9]},
        "model": {"cell": "gru", "hidden_size": 32},
        "optim": {"lr": 0.01},
        "train": {"steps": 150, "batch_size": 32, "eval_every": 50, "checkpoint_every": 150},
        "scaling": {"num_workers": 2},
        "run": {"name": "forecast"},
        "tracking": {"experiment": "tests"},
    }
    path = workdir / "forecast.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_forecaster_trains_beats_naive_forecasts_predicts_and_serves(ray_address, workdir,
                                                                    cli_env):
    table = write_table(workdir / "load")
    config = driver.resolve(load_config(write_config(workdir)), {})
    outcome = driver.train(config)

    client = MlflowClient(config.tracking.uri)
    run = client.get_run(outcome.run_id)
    metrics = run.data.metrics
    assert run.info.status == "FINISHED"
    for name in ("test_mae", "test_rmse", "test_mase", "test_coverage",
                 "test_mae_persistence", "test_mae_seasonal_naive", "test_mae_mean",
                 "val_mae", "val_mase_persistence"):
        assert np.isfinite(metrics[name]), name
    # learned: better than repeating the last value and than the training mean
    assert metrics["test_mae"] < metrics["test_mae_persistence"]
    assert metrics["test_mae"] < metrics["test_mae_mean"]
    assert 0.3 < metrics["test_coverage"] <= 1.0
    assert [m.step for m in client.get_metric_history(outcome.run_id, "val_mae")] == [50, 100,
                                                                                     150]
    assert outcome.final["test_mae"] == pytest.approx(metrics["test_mae"])
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id, "plots")}
    assert "plots/test_forecast.png" in artifacts

    # predict from history that stops 12 steps before the end: forecasts in table units
    recent = table.groupby("station").apply(lambda rows: rows.iloc[-60:-12],
                                            include_groups=False).reset_index(level=0)
    recent.to_csv(workdir / "recent.csv", index=False)
    model_uri = f"runs:/{outcome.run_id}/model"
    env = dict(cli_env, MLFLOW_TRACKING_URI=config.tracking.uri)
    done = subprocess.run([BIN / "rnn-orch", "predict", model_uri, "recent.csv",
                           "--out", "forecasts.csv"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    forecasts = pd.read_csv(workdir / "forecasts.csv")
    assert list(forecasts.columns) == ["station", "time", "load", "load_q0.1", "load_q0.9"]
    assert len(forecasts) == 2 * HORIZON
    north = forecasts[forecasts.station == "north"]
    expected_times = pd.date_range(pd.Timestamp(recent[recent.station == "north"].time.iloc[-1])
                                   + pd.Timedelta("1h"), periods=HORIZON, freq="h")
    assert list(pd.to_datetime(north.time)) == list(expected_times)
    actual = table[table.station == "north"].load.iloc[-12:-12 + HORIZON].to_numpy()
    assert np.mean(np.abs(north.load.to_numpy() - actual)) < 4.0  # noise 0.5, amplitude 10
    assert (north["load_q0.1"] <= north.load).all() and (north.load <= north["load_q0.9"]).all()

    served = serve_and_ask(model_uri, env, recent)
    assert [row["station"] for row in served] == list(forecasts.station)
    assert np.allclose([row["load"] for row in served], forecasts.load, rtol=1e-5)


def serve_and_ask(model_uri: str, env: dict, recent: pd.DataFrame) -> list[dict]:
    """Start `mlflow models serve` on a free port, POST the history, stop the server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [BIN / "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        env=dict(env, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server)
        body = json.dumps({"dataframe_split": json.loads(
            recent.to_json(orient="split", index=False))}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def wait_until_up(url: str, server: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited: {server.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"mlflow models serve did not answer {url} in {seconds} s")


def test_a_series_split_over_two_shards_is_refused_naming_it(cli_env, workdir):
    table = write_table(workdir / "load")
    north = table[table.station == "north"]
    north.iloc[:400].to_parquet(workdir / "load" / "north.parquet", index=False)
    north.iloc[400:].to_parquet(workdir / "load" / "north-rest.parquet", index=False)
    done = subprocess.run([BIN / "rnn-orch", "train", write_config(workdir)], env=cli_env,
                          capture_output=True, text=True, cwd=workdir)
    assert done.returncode == 2, done.stderr
    assert "series 'north' (station) appears in two Parquet shards" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (workdir / "mlflow.db").exists()
    assert not (workdir / "runs" / "forecast" / "prepared_data").exists()
