"""How much CPU does Ray Data's iterator take per training batch, by the rows a read hands over?

A worker whose share of the Parquet rows is too large to keep (task.keep_rows_mb) streams
it every epoch through Ray Data's local shuffle buffer (`sources.ShardBatches`). Ray's
pipeline threads then run beside the training thread, and on a machine whose cores the
training already fills, every millisecond they take is taken from training. This measures
that CPU in one process, away from training: passes over one Parquet split (the adding
problem), materialised first so the file reads are left out, through the training path's
collate (`WindowCollate`) and a shuffle buffer of --shuffle-rows rows, two ways:
- one batch a read: --batch rows handed over at a time;
- half the buffer a read: --shuffle-rows / 2 rows at a time, cut into batches by the
  collate (what `ShardBatches` does; the buffer hands over full reads only while it holds
  two).
The figure is the process's CPU time (every thread) per batch of --batch rows; the ways
take turns, --repeats times, and the median is kept. Exits non-zero when it could not
measure.

    .venv/bin/python benchmarks/parquet_reads.py          # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
from machine import results_header

from pipelines.parquet import read_task_info, write_dataset
from pipelines.ray_datasets import WindowCollate, read_split
from pipelines.synthetic import make_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--shuffle-rows", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=800, help="batches in one pass")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, help="write the results as Markdown here")
    args = parser.parse_args()
    if args.shuffle_rows % (2 * args.batch):
        sys.exit("--shuffle-rows: an even number of batches, please")

    ways = {"one batch a read": args.batch, "half the buffer a read": args.shuffle_rows // 2}
    measured: dict[str, list[float]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch)
        write_dataset(make_task("adding", args.seq_len), data, rows=args.batches * args.batch,
                      val_rows=args.batch, seed=0)
        collate = WindowCollate(read_task_info(data / "train").kind, args.batch, 1)
        ray.init(num_cpus=2, log_to_driver=False)
        try:
            rows = read_split(data / "train").materialize()
            for repeat in range(args.repeats):
                for way, read_rows in ways.items():
                    seconds = cpu_per_batch(rows, read_rows, args.shuffle_rows, collate,
                                            seed=repeat, expected=args.batches)
                    measured[way].append(seconds)
                    print(f"  {way}: {seconds * 1e3:.2f} ms of CPU a batch", file=sys.stderr,
                          flush=True)
        finally:
            ray.shutdown()

    lines = report(measured, ways, args)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


def cpu_per_batch(rows, read_rows: int, shuffle_rows: int, collate: WindowCollate,
                  seed: int, expected: int) -> float:
    """CPU seconds (all of this process's threads) per batch over one shuffled pass."""
    started = time.process_time()
    batches = sum(len(read) for read in rows.iterator().iter_torch_batches(
        batch_size=read_rows, collate_fn=collate, local_shuffle_buffer_size=shuffle_rows,
        local_shuffle_seed=seed))
    seconds = time.process_time() - started
    if batches != expected:
        sys.exit(f"a pass gave {batches} batches, not {expected}: could not measure")
    return seconds / batches


def report(measured: dict[str, list[float]], ways: dict[str, int], args) -> list[str]:
    median = {way: statistics.median(values) for way, values in measured.items()}
    one = median["one batch a read"]
    lines = [
        *results_header("Ray Data's iterator: CPU per training batch, by the rows a read "
                        "hands over"),
        f"- Data: the adding problem, T={args.seq_len}, {args.batches} batches of "
        f"{args.batch} rows, materialised in Ray's object store; a local shuffle buffer of "
        f"{args.shuffle_rows} rows; the training path's collate (`WindowCollate`)",
        f"- Figure: the process's CPU time per batch over one pass; median of "
        f"{args.repeats} passes each, taking turns",
        "",
        "| way | rows a read | CPU ms a batch | each pass | against one batch a read |",
        "|---|---:|---:|---|---:|",
    ]
    lines += [f"| {way} | {ways[way]} | {value * 1e3:.2f} | "
              f"{', '.join(f'{v * 1e3:.2f}' for v in measured[way])} | {value / one:.2f} |"
              for way, value in median.items()]
    return lines


if __name__ == "__main__":
    main()
