"""A language model end to end, through the CLI on the test cluster (two worker processes
each) into a real MLflow store: it learns more than symbol frequencies on real text (a
few modules of Python's standard library), logs bits per character beside the unigram
and xz references and samples at each checkpoint, `rnn-orch generate` writes text from
the logged model, and a run stopped at a checkpoint and extended ends exactly where the
same run trained straight through ends (the carried state is part of the checkpoint)."""

from __future__ import annotations

import math
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.cli import main

pytestmark = pytest.mark.integration

RNN_ORCH = str(Path(sys.executable).parent / "rnn-orch")
CORPUS_BYTES = 200_000


def write_corpus(directory: Path) -> None:
    """The standard library's first modules by name, about CORPUS_BYTES of real code."""
    directory.mkdir()
    size = 0
    for module in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        if size >= CORPUS_BYTES:
            break
        (directory / module.name).write_bytes(module.read_bytes())
        size += module.stat().st_size


def write_config(workdir: Path) -> Path:
    config = {
        "task": {"name": "text", "path": "corpus", "bptt": 50, "val_fraction": 0.1,
                 "test_fraction": 0.1},
        "model": {"cell": "lstm", "hidden_size": 64, "embedding_size": 32,
                  "output_dropout": 0.1},  # dropout: the restored RNG matters too
        "optim": {"lr": 0.01},
        "train": {"steps": 60, "batch_size": 16, "eval_every": 20, "checkpoint_every": 20},
        "scaling": {"num_workers": 2},
        "tracking": {"experiment": "tests"},
    }
    path = workdir / "text.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(config: Path, env: dict, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([RNN_ORCH, "train", str(config), *overrides], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return output


def test_language_model_learns_generates_and_resumes_exactly(cli_env, workdir, capsys):
    write_corpus(workdir / "corpus")
    config = write_config(workdir)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    client.create_experiment("tests")  # before two processes would create the store at once
    straight = train(config, cli_env, "run.name=straight")
    finish(train(config, cli_env, "run.name=extended", "train.steps=40"))
    extended_output = finish(train(config, cli_env, "run.name=extended"))
    output = finish(straight)

    experiment = client.get_experiment_by_name("tests").experiment_id
    run, extended = (client.search_runs([experiment], f"tags.mlflow.runName = '{name}'")[0]
                     for name in ("straight", "extended"))
    metrics = run.data.metrics
    assert run.info.status == "FINISHED"
    assert metrics["val_bpc"] < metrics["val_bpc_unigram"] - 0.5, metrics
    assert metrics["train_bpc"] == pytest.approx(metrics["train_loss"] / math.log(2))
    assert metrics["test_bpc"] < metrics["bpc_unigram"] - 0.5, metrics
    assert 0 < metrics["bpc_xz"] < metrics["bpc_unigram"]
    assert "bits per character" in output and "does not beat the unigram" not in output
    samples = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert samples == {f"samples/step_{step:08d}.txt" for step in (20, 40, 60)}

    # Stopped after step 40 and extended to 60: the same figures as straight through.
    resumed = client.get_metric_history(extended.info.run_id, "resumed_from_step")
    assert [m.value for m in resumed] == [40] and "(resumed)" in extended_output
    for name in ("val_loss", "train_loss"):
        straight_values = {m.step: m.value for m in client.get_metric_history(
            run.info.run_id, name)}
        extended_values = {m.step: m.value for m in client.get_metric_history(
            extended.info.run_id, name)}
        assert extended_values.keys() == straight_values.keys()
        for step in sorted(straight_values):
            assert extended_values[step] == pytest.approx(straight_values[step], rel=1e-6), (
                name, step)

    model_uri = run.data.tags["rnn_orch.model_uri"]
    assert main(["generate", model_uri, "--prime", "def ", "--length", "80",
                 "--temperature", "0.5"]) == 0
    printed = "\n" + capsys.readouterr().out  # Ray's own warnings may come before the text
    assert "\ndef " in printed and len(printed.split("\ndef ", 1)[1]) >= 80
