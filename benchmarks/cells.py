"""How much slower are the normalized cells than torch's fused ones? Side by side, one run.

Times one training step's forward and backward through each recurrent layer (fused
lstm/gru, ln_lstm/ln_gru/bn_lstm, lstm with weight drop, and the Python time loops of
the normalized cells, which their compiled kernels replace on CPU,
`models.compiled_loops`) on the same random batch, CPU by default. Repetitions go
round-robin over the cells, so a change in machine load hits every cell alike; the
median is reported with its ratio to the matching fused cell.
It runs with the malloc settings of rnn-orch's training workers, as the cells run in
training (`machine.with_workers_malloc`). Writes a Markdown table per thread count with
the command, the machine, the malloc settings and the load it ran under.

    .venv/bin/python benchmarks/cells.py
    .venv/bin/python benchmarks/cells.py --batch 64 --steps 100 --hidden 128 --repeats 11 \\
        --threads 2 1 --out benchmarks/results/cells.md        # about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine import describe, with_workers_malloc

from models.cells import build_recurrent
from models.init import initialize_recurrent
from models.regularization import weight_dropped

ROOT = Path(__file__).resolve().parents[1]
FUSED_REFERENCE = {"lstm": "lstm", "gru": "gru", "ln_lstm": "lstm", "ln_gru": "gru",
                   "bn_lstm": "lstm"}
WEIGHT_DROP = 0.5
COMPILED = ("ln_lstm", "ln_gru", "bn_lstm")  # cells whose time loop is compiled on CPU


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="sequences per batch (B)")
    parser.add_argument("--steps", type=int, default=100, help="sequence length (T)")
    parser.add_argument("--features", type=int, default=32, help="input features (F)")
    parser.add_argument("--hidden", type=int, default=128, help="hidden units (H)")
    parser.add_argument("--layers", type=int, default=1, help="stacked layers")
    parser.add_argument("--repeats", type=int, default=11, help="timed steps per cell")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per cell first")
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                        help="torch intra-op thread counts, one table each")
    parser.add_argument("--cells", nargs="+", default=list(FUSED_REFERENCE),
                        choices=list(FUSED_REFERENCE))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/cells.md"))
    args = parser.parse_args()
    args.malloc = with_workers_malloc()

    torch.manual_seed(0)
    inputs = torch.randn(args.batch, args.steps, args.features)
    sections = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        steps = {cell: training_step(cell, args) for cell in args.cells}
        if "lstm" in args.cells:
            steps["lstm + weight_drop"] = training_step("lstm", args, weight_drop=WEIGHT_DROP)
        for cell in COMPILED:
            if cell in args.cells:
                steps[f"{cell}, Python time loop"] = training_step(cell, args, compiled=False)
        load_before = os.getloadavg()
        seconds = time_round_robin(steps, inputs, args.warmup, args.repeats)
        sections.append(table(args, threads, seconds, load_before, os.getloadavg()))
        print(sections[-1], flush=True)
    report = header(args) + "\n".join(sections)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)


def training_step(cell: str, args: argparse.Namespace, weight_drop: float = 0.0,
                  compiled: bool = True) -> Callable[[torch.Tensor], None]:
    """Forward and backward of one batch through a freshly initialised layer stack;
    ``compiled=False`` keeps a normalized cell on its Python time loop."""
    rnn = build_recurrent(cell, args.features, args.hidden, args.layers, dropout=0.0)
    initialize_recurrent(rnn, cell)
    rnn.train()
    if not compiled:
        rnn.compiled = False

    def step(inputs: torch.Tensor) -> None:
        if weight_drop:
            outputs, _ = weight_dropped(rnn, inputs, weight_drop)
        else:
            outputs, _ = rnn(inputs)
        outputs.square().mean().backward()
        rnn.zero_grad(set_to_none=True)

    return step


def time_round_robin(steps: dict[str, Callable[[torch.Tensor], None]], inputs: torch.Tensor,
                     warmup: int, repeats: int) -> dict[str, list[float]]:
    for step in steps.values():
        for _ in range(warmup):
            step(inputs)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            finish_gpu_work()
            start = time.perf_counter()
            step(inputs)
            finish_gpu_work()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def finish_gpu_work() -> None:
    """Wait for the GPU's queued kernels, so a step's time is its kernels' (no-op on CPU)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def header(args: argparse.Namespace) -> str:
    command = "python benchmarks/cells.py " + " ".join(sys.argv[1:])
    return "\n".join([
        f"# Cell speed: forward + backward, B={args.batch}, T={args.steps}, "
        f"F={args.features}, H={args.hidden}, {args.layers} layer(s)",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Machine: {describe()}; torch {torch.__version__}. Median of {args.repeats} "
        f"steps per cell after {args.warmup} warm-up steps; ratio = median / median of "
        "the fused cell of the same family (lstm or gru). Cells take turns step by "
        "step, so a change in load hits them alike; a load average above the number of "
        "cores means other processes competed for them, which makes times noisier. "
        f"Malloc: {args.malloc}.",
        "",
    ]) + "\n"


def table(args: argparse.Namespace, threads: int, seconds: dict[str, list[float]],
          load_before: tuple[float, ...], load_after: tuple[float, ...]) -> str:
    median = {name: statistics.median(times) for name, times in seconds.items()}
    tokens = args.batch * args.steps
    lines = [
        f"## {threads} intra-op thread(s)",
        "",
        f"Load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after.",
        "",
        "| cell | median ms | min ms | ratio to fused | tokens/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, times in seconds.items():
        reference = FUSED_REFERENCE[name.split()[0].rstrip(",")]
        ratio = (f"{median[name] / median[reference]:.2f}x" if reference in median else "n/a")
        lines.append(f"| {name} | {1e3 * median[name]:.1f} | {1e3 * min(times):.1f} | "
                     f"{ratio} | {tokens / median[name]:,.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
