"""`rnn-orch tune` in a subprocess joined to the test cluster: trials are real Ray Train
runs inside real Tune trials, recorded in a real MLflow store."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.checkpoints import weights_digest

pytestmark = pytest.mark.integration

RNN_ORCH = str(Path(sys.executable).parent / "rnn-orch")
BASE = """
task: {name: adding, seq_len: 20, val_size: 256}
model: {cell: lstm, hidden_size: 16}
optim: {lr: 0.01}
train: {steps: 100, batch_size: 32, eval_every: 25, checkpoint_every: 25}
scaling: {num_workers: 1, cpus_per_worker: 0.9}
tracking: {experiment: tests}
"""


def write_sweep(workdir: Path, text: str) -> str:
    (workdir / "base.yaml").write_text(BASE)
    path = workdir / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def tune(args: list[str], env: dict, timeout: int = 400) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([RNN_ORCH, "tune", *args], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"rnn-orch tune ran over {timeout} s; its output ended with:\n"
                    f"{(exc.stdout or b'').decode()[-3000:]}{(exc.stderr or b'').decode()[-3000:]}")


def by_trial(client: MlflowClient, children, key: str) -> dict[str, dict[int, float]]:
    """{trial id: {step: value}} of one metric of every trial."""
    return {child.data.tags["rnn_orch.trial_id"]: {m.step: m.value for m in
                                                   client.get_metric_history(child.info.run_id,
                                                                             key)}
            for child in children}


def runs_of(workdir: Path):
    """(client, parent run, child runs) of the one sweep in the store."""
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    parents = [r for r in runs if r.data.tags.get("rnn_orch.kind") == "sweep"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")
                == parents[0].info.run_id]
    return client, parents[0], children


def test_asha_sweep_stops_bad_trials_and_registers_the_best_model(cli_env, workdir):
    # Two workers per trial: each takes half a CPU, so one trial fits at a time on the
    # 2-CPU test cluster and the trials reach ASHA's rungs in the grid's order. A learning
    # rate of 1e-5 learns nothing in 25 steps, so that trial falls behind at the first rung.
    sweep = write_sweep(workdir, """
        name: rates
        base: base.yaml
        fixed: {scaling.num_workers: 2, scaling.cpus_per_worker: 0.0, model.cell: gru}
        space:
          optim.lr: {grid: [0.01, 0.00001]}
        metric: val_loss
        mode: min
        scheduler: {name: asha, grace_period: 25, reduction_factor: 2}
        register_model: tiny-adding
        """)
    result = tune([sweep], cli_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "registered: tiny-adding version 1" in result.stdout
    assert "| 1 |" in result.stdout and "completed" in result.stdout

    client, parent, children = runs_of(workdir)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["space.optim.lr"] == "grid[0.01, 1e-05]"
    assert len(children) == 2
    stopped = [c for c in children if c.data.tags.get("rnn_orch.stopped_early") == "true"]
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert [c.data.params["optim.lr"] for c in stopped] == ["1e-05"]
    assert stopped[0].info.status == "KILLED"
    assert [c.data.params["optim.lr"] for c in finished] == ["0.01"]
    for child in finished:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
        assert steps == [25, 50, 75, 100]
    best = client.get_run(parent.data.tags["best.run_id"])
    assert best.info.status == "FINISHED"
    assert parent.data.metrics["best_val_loss"] == pytest.approx(best.data.metrics["val_loss"])
    assert parent.data.metrics["trials_stopped_early"] == len(stopped)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/val_loss_by_key.png", "plots/learning_curves.png"} <= artifacts
    assert "summary.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.pytorch.load_model("models:/tiny-adding/1")
    with torch.no_grad():
        assert model(torch.zeros(3, 20, 2)).shape == (3, 1)


def test_pbt_sweep_copies_weights_between_trials(cli_env, workdir):
    sweep = write_sweep(workdir, """
        name: pbt
        base: base.yaml
        fixed: {curriculum.schedule: linear, curriculum.start: 10, curriculum.warmup_steps: 100}
        space:
          optim.lr: {grid: [0.01, 0.00001]}
        metric: val_loss
        mode: min
        scheduler:
          name: pbt
          perturbation_interval: 50
          quantile_fraction: 0.5
          mutations:
            optim.lr: {loguniform: [0.001, 0.02]}
            clip.threshold: {choice: [0.5, 1.0, 2.0]}
            curriculum.warmup_steps: {choice: [50, 150]}
        """)
    result = tune([sweep], cli_env)
    assert result.returncode == 0, result.stdout + result.stderr

    client, _, children = runs_of(workdir)
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    exploits = {c.data.tags["rnn_orch.trial_id"]: value for c in children
                for key, value in c.data.tags.items() if key == "pbt.exploit.00000050"}
    assert len(exploits) == 1, "the worse trial copies the better one at step 50"
    (taker, story), = exploits.items()
    giver, digest = re.fullmatch(r"copied trial (\S+) at step 50 \(weights (\w+)\)",
                                 story).groups()
    assert giver != taker
    # The weights the taker started from are the giver's step-50 checkpoint.
    train_runs = workdir / "runs" / "sweeps" / "pbt" / "train"
    (given,) = train_runs.glob(f"pbt-{giver}-from-start-*/checkpoint_00000050")
    assert weights_digest(given) == digest
    # Its mutated learning rate is recorded as a metric, from the step it took effect.
    taker_run = next(c for c in children if c.data.tags["rnn_orch.trial_id"] == taker)
    rates = {m.step: m.value for m in client.get_metric_history(taker_run.info.run_id,
                                                                 "pbt.optim.lr")}
    assert rates[0] == pytest.approx(1e-5) and 0.001 <= rates[50] <= 0.02
    warmups = {m.step: m.value for m in client.get_metric_history(
        taker_run.info.run_id, "pbt.curriculum.warmup_steps")}
    assert warmups[50] in (50, 150)  # a curriculum key mutated too


def test_pbt_continuation_keeps_what_the_guard_lowered_and_a_copy_takes_new_values(
        cli_env, workdir):
    """Both trials start at learning rates that blow a ReLU RNN up, so the divergence guard
    rolls each back and halves its rate a few times. At step 50 PBT restarts the better
    trial from its own checkpoint, and it goes on at the rate the guard left; the worse
    one copies it and trains at the rate PBT drew for it (the giver's configured rate,
    perturbed, or a new draw from the mutation's range)."""
    sweep = write_sweep(workdir, """
        name: pbt-guard
        base: base.yaml
        fixed: {model.cell: rnn_relu, clip.policy: none, guard.max_rollbacks: 30}
        space:
          optim.lr: {grid: [2.0, 4.0]}
        metric: val_loss
        mode: min
        scheduler:
          name: pbt
          perturbation_interval: 50
          quantile_fraction: 0.5
          mutations:
            optim.lr: {loguniform: [0.001, 0.02]}
        """)
    result = tune([sweep], cli_env)
    assert result.returncode == 0, result.stdout + result.stderr

    client, _, children = runs_of(workdir)
    rates, drawn = (by_trial(client, children, key) for key in ("lr", "pbt.optim.lr"))
    (taker,) = [c.data.tags["rnn_orch.trial_id"] for c in children
                if "pbt.exploit.00000050" in c.data.tags]
    (giver,) = set(rates) - {taker}
    assert rates[giver][50] < drawn[giver][0], "the guard lowered the rate before step 50"
    assert rates[giver][51] == rates[giver][50], "its own continuation keeps that rate"
    assert rates[taker][51] == pytest.approx(drawn[taker][50]), "a copy takes PBT's new rate"
    assert rates[taker][51] != rates[giver][50], "not the rate the guard left to the giver"


def test_interrupted_sweep_resumes_without_repeating_finished_trials(cli_env, workdir):
    sweep = write_sweep(workdir, """
        name: resumable
        base: base.yaml
        space:
          model.cell: {grid: [lstm, gru]}
        search: {max_concurrent_trials: 1}
        metric: val_loss
        mode: min
        """)
    first = subprocess.Popen([RNN_ORCH, "tune", sweep], env=cli_env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    finished = wait_for_a_finished_trial(workdir / "runs" / "sweeps" / "resumable", first)
    first.send_signal(signal.SIGINT)
    output, _ = first.communicate(timeout=180)
    assert first.returncode == 130 and "--resume" in output, output

    again = tune([sweep], cli_env)
    assert again.returncode == 2 and "already ran" in again.stderr  # nothing overwritten
    resumed = tune([sweep, "--resume"], cli_env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    client, parent, children = runs_of(workdir)
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert all(c.info.status == "FINISHED" for c in children)
    done_first = next(c for c in children if c.data.tags["rnn_orch.trial_id"] == finished)
    steps = [m.step for m in client.get_metric_history(done_first.info.run_id, "val_loss")]
    assert steps == [25, 50, 75, 100]  # trained once, not again


def wait_for_a_finished_trial(sweep_dir: Path, process: subprocess.Popen) -> str:
    """The id of the first trial whose Train run wrote its last checkpoint, once Tune has
    had a moment to record it as finished."""
    deadline = time.monotonic() + 240
    while True:
        done = sorted(sweep_dir.glob("train/resumable-*/checkpoint_00000100"))
        if done:
            time.sleep(8)
            return done[0].parent.name.removeprefix("resumable-")
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no trial finished"
        time.sleep(0.5)
