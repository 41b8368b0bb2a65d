"""Does transfer help? A forecaster pretrained on one dataset and fine-tuned on a little
of another, against the same model trained from scratch on the same little data with the
same step budget, over several seeds.

    .venv/bin/python benchmarks/transfer.py parking --seeds 0 1 2 \
        --out benchmarks/results/transfer_parking.md
    .venv/bin/python benchmarks/transfer.py traffic --seeds 0 1 2 \
        --out benchmarks/results/transfer_traffic.md

Pairings (configs/transfer/):
- parking: 27 Birmingham car parks -> one week of a car park the pretraining never saw
  (many series of one kind to one short series);
- traffic: six years of Minneapolis traffic volume -> four weeks of San Francisco freeway
  occupancy (another quantity in another city).

One pretraining run, registered as models:/<pairing>@pretrained; then per seed a
fine-tuning run and a run from scratch (the same config with init.from empty, one
learning rate, nothing frozen). All are real `rnn-orch train` runs (local Ray, 2 workers,
CPU) into one SQLite store under a temporary directory; the figures are read back from
MLflow. Zero-shot: the pretrained weights, untouched, scored on the fine-tuning run's
test windows (its normalization, fitted on its own training days). Steps to target: the
first validation at which val_loss reaches the median of the scratch runs' best val_loss.
Exits non-zero when a run fails.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from machine import describe
from mlflow.tracking import MlflowClient

from orchestrator.driver import PREPARED_DIR
from orchestrator.forecaster import Forecaster
from orchestrator.tracking import forecaster_files, set_verbosity
from pipelines.windows import Windows, read_layout, read_share

ROOT = Path(__file__).resolve().parents[1]
RNN_ORCH = Path(sys.executable).parent / "rnn-orch"
SCRATCH = ["init.from=", "init.unfreeze_every=0", "init.lr_decay=1"]


@dataclass(frozen=True)
class Pairing:
    datasets: tuple[str, ...]  # fetched into data/<name> when missing
    pretrain: str
    finetune: str
    what: str  # the fine-tuning data, in words
    units: str


PAIRINGS = {
    "parking": Pairing(
        ("parking",), "configs/transfer/parking_pretrain.yaml",
        "configs/transfer/parking_finetune.yaml",
        "one week of training data from a car park the pretraining never saw, one of "
        "validation, nine weeks of test", "cars parked"),
    "traffic": Pairing(
        ("traffic_volume", "sf_traffic"), "configs/transfer/traffic_pretrain.yaml",
        "configs/transfer/sf_traffic_finetune.yaml",
        "four weeks of training data, one of validation, 23 months of test",
        "occupancy units"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pairing", choices=sorted(PAIRINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    args.out = args.out or f"benchmarks/results/transfer_{args.pairing}.md"
    pairing = PAIRINGS[args.pairing]
    for name in pairing.datasets:
        if not (ROOT / "data" / name).exists():
            subprocess.run([RNN_ORCH, "data", "fetch", name, "--out", f"data/{name}"],
                           cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as work:
        uri = f"sqlite:///{work}/mlflow.db"
        store = [f"tracking.uri={uri}", f"run.storage_path={work}/runs",
                 "run.max_failures=2"]  # a worker lost to a busy machine resumes
        env = dict(os.environ, MLFLOW_TRACKING_URI=uri)

        def train(config: str, name: str, *keys: str) -> str:
            command = [RNN_ORCH, "train", config, f"run.name={name}", *store, *keys]
            if name == "pretrain":
                command += ["--register", args.pairing, "--alias", "pretrained"]
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
            if done.returncode:
                raise RuntimeError(f"{name} failed:\n{done.stdout[-3000:]}\n"
                                   f"{done.stderr[-3000:]}")
            lines = done.stdout.strip().splitlines()
            test_line = next((line for line in lines if line.lstrip().startswith("model ")),
                             lines[-1])  # the model's test MAE, RMSE and MASE
            print(f"{name}: {test_line.strip()}", flush=True)
            return name

        try:
            train(pairing.pretrain, "pretrain")
            runs = {seed: (train(pairing.finetune, f"finetune-{seed}", f"seed={seed}"),
                           train(pairing.finetune, f"scratch-{seed}", f"seed={seed}",
                                 *SCRATCH))
                    for seed in args.seeds}
        except RuntimeError as error:
            print(error, file=sys.stderr)
            return 1
        client = MlflowClient(uri)
        figures = {name: read(client, name) for pair in runs.values() for name in pair}
        os.environ["MLFLOW_TRACKING_URI"] = uri
        zero_shot = score_zero_shot(f"models:/{args.pairing}@pretrained",
                                    f"{work}/runs/{runs[args.seeds[0]][0]}/{PREPARED_DIR}")
    Path(args.out).write_text(report(pairing, runs, figures, zero_shot, args))
    print(Path(args.out).read_text())
    return 0


def read(client: MlflowClient, name: str) -> dict:
    experiment = client.get_experiment_by_name("transfer").experiment_id
    run = client.search_runs([experiment], f"tags.`rnn_orch.run_name` = '{name}'")[0]
    history = client.get_metric_history(run.info.run_id, "val_loss")
    return {**run.data.metrics, "val_history": sorted((m.step, m.value) for m in history),
            "tags": run.data.tags}


def score_zero_shot(model_uri: str, prepared: str) -> dict[str, float]:
    """The pretrained model's test figures on the fine-tuning data, without training,
    and the season the baselines used."""
    set_verbosity(False)
    pretrained = Forecaster.load(forecaster_files(model_uri))
    layout = read_layout(prepared)
    windows = Windows(read_share(prepared, "test", 0, 1, layout), layout, "test")
    return {**Forecaster(pretrained.model, layout).evaluate(windows.in_order()),
            "season": layout.season}


def steps_to(history: list[tuple[int, float]], target: float) -> int | None:
    return next((step for step, value in history if value <= target), None)


def report(pairing: Pairing, runs: dict, figures: dict, zero_shot: dict,
           args: argparse.Namespace) -> str:
    scratch_best = [min(v for _, v in figures[scratch]["val_history"])
                    for _, scratch in runs.values()]
    target = statistics.median(scratch_best)
    lines = [
        f"# Transfer ({args.pairing}): fine-tuning a pretrained forecaster against training "
        "from scratch",
        "",
        f"Command: `.venv/bin/python benchmarks/transfer.py {args.pairing} --seeds "
        f"{' '.join(map(str, args.seeds))} --out {args.out}`",
        "",
        f"Machine: {describe()}. Date: {datetime.date.today()}.",
        "",
        f"Pretrained on {pairing.pretrain}; fine-tuned on {pairing.finetune} ({pairing.what});"
        " scratch = the same config with `init.from= init.unfreeze_every=0 init.lr_decay=1`,"
        " the same steps. Test figures of each run's best-val_loss checkpoint, in "
        f"{pairing.units}. Target val_loss: {target:.4f} (the median of the scratch runs' "
        "best).",
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
    lines.append(f"| | zero-shot (pretrained, not fine-tuned) | | | "
                 f"{zero_shot['test_mae']:.4f} | {zero_shot['test_rmse']:.4f} | "
                 f"{zero_shot['test_mase']:.3f} |")
    first = figures[runs[args.seeds[0]][0]]
    baselines = [("persistence", "_persistence"), ("training mean", "_mean")]
    if zero_shot["season"] > 1:  # with a season of 1 it is persistence again
        baselines.insert(1, (f"seasonal naive ({zero_shot['season']} steps earlier)",
                             "_seasonal_naive"))
    for label, suffix in baselines:
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
