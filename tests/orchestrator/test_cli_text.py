"""Language models through the real CLI, without Ray: bad text exits 2 with one paragraph
and records nothing (the text is read before Ray starts); `generate` from a checkpoint;
the python_stdlib corpus; the config and sweep checks of task.name=text."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from models import ModelSpec, build_model
from orchestrator import checkpoints
from orchestrator.cli import EXIT_BAD_INPUT, EXIT_OK, main
from orchestrator.config import ConfigError, load_config
from orchestrator.sweep_file import SweepError, load_sweep
from pipelines.text import DESCRIPTION_FILE, TextLayout, Vocabulary
from pipelines.text_corpus import write_corpus


def bad_texts():
    return [
        ({"a.txt": b""}, {}, "are empty"),
        ({}, {"path": "nowhere"}, "no such file or directory"),
        ({"a.txt": b"abc" * 300 + b"xyz"}, {"vocab": "chars"}, "never uses ('x', 'y', 'z')"),
        ({"a.txt": b"\xff\xfe" * 50}, {"vocab": "chars"}, "not UTF-8 text"),
        ({"a.txt": b"abc" * 300}, {"bptt": 50}, "too few for train.batch_size=64 streams"),
    ]


@pytest.mark.parametrize(("files", "keys", "message"), bad_texts())
def test_bad_text_exits_2_with_one_paragraph_and_records_nothing(
        tmp_path, monkeypatch, capsys, files, keys, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "corpus").mkdir()
    for name, content in files.items():
        (tmp_path / "corpus" / name).write_bytes(content)
    task = {"name": "text", "path": "corpus", **keys}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"task": task}))

    assert main(["train", "config.yaml"]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error and error.count("\n") == 1
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_generate_from_a_checkpoint_directory(tmp_path, capsys):
    vocab = Vocabulary("chars", "ab\n")
    spec = ModelSpec(cell="gru", input_size=4, hidden_size=8, num_layers=1, dropout=0.0,
                     head="per_step", output_size=3, vocab_size=3)
    model = build_model(spec)
    checkpoints.save(tmp_path, model=model, optimizer=torch.optim.SGD(model.parameters()),
                     step=1, spec=spec, rng_states=[], parts={}, config_yaml="{}",
                     files={DESCRIPTION_FILE: TextLayout(vocab, (), {}).to_json()})
    arguments = ["generate", str(tmp_path), "--prime", "ab", "--length", "30", "--seed", "4"]
    assert main(arguments) == EXIT_OK
    first = capsys.readouterr().out
    assert first.startswith("ab") and len(first) == 2 + 30 + 1 and set(first) <= set("ab\n")
    assert main(arguments) == EXIT_OK and capsys.readouterr().out == first

    assert main(["generate", str(tmp_path), "--prime", "abc"]) == EXIT_BAD_INPUT
    assert "the prime: 1 character(s)" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "--temperature", "0"]) == EXIT_BAD_INPUT
    assert "--temperature > 0" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "nothing")]) == EXIT_BAD_INPUT
    assert f"no {DESCRIPTION_FILE} there" in capsys.readouterr().err


def test_the_python_stdlib_corpus_copies_the_modules_and_records_the_version(tmp_path):
    stdlib = tmp_path / "lib"
    (stdlib / "package").mkdir(parents=True)
    (stdlib / "b.py").write_text("import a\n")
    (stdlib / "a.py").write_text("x = 1\n")
    (stdlib / "package" / "c.py").write_text("never copied\n")
    modules = write_corpus("python_stdlib", tmp_path / "out", stdlib)
    assert sorted(path.name for path in modules.iterdir()) == ["a.py", "b.py"]
    source = json.loads((tmp_path / "out" / "SOURCE.json").read_text())
    assert source["files"] == 2 and source["bytes"] == 15 and source["python"].count(".") == 2
    with pytest.raises(Exception, match="already exists and is not empty"):
        write_corpus("python_stdlib", tmp_path / "out", stdlib)


def test_text_needs_a_path_and_takes_no_curriculum(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"task": {"name": "text"}}))
    with pytest.raises(ConfigError, match="task.path is empty but task.name is 'text'"):
        load_config(path)
    with pytest.raises(ConfigError, match="chunks of text"):
        load_config(path, ["task.path=x", "curriculum.schedule=linear"])
    with pytest.raises(ConfigError, match="task.vocab"):
        load_config(path, ["task.path=x", "task.vocab=words"])
    assert load_config(path, ["task.path=x"]).task.bptt == 100


def test_a_sweep_of_a_text_base_is_refused(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"task": {"name": "text",
                                                                 "path": "x"}}))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(
        {"base": "base.yaml", "search": {"optim.lr": {"choice": [0.1, 0.01]}}}))
    with pytest.raises(SweepError, match="task.name=text cannot be swept yet"):
        load_sweep(tmp_path / "sweep.yaml")


def test_an_unknown_dataset_name_lists_every_kind_fetch_knows(tmp_path, capsys):
    assert main(["data", "fetch", "nothing", "--out", str(tmp_path / "x")]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert all(name in error for name in ("beijing_pm", "japanese_vowels", "python_stdlib"))
