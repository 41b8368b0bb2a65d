"""Bad forecasting input through the real CLI: exit 2, one paragraph that names the file
and column, no traceback, and nothing recorded (no MLflow store, no run directory).
The table is checked before Ray starts, so these tests need no cluster."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from orchestrator.cli import EXIT_BAD_INPUT, main

TASK = {"name": "timeseries", "path": "table.csv", "time_column": "time",
        "targets": ["load"], "input_len": 8, "horizon": 4}


def hourly(steps: int = 200) -> pd.DataFrame:
    times = pd.date_range("2024-01-01", periods=steps, freq="h")
    return pd.DataFrame({"time": times.strftime("%Y-%m-%d %H:%M:%S"),
                         "load": range(steps), "site": "a"})


def broken_tables():
    duplicate = hourly()
    duplicate.loc[5, "time"] = duplicate.loc[4, "time"]
    gap = hourly().drop(index=[50])
    text = hourly().astype({"load": object})
    text.loc[7, "load"] = "high"
    backwards = hourly()
    backwards.loc[[10, 11], "time"] = backwards.loc[[11, 10], "time"].to_numpy()
    return [
        (hourly().rename(columns={"load": "Load"}), {}, "column `load` is missing"),
        (duplicate, {}, "2024-01-01 04:00:00 twice"),
        (gap, {"missing": "refuse"}, "no row at 2024-01-03 02:00:00"),
        (text, {}, "column `load` holds 'high'; expected numbers"),
        (backwards, {}, "goes back in time"),
        (hourly(20), {}, "its train split only 14; expected at least 28"),
        (hourly().assign(site=[f"s{i}" for i in range(200)]), {"series_id": "site"},
         "a single step"),
        (hourly(), {"horizon": 0}, "task.horizon must be > 0"),
    ]


@pytest.mark.parametrize(("table", "keys", "message"), broken_tables())
def test_bad_table_exits_2_with_one_paragraph_and_records_nothing(
        tmp_path, monkeypatch, capsys, table, keys, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    table.to_csv("table.csv", index=False)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"task": {**TASK, **keys}}))

    assert main(["train", "config.yaml"]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error and error.count("\n") == 1
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()
