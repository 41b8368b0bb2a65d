"""Does transfer help? Fine-tuning a pretrained traffic forecaster on four weeks of San
Francisco freeway occupancy against training the same model from scratch on the same
four weeks with the same step budget, over several seeds.

    .venv/bin/python benchmarks/transfer_traffic.py --seeds 0 1 2 \
        --out benchmarks/results/transfer_traffic.md

One pretraining run (configs/transfer/traffic_pretrain.yaml, six years of Minneapolis
traffic volume), registered as models:/traffic@pretrained; then per seed a fine-tuning
run (configs/transfer/sf_traffic_finetune.yaml) and a run from scratch (the same config
with init.from empty, one learning rate, nothing frozen). All are real `rnn-orch train`
runs (local Ray, 2 workers, CPU) into one SQLite store under a temporary directory; the
figures are read back from MLflow. Steps to target: the first validation at which
val_loss reaches the median of the scratch runs' best val_loss. Exits non-zero when a run
fails.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import describe
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
RNN_ORCH = Path(sys.executable).parent / "rnn-orch"
PRETRAIN = "configs/transfer/traffic_pretrain.yaml"
FINETUNE = "configs/transfer/sf_traffic_finetune.yaml"
SCRATCH = ["init.from=", "init.unfreeze_every=0", "init.lr_decay=1"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/transfer_traffic.md")
    args = parser.parse_args()
    for name in ("traffic_volume", "sf_traffic"):
        if not (ROOT / "data" / name).exists():
            subprocess.run([RNN_ORCH, "data", "fetch", name, "--out", f"data/{name}"],
                           cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as work:
        store = [f"tracking.uri=sqlite:///{work}/mlflow.db", f"run.storage_path={work}/runs",
                 "run.max_failures=2"]  # a worker lost to a busy machine resumes
        env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db")

        def train(config: str, name: str, *keys: str) -> str:
            command = [RNN_ORCH, "train", config, f"run.name={name}", *store, *keys]
            if name == "pretrain":
                command += ["--register", "traffic", "--alias", "pretrained"]
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
            if done.returncode:
                raise RuntimeError(f"{name} failed:\n{done.stdout[-3000:]}\n"
                                   f"{done.stderr[-3000:]}")
            print(f"{name}: {done.stdout.splitlines()[1]}", flush=True)
            return name

        try:
            train(PRETRAIN, "pretrain")
            runs = {seed: (train(FINETUNE, f"finetune-{seed}", f"seed={seed}"),
                           train(FINETUNE, f"scratch-{seed}", f"seed={seed}", *SCRATCH))
                    for seed in args.seeds}
        except RuntimeError as error:
            print(error, file=sys.stderr)
            return 1
        client = MlflowClient(f"sqlite:///{work}/mlflow.db")
        figures = {name: read(client, name) for pair in runs.values() for name in pair}
    Path(args.out).write_text(report(runs, figures, args))
    print(Path(args.out).read_text())
    return 0


def read(client: MlflowClient, name: str) -> dict:
    experiment = client.get_experiment_by_name("transfer").experiment_id
    run = client.search_runs([experiment], f"tags.`rnn_orch.run_name` = '{name}'")[0]
    history = client.get_metric_history(run.info.run_id, "val_loss")
    return {**run.data.metrics, "val_history": sorted((m.step, m.value) for m in history),
            "tags": run.data.tags}


def steps_to(history: list[tuple[int, float]], target: float) -> int | None:
    return next((step for step, value in history if value <= target), None)


def report(runs: dict, figures: dict, args: argparse.Namespace) -> str:
    scratch_best = [min(v for _, v in figures[scratch]["val_history"])
                    for _, scratch in runs.values()]
    target = statistics.median(scratch_best)
    lines = [
        "# Transfer: fine-tuning a pretrained traffic forecaster against training from "
        "scratch",
        "",
        f"Command: `.venv/bin/python benchmarks/transfer_traffic.py --seeds "
        f"{' '.join(map(str, args.seeds))} --out {args.out}`",
        "",
        f"Machine: {describe()}. Date: {datetime.date.today()}.",
        "",
        f"Pretrained on {PRETRAIN}; fine-tuned on {FINETUNE} (four weeks of training data, "
        "one of validation, 23 months of test); scratch = the same config with `init.from=`"
        " `init.unfreeze_every=0 init.lr_decay=1`, the same 300 steps. Test figures of each "
        f"run's best-val_loss checkpoint, in occupancy units. Target val_loss: {target:.4f} "
        "(the median of the scratch runs' best).",
        "",
        "| seed | run | steps to target | best val_loss | test MAE | test RMSE | test MASE |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    means: dict[str, list[float]] = {"fine-tuned": [], "scratch": []}
    for seed, pair in runs.items():
        for label, name in zip(("fine-tuned", "scratch"), pair, strict=True):
            m = figures[name]
            reached = steps_to(m["val_history"], target)
            means[label].append(m["test_mae"])
            lines.append(f"| {seed} | {label} | {reached if reached else 'not reached'} | "
                         f"{min(v for _, v in m['val_history']):.4f} | {m['test_mae']:.4f} | "
                         f"{m['test_rmse']:.4f} | {m['test_mase']:.3f} |")
    first = figures[runs[args.seeds[0]][0]]
    for label, suffix in (("persistence", "_persistence"),
                          ("seasonal naive (a week earlier)", "_seasonal_naive"),
                          ("training mean", "_mean")):
        lines.append(f"| | {label} | | | {first[f'test_mae{suffix}']:.4f} | "
                     f"{first[f'test_rmse{suffix}']:.4f} | {first[f'test_mase{suffix}']:.3f} |")
    tuned, scratch = (statistics.mean(means[k]) for k in ("fine-tuned", "scratch"))
    lineage = {k: v for k, v in first["tags"].items() if k.startswith("rnn_orch.init.")}
    lines += ["", f"Mean test MAE: fine-tuned {tuned:.4f}, scratch {scratch:.4f} "
              f"({1 - tuned / scratch:.1%} lower with transfer).", "",
              f"Lineage tags of a fine-tuned run: {lineage}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
