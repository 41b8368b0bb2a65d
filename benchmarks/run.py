"""Run rnn-orch's benchmarks and gather their results in benchmarks/RESULTS.md.

Each benchmark is its own script that measures side by side in one run (these machines
are shared and noisy, so only ratios from one run mean much), writes its Markdown to
benchmarks/results/ with the machine, the date and its command, and exits non-zero when
it could not measure. This runner runs them one after another (never two at once: each
would steal the other's cores), prints what each prints, and then writes RESULTS.md from
every results file, the ones made now and the ones kept from earlier runs, each under its
own date and command. A benchmark that fails keeps its earlier results, marked as such,
and makes the runner exit non-zero; one that needs a GPU is skipped on a machine without
one, its earlier results kept.

    .venv/bin/python benchmarks/run.py                    # all of them: hours on 2 cores
    .venv/bin/python benchmarks/run.py overhead cells     # some of them
    .venv/bin/python benchmarks/run.py --list
    .venv/bin/python benchmarks/run.py --gather           # only rewrite RESULTS.md

`make bench` runs the first line; `make bench ONLY="overhead cells"` the second.
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from machine import describe

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


@dataclass(frozen=True)
class Benchmark:
    name: str
    question: str
    arguments: tuple[str, ...]  # after `python benchmarks/<script>`
    script: str = ""  # benchmarks/<name>.py unless given
    minutes: int = 5  # about, on 2 cores
    data: str = ""  # a dataset it reads: `rnn-orch data fetch` puts it in data/<name> first
    gpu: bool = False  # needs a CUDA device: skipped (earlier results kept) without one

    @property
    def results(self) -> Path:
        return RESULTS / f"{self.name}.md"

    def command(self) -> list[str]:
        return [sys.executable, str(HERE / (self.script or f"{self.name}.py")),
                *self.arguments, "--out", str(self.results.relative_to(ROOT))]


# The speed benchmarks first, then the training-science results; each with the
# arguments its committed results were made with.
BENCHMARKS = (
    Benchmark("overhead", "rnn-orch's training step against a hand-written loop and plain "
              "DDP", (), minutes=15),
    Benchmark("overhead_bn_lstm", "the same with bn_lstm, whose statistics are "
              "all-reduced every time step", ("--cell", "bn_lstm", "--steps", "200", "--skip",
                                              "40", "--repeats", "1"),
              script="overhead.py", minutes=12),
    Benchmark("startup", "seconds from the command to the first step, against a bare "
              "ray.init()", ("--repeats", "2"), minutes=9),
    Benchmark("cells", "normalized cells against torch's fused ones, forward + backward",
              ("--batch", "64", "--steps", "100", "--hidden", "128", "--repeats", "11",
               "--threads", "2", "1"), minutes=2),
    Benchmark("validations", "validations every 50 steps against one at the end, under "
              "Ray Train's controller polls", (), minutes=5),
    Benchmark("parquet_pipeline", "Parquet through Ray Data against batches made in "
              "memory", ("--repeats", "3"), minutes=11),
    Benchmark("parquet_reads", "Ray Data's iterator: CPU per training batch, by the rows a "
              "read hands over", (), minutes=2),
    Benchmark("bucketing", "length bucketing of ragged Parquet rows against shuffled "
              "batches", (), minutes=6),
    Benchmark("packed_sequences", "packed against padded and bucketed batches",
              ("--repeats", "3", "--window", "8"), minutes=5),
    Benchmark("gpu_step", "on a GPU: rnn-orch's step against a plain loop, per cell and "
              "precision", (), minutes=3, gpu=True),
    Benchmark("packed_sequences_cuda", "on a GPU: packed against padded and bucketed "
              "batches (cuDNN)", ("--device", "cuda", "--repeats", "3", "--window", "8"),
              script="packed_sequences.py", minutes=1, gpu=True),
    Benchmark("forecast_pipeline", "the forecasting window pipeline: throughput and "
              "memory", ("--rows", "200000", "--series", "4", "--features", "3",
                         "--input-len", "168", "--horizon", "24", "--batch", "64",
                         "--block", "200", "--repeats", "7", "--threads", "1",
                         "--large-table", "data/household_power/household_power.parquet",
                         "--large-input-len", "336", "--seasons", "0", "60",
                         "--worlds", "1", "2"), minutes=3, data="household_power"),
    Benchmark("sweep_asha", "the shipped sweep with ASHA against the same sweep without "
              "early stopping", (), minutes=20),
    Benchmark("gradient_health", "vanishing and exploding gradients, made visible and "
              "beaten", (), minutes=4),
    Benchmark("curriculum", "length curricula against none on a long adding problem",
              ("--seq-len", "300", "--steps", "1500", "--seeds", "0", "1", "2",
               "--schedules", "none", "linear", "root"), minutes=22),
    Benchmark("forecast_beijing", "Beijing PM2.5 forecasts against the naive "
              "forecasters", ("--seeds", "0", "1", "2"), minutes=15),
    Benchmark("transfer_parking", "transfer between car parks against training from "
              "scratch", ("parking", "--seeds", "0", "1", "2"), script="transfer.py",
              minutes=15),
    Benchmark("transfer_traffic", "transfer between traffic sensors against training "
              "from scratch", ("traffic", "--seeds", "0", "1", "2"), script="transfer.py",
              minutes=15),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and stop")
    parser.add_argument("--gather", action="store_true",
                        help="run nothing; rewrite RESULTS.md from the results files")
    args = parser.parse_args()
    by_name = {benchmark.name: benchmark for benchmark in BENCHMARKS}
    if args.list:
        for b in BENCHMARKS:
            print(f"{b.name:22} ~{b.minutes:>2} min  {b.question}")
        return
    unknown = [name for name in args.names if name not in by_name]
    if unknown:
        sys.exit(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    chosen = [] if args.gather else [by_name[name] for name in args.names] or list(BENCHMARKS)

    outcome: dict[str, str] = {}
    has_gpu = torch.cuda.is_available()
    for benchmark in chosen:
        if benchmark.gpu and not has_gpu:
            outcome[benchmark.name] = "not run: needs a CUDA device"
            print(f"\n=== {benchmark.name}: {outcome[benchmark.name]}", flush=True)
            continue
        print(f"\n=== {benchmark.name} (about {benchmark.minutes} min): "
              f"{' '.join(benchmark.command()[1:])}", flush=True)
        started = time.monotonic()
        code = fetch(benchmark.data) or subprocess.call(benchmark.command(), cwd=ROOT)
        minutes = (time.monotonic() - started) / 60
        outcome[benchmark.name] = (f"measured now ({minutes:.0f} min)" if code == 0 else
                                   f"FAILED now (exit {code}); its earlier results are kept")
        print(f"=== {benchmark.name}: {outcome[benchmark.name]}", flush=True)

    (HERE / "RESULTS.md").write_text(gather(outcome))
    print(f"\nwrote {(HERE / 'RESULTS.md').relative_to(ROOT)}")
    failed = [name for name, said in outcome.items() if said.startswith("FAILED")]
    if failed:
        sys.exit(f"could not measure: {', '.join(failed)}")


def fetch(dataset: str) -> int:
    """Fetch `dataset` into data/<dataset> unless it is there; the exit code."""
    if not dataset or (ROOT / "data" / dataset).exists():
        return 0
    rnn_orch = Path(sys.executable).with_name("rnn-orch")
    return subprocess.call([str(rnn_orch), "data", "fetch", dataset, "--out",
                            f"data/{dataset}"], cwd=ROOT)


def gather(outcome: dict[str, str]) -> str:
    """RESULTS.md: an index of every benchmark, then each results file, its headings one
    level down (its title becomes a section) and its relative links pointing into
    results/."""
    lines = [
        "# Benchmark results",
        "",
        "Written by `benchmarks/run.py` (`make bench`) on "
        f"{datetime.date.today().isoformat()}, on: {describe()}. Each section below is "
        "one benchmark's results file, with the date, machine and command that made it; "
        "those not rerun this time keep their earlier figures.",
        "",
        "| benchmark | what it measures | this time |",
        "|---|---|---|",
    ]
    lines += [f"| [{b.name}](results/{b.name}.md) | {b.question} | "
              f"{outcome.get(b.name, 'kept from an earlier run')} |" for b in BENCHMARKS]
    for benchmark in BENCHMARKS:
        if not benchmark.results.exists():
            lines += ["", f"## {benchmark.name}", "", "No results yet: "
                      f"`.venv/bin/python benchmarks/run.py {benchmark.name}`."]
            continue
        text = benchmark.results.read_text().strip()
        text = re.sub(r"^#", "##", text, flags=re.MULTILINE)
        text = re.sub(r"\]\((?![a-z]+:|/|#)", "](results/", text)
        lines += ["", text]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
