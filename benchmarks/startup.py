"""How long from `rnn-orch train` to the first training step, against the floor?

The floor is what any Ray Train script pays before it can train: a Python process that
imports torch, Ray Train and MLflow and starts a local Ray (`ray.init()`). The command
runs a one-step job of the adding problem (2 workers, a local Ray it starts itself, an
MLflow SQLite store that already exists, as on a laptop's second run) and is timed at
three points: the MLflow run opened (imports, config, store), the first training step
logged (Ray Train's controller and worker processes, their imports, the process group),
and the command's end (checkpoint, model logged, Ray stopped). Ray Train's controller log
gives the split of its worker-group start.

Four variants of the command take turns with the floor, so a change in machine load
hits them alike: as shipped (on a local Ray, Ray Train's preemption watcher is off and its
controller polls its workers every 0.5 s, see `driver.start_ray`), with Ray's default
2 s poll, with the watcher forced on (Ray's default), and with glibc's malloc defaults
(`GLIBC_TUNABLES=`: the workers then need no runtime environment of their own, see
`orchestrator.allocator`). With `--before <checkout>`, the command as of an earlier commit
takes turns with them too, for a before/after measured side by side. Medians of the
repeats are reported. Exits non-zero when it could not measure.

    .venv/bin/python benchmarks/startup.py                       # about 11 minutes on 2 cores
    .venv/bin/python benchmarks/startup.py --repeats 3 --out benchmarks/results/startup.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FLOOR = ("import torch, mlflow, ray, ray.train.torch; ray.init(logging_level='ERROR'); "
         "ray.shutdown()")
ONE_STEP = ["task.seq_len=20", "model.hidden_size=16", "train.steps=1", "train.eval_every=1",
            "train.checkpoint_every=1", "scaling.num_workers=2", "tracking.experiment=startup"]
VARIANTS = {"rnn-orch train": {},
            "with Ray Train's 2 s health-check interval": {
                "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2"},
            "with the preemption watcher": {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"},
            "with glibc's malloc defaults": {"GLIBC_TUNABLES": ""}}
# Ray Train's controller log: "[Worker Group Initialization] <what> in <seconds>s".
PHASES = {"actors": r"(\d+) worker actors created in ([\d.]+)s",
          "context": r"Train context initialized on workers in ([\d.]+)s",
          "launch": r"Train function launched on workers in ([\d.]+)s"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the results as Markdown here")
    parser.add_argument("--before", type=Path,
                        help="a checkout of an earlier commit (`git worktree add`): its "
                             "`rnn-orch train` takes turns with the others (PYTHONPATH)")
    args = parser.parse_args()
    if args.before:
        commit = subprocess.run(["git", "-C", str(args.before), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        VARIANTS[f"before: commit {commit}"] = {"PYTHONPATH": str(args.before.resolve())}

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        store = f"sqlite:///{work / 'mlflow.db'}"
        one_step(work, store, "warm-up", {})  # creates the store; warms the page cache
        floors: list[float] = []
        timings: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
        for repeat in range(args.repeats):
            floors.append(floor(work))
            for number, (name, env) in enumerate(VARIANTS.items()):
                timings[name].append(one_step(work, store, f"r{repeat}-{number}", env))
                print(f"repeat {repeat}: floor {floors[-1]:.1f} s, {name}: "
                      f"{json.dumps(timings[name][-1])}", flush=True)
    report = table(args, floors, timings)
    print(report)
    if args.out:
        args.out.write_text(report)


def floor(work: Path) -> float:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", FLOOR], cwd=work, capture_output=True,
                          text=True, env=local_ray_env({}))
    if done.returncode != 0:
        sys.exit(f"the floor could not run:\n{done.stderr[-2000:]}")
    return time.monotonic() - start


def one_step(work: Path, store: str, name: str, env: dict[str, str]) -> dict[str, float]:
    """Seconds from launch to the MLflow run's start, to step 1's train_loss, to the end,
    and Ray Train's worker-group phases."""
    launched = time.time()
    done = subprocess.run(
        [BIN / "rnn-orch", "train", str(ROOT / "configs" / "adding.yaml"), f"run.name={name}",
         f"tracking.uri={store}", f"run.storage_path={work / 'runs'}", *ONE_STEP],
        cwd=work, capture_output=True, text=True, env=local_ray_env(env))
    ended = time.time()
    if done.returncode != 0:
        sys.exit(f"rnn-orch train failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("startup").experiment_id],
                               filter_string=f"tags.`rnn_orch.run_name` = '{name}'")
    [first_step] = client.get_metric_history(run.info.run_id, "train_loss")
    return {"run_opened": run.info.start_time / 1e3 - launched,
            "first_step": first_step.timestamp / 1e3 - launched,
            "end": ended - launched, **worker_group_phases()}


def local_ray_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment, less any cluster address, so each process starts its own Ray."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    return {**env, **extra}


def worker_group_phases() -> dict[str, float]:
    """The worker-group start of the latest local Ray session, from its controller log."""
    logs = sorted(Path("/tmp/ray/session_latest/logs/train").glob("ray-train-sys-controller-*"))
    if not logs:
        return {}
    text = logs[-1].read_text()
    found = {}
    for phase, pattern in PHASES.items():
        match = re.search(pattern, text)
        if match:
            found[phase] = float(match.groups()[-1])
    return found


def table(args: argparse.Namespace, floors: list[float],
          timings: dict[str, list[dict[str, float]]]) -> str:
    floor_s = statistics.median(floors)
    columns = ["run_opened", "first_step", "end", "actors", "context", "launch"]
    lines = [
        "# Start-up: from the command to the first training step",
        "",
        f"Command: `{' '.join(['python benchmarks/startup.py', *sys.argv[1:]])}`",
        "",
        f"Machine: {describe()}. {datetime.date.today().isoformat()}. Median of "
        f"{args.repeats} repeats, taking turns. The job: `rnn-orch train configs/adding.yaml "
        f"{' '.join(ONE_STEP)}` on a local Ray it starts itself, MLflow store already there.",
        "",
        f"Floor (a process importing torch, Ray Train and MLflow, then `ray.init()` and "
        f"`ray.shutdown()`): **{floor_s:.1f} s**.",
        "",
        "Seconds from the command: the MLflow run opened; the first step logged (and its "
        "ratio to the floor); the command's end. Then Ray Train's worker-group start, "
        "from its controller log: worker actors created, train context set up on them, "
        "train function launched.",
        "",
        "| variant | run opened | first step | / floor | end | actors | context | launch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, runs in timings.items():
        median = {c: statistics.median(r[c] for r in runs) if all(c in r for r in runs)
                  else float("nan") for c in columns}
        lines.append(
            f"| {name} | {median['run_opened']:.1f} | {median['first_step']:.1f} | "
            f"{median['first_step'] / floor_s:.2f}x | {median['end']:.1f} | "
            f"{median['actors']:.1f} | {median['context']:.1f} | {median['launch']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
