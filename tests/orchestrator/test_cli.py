"""The real command line, called in-process. Bad input must answer with exit code 2 and one
readable paragraph, before anything is started or recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import EXIT_BAD_INPUT, EXIT_OK, main
from orchestrator.config import describe_keys

ROOT = Path(__file__).resolve().parents[2]


def assert_bad_input(code: int, capsys, *names: str) -> str:
    """Exit code 2, one paragraph on stderr naming `names`, and no traceback."""
    out, err = capsys.readouterr()
    assert code == EXIT_BAD_INPUT
    assert err.startswith("rnn-orch: error: ")
    assert err.strip().count("\n") == 0, err
    assert "Traceback" not in out + err
    for name in names:
        assert name in err
    return err


def assert_nothing_recorded(directory: Path) -> None:
    assert not (directory / "mlflow.db").exists()
    assert not (directory / "mlruns").exists()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_train_missing_config(workdir, capsys):
    code = main(["train", "missing.yaml"])
    assert_bad_input(code, capsys, "missing.yaml", "does not exist")
    assert_nothing_recorded(workdir)


def test_train_unknown_key(workdir, capsys):
    (workdir / "bad.yaml").write_text("model: {cel: lstm}\n")
    code = main(["train", "bad.yaml"])
    assert_bad_input(code, capsys, "model.cel", "model.cell")
    assert_nothing_recorded(workdir)


def test_train_bad_override(workdir, capsys):
    code = main(["train", str(ROOT / "configs" / "adding.yaml"), "model.cell=lsmt"])
    assert_bad_input(code, capsys, "model.cell", "lstm", "gru")
    assert_nothing_recorded(workdir)


def test_train_malformed_override(workdir, capsys):
    code = main(["train", str(ROOT / "configs" / "adding.yaml"), "train.steps"])
    assert_bad_input(code, capsys, "train.steps", "key=value")
    assert_nothing_recorded(workdir)


def test_bad_config_answers_before_ray_is_imported(workdir, capsys, monkeypatch):
    """Importing the driver (Ray, MLflow) takes seconds; bad input should not wait for it."""
    import sys

    import orchestrator

    monkeypatch.delattr(orchestrator, "driver", raising=False)
    monkeypatch.setitem(sys.modules, "orchestrator.driver", None)  # importing it fails
    (workdir / "bad.yaml").write_text("model: {cel: lstm}\n")
    assert_bad_input(main(["train", "bad.yaml"]), capsys, "model.cel")


def test_train_help_lists_every_config_key(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for key, _, meaning in describe_keys():
        assert key in out
        assert meaning.split()[0] in out


def test_data_make_unknown_task(workdir, capsys):
    code = main(["data", "make", "nosuch", "--rows", "8", "--out", str(workdir / "out")])
    assert_bad_input(code, capsys, "'nosuch'", "adding", "copy")
    assert not (workdir / "out").exists()


def test_data_make_writes_train_and_val(workdir, capsys):
    out = workdir / "adding"
    code = main(["data", "make", "adding", "--rows", "32", "--val-rows", "16",
                 "--seq-len", "10", "--out", str(out)])
    assert code == EXIT_OK
    assert "task.name=parquet" in capsys.readouterr().out
    for split in ("train", "val"):
        assert sorted((out / split).glob("*.parquet")), f"no Parquet files in {split}/"

    import pyarrow.parquet as pq

    train = pq.read_table(out / "train")
    val = pq.read_table(out / "val")
    assert (train.num_rows, val.num_rows) == (32, 16)
    assert len(train.column("inputs")[0]) == 10


def test_data_make_refuses_a_non_empty_directory(workdir, capsys):
    out = workdir / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["data", "make", "adding", "--rows", "8", "--out", str(out)])
    assert_bad_input(code, capsys, str(out))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_data_make_rejects_zero_rows(workdir, capsys):
    code = main(["data", "make", "copy", "--rows", "0", "--out", str(workdir / "x")])
    assert_bad_input(code, capsys, "rows")


def test_sync_of_a_missing_run_directory_names_it(workdir, capsys):
    code = main(["sync", "runs/never-ran"])
    assert_bad_input(code, capsys, "runs/never-ran", "<run.storage_path>/<run.name>")


def test_sync_with_nothing_kept_sends_nothing(workdir, capsys):
    (workdir / "runs" / "quiet").mkdir(parents=True)
    assert main(["sync", "runs/quiet"]) == EXIT_OK
    assert "sent 0 kept entries" in capsys.readouterr().out


def test_sync_while_the_server_is_still_away_keeps_everything(workdir, capsys):
    import socket

    from orchestrator.cli import EXIT_FAILED
    from orchestrator.spool import SPOOL_DIR, Spool

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{sock.getsockname()[1]}"
    spool = Spool(str(workdir / "runs" / "away" / SPOOL_DIR))
    spool.add_batch(gone, "abc", [("train_loss", 0.5, 0, 1)], [])
    code = main(["sync", "runs/away"])
    _, err = capsys.readouterr()
    assert code == EXIT_FAILED and "still cannot be reached" in err and "Traceback" not in err
    assert len(spool.entries()) == 1
