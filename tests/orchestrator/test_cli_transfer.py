"""`init.from` through the real CLI, without Ray: a checkpoint whose unpickling would run
code is refused (exit 2, one paragraph) and the code does not run; nothing is recorded."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import yaml

from orchestrator.cli import EXIT_BAD_INPUT, main


class Payload:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    marker, checkpoint = tmp_path / "pwned", tmp_path / "evil"
    checkpoint.mkdir()
    with open(checkpoint / "state.pt", "wb") as stream:
        pickle.dump({"spec": {}, "model": Payload(marker)}, stream)
    (tmp_path / "adding.yaml").write_text(yaml.safe_dump(
        {"task": {"seq_len": 10}, "init": {"from": str(checkpoint)}}))

    assert main(["train", "adding.yaml"]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert "refuses to load it" in error and str(checkpoint) in error
    assert "Traceback" not in error and error.count("\n") == 1
    assert not marker.exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_a_freeze_pattern_that_matches_nothing_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adding.yaml").write_text(yaml.safe_dump(
        {"task": {"seq_len": 10}, "init": {"freeze": ["encoder.*"]}}))
    assert main(["train", "adding.yaml"]) == EXIT_BAD_INPUT
    assert "init.freeze pattern 'encoder.*' matches no parameter" in capsys.readouterr().err
