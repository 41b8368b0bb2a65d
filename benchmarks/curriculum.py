"""Does a length curriculum help where a plain LSTM struggles? Side by side, same budget.

The adding problem at a long length T: the same model, optimizer and step budget, trained
with each schedule for several seeds, on a real local Ray (two workers). Reports the final
val_loss, always measured at the target length T, and the wall time; writes a Markdown
table with the command that made it.

    .venv/bin/python benchmarks/curriculum.py
    .venv/bin/python benchmarks/curriculum.py --seq-len 300 --steps 1500 --seeds 0 1 2 \\
        --schedules none linear --out benchmarks/results/curriculum.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from orchestrator import driver
from orchestrator.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SOLVED = 0.01  # val MSE under which the adding problem counts as solved (baseline 0.167)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=300)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--schedules", nargs="+", default=["none", "linear"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/curriculum.md"))
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            for schedule in args.schedules:
                outcome = driver.train(experiment(args, seed, schedule, Path(scratch)))
                rows.append((schedule, seed, outcome.final["val_loss"], outcome.seconds))
                print(f"{schedule:>10} seed {seed}: val_loss {rows[-1][2]:.4f} "
                      f"in {rows[-1][3]:.0f} s", flush=True)
    report = table(args, rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)


def experiment(args: argparse.Namespace, seed: int, schedule: str, scratch: Path):
    """configs/adding.yaml at length T; the curriculum ramps 20 -> T over half the budget."""
    overrides = [
        f"seed={seed}", f"task.seq_len={args.seq_len}", f"train.steps={args.steps}",
        "train.eval_every=100", f"train.checkpoint_every={args.steps}",
        f"curriculum.schedule={schedule}", "curriculum.start=20", "curriculum.round_to=20",
        f"curriculum.warmup_steps={args.steps // 2}", "curriculum.increment=20",
        "curriculum.patience=2", f"run.name=curriculum-{schedule}-seed{seed}",
        f"run.storage_path={scratch / 'runs'}", f"tracking.uri=sqlite:///{scratch}/mlflow.db",
        "tracking.experiment=benchmark-curriculum",
    ]
    return driver.resolve(load_config(ROOT / "configs/adding.yaml", overrides), {})


def table(args: argparse.Namespace, rows: list[tuple[str, int, float, float]]) -> str:
    command = "python benchmarks/curriculum.py " + " ".join(sys.argv[1:])
    lines = [
        f"# Curriculum on the adding problem, T={args.seq_len}, {args.steps} steps",
        "",
        f"Command: `{command.strip()}` (2 Ray Train workers on CPU; configs/adding.yaml "
        "otherwise). val_loss is the MSE at the target length; the baseline of a model "
        f"that learned nothing is 0.167; 'solved' means below {SOLVED}.",
        "",
        "| schedule | seed | final val_loss | wall s |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {s} | {seed} | {loss:.4f} | {secs:.0f} |" for s, seed, loss, secs in rows]
    lines += ["", "| schedule | mean val_loss | solved | mean wall s |",
              "| --- | --- | --- | --- |"]
    for schedule in args.schedules:
        mine = [row for row in rows if row[0] == schedule]
        losses = [row[2] for row in mine]
        solved = sum(loss < SOLVED for loss in losses)
        lines.append(f"| {schedule} | {statistics.mean(losses):.4f} | {solved}/{len(mine)} | "
                     f"{statistics.mean(row[3] for row in mine):.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
