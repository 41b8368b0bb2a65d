"""Does length bucketing pay on ragged sequences?

`rnn-orch`'s real training (`driver.train`: two Ray Train workers, Ray Data, validation,
checkpoints, MLflow) trains an LSTM on Parquet rows of the adding problem whose lengths
are spread evenly over [--min-len, --max-len], two ways on one local Ray:
- padded: batches as the shuffled rows come (`task.bucket_batches=1`);
- bucketed: the rows of --window batches sorted by length together, cut into batches,
  taken in a shuffled order (`task.bucket_batches=WINDOW`).

Both ways train on the same rows: each run is timed over whole epochs (from the end of
epoch --epochs[0] to the end of epoch --epochs[1], between those steps' MLflow
timestamps, `timed_runs.logged_seconds`), so each trains every row the same number of
times and only the padding differs, and start-up is left out. Throughput is real
(unpadded) steps per second. The ways take turns, --repeats times, and the median is
kept. Padding efficiency (real steps / computed steps) is the mean of the
`padding_efficiency` the way's runs logged at every step. Exits non-zero when it could
not measure.

    .venv/bin/python benchmarks/bucketing.py                      # ~6 min on 2 cores
    .venv/bin/python benchmarks/bucketing.py --out benchmarks/results/bucketing.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from machine import results_header
from mlflow.tracking import MlflowClient
from timed_runs import logged_seconds

from pipelines.synthetic import AddingProblem, rng_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-len", type=int, default=10)
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64, help="rows per step on each worker")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--window", type=int, default=16,
                        help="batches sorted by length together (task.bucket_batches)")
    parser.add_argument("--epoch-steps", type=int, default=32,
                        help="steps in one epoch of the data")
    parser.add_argument("--epochs", type=int, nargs=2, default=[1, 3],
                        help="time each run from the end of the first epoch given to the "
                             "end of the second")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the results as Markdown here")
    args = parser.parse_args()
    if args.epoch_steps % args.window:
        sys.exit("--epoch-steps must be a multiple of --window, so no row is left over")
    short, long = (epochs * args.epoch_steps for epochs in args.epochs)

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        rows = args.epoch_steps * args.batch * args.workers
        real_steps = write_ragged(root / "data", rows, args)
        common = ["task.name=parquet", f"task.path={root / 'data'}",
                  f"model.hidden_size={args.hidden}", f"train.batch_size={args.batch}",
                  f"scaling.num_workers={args.workers}", f"train.eval_every={args.epoch_steps}",
                  f"run.storage_path={root / 'runs'}", "tracking.experiment=bench",
                  f"tracking.uri=sqlite:///{root / 'mlflow.db'}"]
        ways = {"padded": 1, "bucketed": args.window}
        speeds: dict[str, list[float]] = {way: [] for way in ways}
        ray.init(log_to_driver=False)
        try:
            for _ in range(args.repeats):
                for way, window in ways.items():
                    seconds = logged_seconds([*common, f"task.bucket_batches={window}"],
                                             short, long)
                    speeds[way].append(real_steps * (args.epochs[1] - args.epochs[0])
                                       / seconds)
                    print(f"  {way}: {speeds[way][-1]:,.0f} real steps/s", file=sys.stderr,
                          flush=True)
            results = {way: (speeds[way], padding_efficiency(root / "mlflow.db", window))
                       for way, window in ways.items()}
        finally:
            ray.shutdown()

    lines = report(results, args, rows)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


def write_ragged(directory: Path, rows: int, args) -> int:
    """Training and validation rows of the adding problem, of lengths drawn evenly from
    [min_len, max_len], as Parquet; returns the real steps of one training epoch."""
    task, rng = AddingProblem(args.max_len), rng_for(0, 0, 0)
    total = 0
    for split, count in (("train", rows), ("val", 512)):
        lengths = rng.integers(args.min_len, args.max_len + 1, size=count)
        inputs, targets = [], []
        for length in lengths:
            row = task.generate(rng, 1, seq_len=int(length))
            inputs.append(row["inputs"][0].tolist())
            targets.append(row["targets"][0].tolist())
        (directory / split).mkdir(parents=True)
        pq.write_table(pa.table({
            "inputs": pa.array(inputs, type=pa.list_(pa.list_(pa.float32()))),
            "targets": pa.array(targets, type=pa.list_(pa.float32())),
        }), directory / split / "part-00000.parquet")
        if split == "train":
            total = int(lengths.sum())
    return total


def padding_efficiency(store: Path, window: int) -> float:
    """Mean `padding_efficiency` over every step of the way's runs."""
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("bench").experiment_id
    runs = client.search_runs([experiment], filter_string=(
        f"params.`task.bucket_batches` = '{window}'"))
    if not runs:
        sys.exit(f"found no run with bucket_batches={window}")
    return statistics.fmean(m.value for run in runs for m in
                            client.get_metric_history(run.info.run_id, "padding_efficiency"))


def report(results: dict[str, tuple[list[float], float]], args, rows: int) -> list[str]:
    padded = statistics.median(results["padded"][0])
    lines = [
        *results_header("Length bucketing on ragged sequences"),
        f"- Model: LSTM H={args.hidden}, adding problem with lengths {args.min_len} to "
        f"{args.max_len}, batch {args.batch} per worker, {args.workers} workers",
        f"- Data: {rows} training rows ({args.epoch_steps} steps an epoch), shuffled every "
        f"epoch; bucketed = task.bucket_batches={args.window}",
        f"- Throughput: real steps/s from the end of epoch {args.epochs[0]} to the end of "
        f"epoch {args.epochs[1]} of runs of {args.epochs[1]} epochs, from MLflow's step "
        f"timestamps; median of {args.repeats} runs taking turns",
        "",
        "| way | padding efficiency | real steps/s | runs | against padded |",
        "|---|---:|---:|---|---:|",
    ]
    lines += [f"| {way} | {efficiency:.2f} | {statistics.median(speed):,.0f} | "
              f"{', '.join(f'{run:,.0f}' for run in speed)} | "
              f"{statistics.median(speed) / padded:.2f} |"
              for way, (speed, efficiency) in results.items()]
    return lines


if __name__ == "__main__":
    main()
