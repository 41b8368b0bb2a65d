"""Do frequent validations slow training down?

`rnn-orch`'s real training (`driver.train`: one Ray Train worker, validation, checkpoints,
MLflow) trains a small LSTM whose steps take milliseconds, as a GPU's do, two ways on one
local Ray:
- validations every --eval-every steps, on --val-size rows;
- one validation, at the last step.
Each way runs under two polls of Ray Train's controller (`RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`,
which Ray Train hands from the driver to its controller): 2 s, Ray's default and what a
cluster keeps, and 0.5 s, what the local Ray that `rnn-orch` starts uses
(`driver.start_ray`). A report to Ray waits until the controller has taken the one before,
and the controller takes one per poll; so a loop that reports each validation trains at
most --eval-every steps per poll, however fast its steps.

Each run's steady state is timed between two steps' MLflow timestamps
(`timed_runs.logged_seconds`); the ways take turns, --repeats times, and each figure is
the median. The figure: steps per second with validations against without, for each
poll. Exits non-zero when it could not measure.

    .venv/bin/python benchmarks/validations.py          # ~6 min on 2 cores
    .venv/bin/python benchmarks/validations.py --out benchmarks/results/validations.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import ray
from machine import results_header
from timed_runs import logged_seconds

POLL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--val-size", type=int, default=64, help="validation rows")
    parser.add_argument("--steps", type=int, default=1000, help="steps of every run")
    parser.add_argument("--skip", type=int, default=200,
                        help="steps left out of the timing at the start of every run")
    parser.add_argument("--polls", type=float, nargs="+", default=[2.0, 0.5],
                        help="seconds between the controller's polls of its workers")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as Markdown here")
    args = parser.parse_args()
    if not 0 <= args.skip < args.steps or args.steps % args.eval_every:
        sys.exit("--skip: fewer steps than --steps, and --steps a multiple of --eval-every")

    ways = {f"validations every {args.eval_every} steps": args.eval_every,
            "one validation, at the end": args.steps}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        common = ["task.name=adding", f"task.seq_len={args.seq_len}",
                  f"task.val_size={args.val_size}", f"model.hidden_size={args.hidden}",
                  f"train.batch_size={args.batch}", "scaling.num_workers=1",
                  f"run.storage_path={root / 'runs'}",
                  f"tracking.uri=sqlite:///{root / 'mlflow.db'}", "tracking.experiment=bench"]
        measured: dict[tuple[float, str], list[float]] = {
            (poll, way): [] for poll in args.polls for way in ways}
        ray.init(log_to_driver=False)
        try:
            for _ in range(args.repeats):
                for poll, way in measured:
                    os.environ[POLL] = str(poll)
                    seconds = logged_seconds(
                        [*common, f"train.eval_every={ways[way]}"], args.skip, args.steps)
                    measured[poll, way].append((args.steps - args.skip) / seconds)
                    print(f"  poll {poll} s, {way}: {measured[poll, way][-1]:.1f} steps/s",
                          file=sys.stderr, flush=True)
        finally:
            ray.shutdown()

    lines = report(measured, list(ways), args)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


def report(measured: dict[tuple[float, str], list[float]], ways: list[str], args
           ) -> list[str]:
    median = {key: statistics.median(values) for key, values in measured.items()}
    frequent, once = ways
    lines = [
        *results_header("Frequent validations against one at the end"),
        f"- Model: LSTM H={args.hidden}, adding problem T={args.seq_len}, batch {args.batch}, "
        f"1 worker; validations on {args.val_size} rows",
        f"- Throughput: steps {args.skip}-{args.steps} of runs of {args.steps} steps, from "
        f"MLflow's step timestamps; median of {args.repeats} runs taking turns",
        "",
        "| controller's poll | way | steps/s | runs | against one validation |",
        "|---:|---|---:|---|---:|",
    ]
    for poll, way in median:
        lines.append(f"| {poll:g} s | {way} | {median[poll, way]:.1f} | "
                     f"{', '.join(f'{run:.1f}' for run in measured[poll, way])} | "
                     f"{median[poll, way] / median[poll, once]:.2f} |")
    lines += ["", *(f"- Poll {poll:g} s: validations every {args.eval_every} steps keep "
                    f"**{median[poll, frequent] / median[poll, once]:.2f}** of the speed "
                    f"of one validation at the end." for poll in args.polls)]
    return lines


if __name__ == "__main__":
    main()
