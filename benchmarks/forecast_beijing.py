"""The real-data forecasting result: configs/beijing_pm.yaml over several seeds, the
model's test MAE/RMSE/MASE next to the naive forecasters', read back from MLflow.

    .venv/bin/python benchmarks/forecast_beijing.py --seeds 0 1 2 \
        --out benchmarks/results/forecast_beijing.md

Each seed is a real `rnn-orch train` (local Ray, 2 workers, CPU) into a fresh SQLite
store under a temporary directory; the table is fetched first if data/beijing_pm is
missing (`rnn-orch data fetch beijing_pm`). Exits non-zero if a run fails or logs no
test figures.
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
CONFIG = ROOT / "configs" / "beijing_pm.yaml"
DATA = ROOT / "data" / "beijing_pm"
RNN_ORCH = Path(sys.executable).parent / "rnn-orch"
FORECASTERS = (("model", ""), ("persistence", "_persistence"),
               ("seasonal naive", "_seasonal_naive"), ("training mean", "_mean"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/forecast_beijing.md")
    args = parser.parse_args()
    if not DATA.exists():
        subprocess.run([RNN_ORCH, "data", "fetch", "beijing_pm", "--out", DATA], check=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        uri = f"sqlite:///{work}/mlflow.db"
        for seed in args.seeds:
            done = subprocess.run(
                [RNN_ORCH, "train", CONFIG, f"seed={seed}", f"run.name=beijing-seed{seed}",
                 f"run.storage_path={work}/runs", f"tracking.uri={uri}"],
                cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
            if done.returncode:
                print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
                return 1
            print(done.stdout.strip().splitlines()[-12:][0], flush=True)
            rows.append((seed, metrics(uri, f"beijing-seed{seed}")))
    if not all("test_mae" in figures for _, figures in rows):
        print("a run logged no test figures", file=sys.stderr)
        return 1
    Path(args.out).write_text(report(rows, args))
    print(Path(args.out).read_text())
    return 0


def metrics(uri: str, run_name: str) -> dict[str, float]:
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("beijing_pm").experiment_id],
                             filter_string=f"tags.`rnn_orch.run_name` = '{run_name}'")[0]
    return run.data.metrics


def report(rows: list[tuple[int, dict[str, float]]], args: argparse.Namespace) -> str:
    lines = [
        "# Forecasting Beijing PM2.5 a day ahead: the model against naive forecasters",
        "",
        f"Command: `.venv/bin/python benchmarks/forecast_beijing.py --seeds "
        f"{' '.join(map(str, args.seeds))} --out {args.out}`",
        "",
        f"Machine: {describe()}. Date: {datetime.date.today()}. Config: "
        "configs/beijing_pm.yaml (LSTM 64, input 72 h, horizon 24 h, quantiles 0.1/0.5/0.9, "
        "1,000 steps, 2 workers); test figures of each run's best-val_loss checkpoint, "
        "in µg/m³.",
        "",
        "| seed | model MAE | RMSE | MASE | coverage 0.1-0.9 | checkpoint step |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for seed, m in rows:
        lines.append(f"| {seed} | {m['test_mae']:.2f} | {m['test_rmse']:.2f} | "
                     f"{m['test_mase']:.3f} | {m['test_coverage']:.3f} | "
                     f"{int(m['test_checkpoint_step'])} |")
    mean = {key: statistics.mean(m[key] for _, m in rows)
            for key in ("test_mae", "test_rmse", "test_mase", "test_coverage")}
    lines.append(f"| **mean** | **{mean['test_mae']:.2f}** | **{mean['test_rmse']:.2f}** | "
                 f"**{mean['test_mase']:.3f}** | {mean['test_coverage']:.3f} | |")
    first = rows[0][1]
    for name, suffix in FORECASTERS[1:]:
        lines.append(f"| {name} | {first[f'test_mae{suffix}']:.2f} | "
                     f"{first[f'test_rmse{suffix}']:.2f} | {first[f'test_mase{suffix}']:.3f} "
                     "| | |")
    beats = sum(m["test_mae"] < m["test_mae_persistence"] for _, m in rows)
    lines += ["", f"The model beats persistence in MAE on {beats} of {len(rows)} seeds "
              f"({1 - mean['test_mae'] / first['test_mae_persistence']:.1%} lower on "
              f"average; RMSE {1 - mean['test_rmse'] / first['test_rmse_persistence']:.1%} "
              "lower).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
