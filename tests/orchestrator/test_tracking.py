"""MLflow helpers against a real SQLite store in a temporary directory (no server, no Ray)."""

from __future__ import annotations

import pytest

from orchestrator.tracking import DEFAULT_URI, resolve_uri, ui_command

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
