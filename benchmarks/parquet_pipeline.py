"""Does Parquet through Ray Data keep up with batches made in memory?

`rnn-orch`'s real training (`driver.train`: Ray Train workers, validation, checkpoints,
MLflow) runs the adding problem on one local Ray, one way from memory and four from
Parquet:
- memory: the task's generator makes each batch on the worker (task.name=adding);
- parquet: the same task written to Parquet (`pipelines.parquet.write_dataset`, as
  `rnn-orch data make` does) and read through Ray Data (task.name=parquet), with short
  epochs (--epoch-steps, first value) and long ones (second value), each way twice:
  - kept: each worker reads its share once and cuts every epoch from memory (what
    task.keep_rows_mb, 256 MiB by default, does for data this small);
  - streamed: every epoch is a new pass of Ray Data over the files (task.keep_rows_mb=0,
    what larger data does), and a pass starts with a pause (a streaming execution to set
    up, read tasks to schedule, a shuffle buffer to fill) that takes CPU from training.
The two epoch lengths tell that per-pass cost apart from the per-batch cost. Validation
rows are read once and kept (`ShardBatches`).

Each run's steady state is timed between two steps' MLflow timestamps
(`timed_runs.logged_seconds`), so start-up is left out but every validation and epoch
boundary in between is counted. Start-up here includes the first --skip steps: while they
run, Ray Data starts its own processes (a coordinator per dataset, a read worker, a stats
actor), each importing Ray Data, which on two busy cores slows those steps. The ways take
turns, `--repeats` times, and each figure is the median. The target: Parquet keeps >= 0.9
of the in-memory throughput. Exits non-zero when it could not measure.

    .venv/bin/python benchmarks/parquet_pipeline.py                  # ~12 min on 2 cores
    .venv/bin/python benchmarks/parquet_pipeline.py --out benchmarks/results/parquet_pipeline.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import ray
from machine import results_header
from timed_runs import logged_seconds

from pipelines.parquet import write_dataset
from pipelines.synthetic import make_task

TARGET = 0.9  # the target: Parquet training throughput / in-memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64, help="rows per step on each worker")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=400, help="steps of every run")
    parser.add_argument("--skip", type=int, default=100,
                        help="steps left out of the timing at the start of every run")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--epoch-steps", type=int, nargs=2, default=[40, 400],
                        help="steps in one epoch of the Parquet data, short and long")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as Markdown here")
    args = parser.parse_args()
    if not 0 <= args.skip < args.steps:
        sys.exit("--skip: fewer steps than --steps")

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        common = [f"task.seq_len={args.seq_len}", "task.val_size=1000",
                  f"model.hidden_size={args.hidden}", f"train.batch_size={args.batch}",
                  f"scaling.num_workers={args.workers}", f"train.eval_every={args.eval_every}",
                  f"run.storage_path={root / 'runs'}",
                  f"tracking.uri=sqlite:///{root / 'mlflow.db'}", "tracking.experiment=bench"]
        ways = {"memory": ["task.name=adding"]}
        for epoch_steps in args.epoch_steps:
            data = root / f"data-{epoch_steps}"
            write_dataset(make_task("adding", args.seq_len), data,
                          rows=epoch_steps * args.batch * args.workers, val_rows=1000, seed=0)
            for way, keep_rows_mb in (("kept", 256), ("streamed", 0)):
                ways[f"parquet {way}, epochs of {epoch_steps} steps"] = [
                    "task.name=parquet", f"task.path={data}", f"task.keep_rows_mb={keep_rows_mb}"]
        tokens = (args.steps - args.skip) * args.batch * args.workers * args.seq_len
        measured: dict[str, list[float]] = {way: [] for way in ways}
        ray.init(log_to_driver=False)
        try:
            for _ in range(args.repeats):
                for way, overrides in ways.items():
                    seconds = logged_seconds(common + overrides, args.skip, args.steps)
                    measured[way].append(tokens / seconds)
                    print(f"  {way}: {tokens / seconds:,.0f} tokens/s", file=sys.stderr,
                          flush=True)
        finally:
            ray.shutdown()

    lines = report({way: statistics.median(values) for way, values in measured.items()},
                   measured, args)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


def report(throughput: dict[str, float], measured: dict[str, list[float]], args
           ) -> list[str]:
    memory = throughput["memory"]
    lines = [
        *results_header("Parquet through Ray Data against batches made in memory"),
        f"- Model: LSTM H={args.hidden}, adding problem T={args.seq_len}, batch {args.batch} "
        f"per worker, {args.workers} workers; validation every {args.eval_every} steps "
        "(1000 rows)",
        f"- Parquet data: epochs of {args.epoch_steps[0]} and of {args.epoch_steps[1]} "
        "steps; each worker's rows reshuffled every epoch (kept: shuffled whole; "
        "streamed: Ray Data's local shuffle buffer, task.shuffle_rows=1024, the default)",
        f"- Throughput: steps {args.skip}-{args.steps} of runs of {args.steps} steps, from "
        f"MLflow's step timestamps; median of {args.repeats} runs taking turns",
        "",
        "| way | tokens/s | runs | against memory |",
        "|---|---:|---|---:|",
    ]
    lines += [f"| {way} | {value:,.0f} | "
              f"{', '.join(f'{run:,.0f}' for run in measured[way])} | {value / memory:.2f} |"
              for way, value in throughput.items()]
    lines += [""]
    for way, value in throughput.items():
        if way != "memory":
            ratio = value / memory
            lines.append(f"Target: {way} >= {TARGET} of memory: "
                         f"{'met' if ratio >= TARGET else 'NOT met'} ({ratio:.2f}).")
    return lines


if __name__ == "__main__":
    main()
