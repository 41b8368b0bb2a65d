"""Does Parquet through Ray Data keep up with batches made in memory?

`rnn-orch`'s real training (`driver.train`: Ray Train workers, validation, checkpoints,
MLflow) runs the adding problem two ways on one local Ray:
- memory: the task's generator makes each batch on the worker (task.name=adding);
- parquet: the same task written to Parquet (`pipelines.parquet.write_dataset`, as
  `rnn-orch data make` does) and read through Ray Data (task.name=parquet).

Each way trains two run lengths, and the steady-state throughput is the extra tokens over
the extra seconds, so start-up (Ray Train's actors, imports, the MLflow run) cancels out.
The Parquet data holds a few epochs' worth of rows, so the longer run crosses several
epochs and validations, each a new pass over the files. The target: Parquet keeps
>= 0.9 of the in-memory throughput. The same file measures an older checkout when that
is what Python imports: PYTHONPATH at the checkout, with the editable install's import
finder left out of `sys.meta_path` (it comes before PYTHONPATH). Exits non-zero when it
could not measure.

    .venv/bin/python benchmarks/parquet_pipeline.py                  # ~4 min on 2 cores
    .venv/bin/python benchmarks/parquet_pipeline.py --out benchmarks/results/parquet_pipeline.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import ray
from machine import results_header
from timed_runs import extra_seconds

from pipelines.parquet import write_dataset
from pipelines.synthetic import make_task

TARGET = 0.9  # the target: Parquet training throughput / in-memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64, help="rows per step on each worker")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, nargs=2, default=[50, 250],
                        help="the two run lengths")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--epoch-steps", type=int, default=40,
                        help="steps in one epoch of the Parquet data")
    parser.add_argument("--out", type=Path, help="write the results as Markdown here")
    args = parser.parse_args()
    short, long = args.steps
    if not (0 < short < long and short % args.eval_every == long % args.eval_every == 0):
        sys.exit("--steps: two lengths, short < long, both multiples of --eval-every")

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        rows = args.epoch_steps * args.batch * args.workers
        write_dataset(make_task("adding", args.seq_len), root / "data", rows=rows,
                      val_rows=1000, seed=0)
        common = [f"task.seq_len={args.seq_len}", "task.val_size=1000",
                  f"model.hidden_size={args.hidden}", f"train.batch_size={args.batch}",
                  f"scaling.num_workers={args.workers}", f"train.eval_every={args.eval_every}",
                  f"run.storage_path={root / 'runs'}",
                  f"tracking.uri=sqlite:///{root / 'mlflow.db'}", "tracking.experiment=bench"]
        ways = {"memory": ["task.name=adding"],
                "parquet": ["task.name=parquet", f"task.path={root / 'data'}"]}
        ray.init(log_to_driver=False)
        try:
            throughput = {way: measure(common + overrides, short, long, args)
                          for way, overrides in ways.items()}
        finally:
            ray.shutdown()

    lines = report(throughput, args, rows)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


def measure(overrides: list[str], short: int, long: int, args) -> float:
    """Steady-state tokens/s of one way: extra tokens of the long run over its extra
    seconds (every row of the adding problem is seq_len steps long)."""
    tokens = (long - short) * args.batch * args.workers * args.seq_len
    return tokens / extra_seconds(overrides, short, long)


def report(throughput: dict[str, float], args, rows: int) -> list[str]:
    memory = throughput["memory"]
    lines = [
        *results_header("Parquet through Ray Data against batches made in memory"),
        f"- Model: LSTM H={args.hidden}, adding problem T={args.seq_len}, batch {args.batch} "
        f"per worker, {args.workers} workers; validation every {args.eval_every} steps",
        f"- Parquet data: {rows} training rows ({args.epoch_steps} steps an epoch), "
        "1000 validation rows",
        f"- Throughput: steady state, from runs of {args.steps[0]} and {args.steps[1]} "
        "steps (start-up cancels out)",
        "",
        "| way | tokens/s | against memory |",
        "|---|---:|---:|",
    ]
    lines += [f"| {way} | {value:,.0f} | {value / memory:.2f} |"
              for way, value in throughput.items()]
    parquet = throughput["parquet"] / memory
    lines += ["", f"Target: Parquet >= {TARGET} of memory: "
              f"{'met' if parquet >= TARGET else 'NOT met'} ({parquet:.2f})."]
    return lines


if __name__ == "__main__":
    main()
