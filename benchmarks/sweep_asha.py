"""Does early stopping pay? The shipped sweep with ASHA against the same sweep without it.

`rnn-orch tune configs/sweeps/adding_stability.yaml` runs twice on a local Ray, each
into a fresh MLflow store and storage: as shipped (ASHA stops the trials that are behind
at 300, 600 and 1200 steps), and with `scheduler: {name: fifo}`, every trial to its end.
Sweeps are seeded, so both draw the same 12 trials. Reported: each sweep's wall time,
the training steps its trials took, how many were stopped early, and the best val_loss
it found (each trial's last, as the sweep ranks them). The shipped sweep's own summary
and plots are copied to `--plots` (benchmarks/results/sweep_adding_stability/).
Exits non-zero when a sweep fails.

    .venv/bin/python benchmarks/sweep_asha.py                  # ~20 min on 2 cores
    .venv/bin/python benchmarks/sweep_asha.py --out benchmarks/results/sweep_asha.md
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from machine import describe, results_header
from mlflow.tracking import MlflowClient

from orchestrator.sweep import STOPPED_TAG
from orchestrator.tracking import PARENT_TAG

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "configs" / "sweeps" / "adding_stability.yaml"
RNN_ORCH = str(Path(sys.executable).with_name("rnn-orch"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plots", type=Path,
                        default=ROOT / "benchmarks/results/sweep_adding_stability",
                        help="where the shipped sweep's summary and plots are copied")
    parser.add_argument("--out", type=Path, help="write the results as Markdown here")
    args = parser.parse_args()

    shipped = yaml.safe_load(SWEEP.read_text())
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for way, scheduler in (("ASHA (as shipped)", shipped["scheduler"]),
                               ("no early stopping (fifo)", {"name": "fifo"})):
            where = Path(scratch) / scheduler["name"]
            results[way] = run_sweep(shipped, scheduler, where)
            if scheduler == shipped["scheduler"]:
                copy_report(where, args.plots, results[way]["seconds"])

    lines = report(results)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


def run_sweep(shipped: dict, scheduler: dict, where: Path) -> dict:
    """Run the shipped sweep with `scheduler` into `where`; its figures from MLflow."""
    where.mkdir(parents=True)
    uri = f"sqlite:///{where / 'mlflow.db'}"
    sweep = {**shipped, "base": str((SWEEP.parent / shipped["base"]).resolve()),
             "scheduler": scheduler,
             "fixed": {**shipped["fixed"], "tracking.uri": uri,
                       "run.storage_path": str(where / "runs")}}
    sweep_file = where / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep, sort_keys=False))  # keys in the shipped order
    started = time.monotonic()
    done = subprocess.run([RNN_ORCH, "tune", str(sweep_file)], cwd=where)
    seconds = time.monotonic() - started
    if done.returncode:
        sys.exit(f"the sweep with scheduler {scheduler['name']} failed "
                 f"(exit {done.returncode})")
    client = MlflowClient(uri)
    trials = [run for run in client.search_runs(
        [e.experiment_id for e in client.search_experiments()])
        if PARENT_TAG in run.data.tags and "val_loss" in run.data.metrics]
    if len(trials) != 12:
        sys.exit(f"the sweep with scheduler {scheduler['name']} recorded {len(trials)} "
                 "trials with a val_loss, not 12")
    steps = [max(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
             for run in trials]
    best = min(trials, key=lambda run: run.data.metrics["val_loss"])
    return {"seconds": seconds, "steps": sum(steps),
            "stopped": sum(run.data.tags.get(STOPPED_TAG) == "true" for run in trials),
            "best": best.data.metrics["val_loss"],
            "best_trial": ", ".join(f"{key}={shown(best.data.params[key])}" for key in
                                    shipped["space"] if key in best.data.params)}


def shown(param: str) -> str:
    """An MLflow param as the sweep's table shows it: numbers to 4 significant digits."""
    try:
        return f"{float(param):.4g}"
    except ValueError:
        return param


def copy_report(where: Path, plots: Path, seconds: float) -> None:
    """The sweep's summary (headed by how it was made) and plots, into `plots`."""
    report = next((where / "runs").glob("sweeps/*/report"))
    plots.mkdir(parents=True, exist_ok=True)
    for png in (report / "plots").glob("*.png"):
        shutil.copy(png, plots / png.name)
    made = (f"Made by `rnn-orch tune configs/sweeps/adding_stability.yaml` "
            f"(`benchmarks/sweep_asha.py`, {datetime.date.today().isoformat()}) on "
            f"{describe()}, {seconds / 60:.0f} min {seconds % 60:.0f} s wall. The plots "
            "beside this file are the sweep's own.\n\n")
    (plots / "summary.md").write_text(made + (report / "summary.md").read_text())


def report(results: dict[str, dict]) -> list[str]:
    asha, fifo = results.values()
    lines = [
        *results_header("Sweep with ASHA against the same sweep without early stopping"),
        "- Sweep: `configs/sweeps/adding_stability.yaml`, 12 trials (3 cells x 2 clipping "
        "policies x 2 curricula, a random clip threshold each), 1500 steps a trial, "
        "two trials at a time",
        "",
        "| sweep | wall | training steps | stopped early | best val_loss | best trial |",
        "|---|---:|---:|---:|---:|---|",
    ]
    lines += [f"| {way} | {r['seconds'] / 60:.1f} min | {r['steps']:,} | {r['stopped']} | "
              f"{r['best']:.3g} | {r['best_trial']} |" for way, r in results.items()]
    lines += ["", f"ASHA took {asha['seconds'] / fifo['seconds']:.2f} of the wall time and "
              f"{asha['steps'] / fifo['steps']:.2f} of the training steps; its best val_loss "
              f"is {asha['best'] / fifo['best']:.2f} times the one found without it."]
    return lines


if __name__ == "__main__":
    main()
