"""On a GPU: rnn-orch's training step against a plain PyTorch loop, per cell and precision.

Each cell (fused lstm and gru on cuDNN; ln_lstm, ln_gru, bn_lstm step by step) trains the
same `SequenceModel` on the adding problem in fp32, bf16 and fp16, two ways, from the
same batches (made on the host with numpy, as a worker makes them, then copied over):
- plain: autocast (and for fp16 a GradScaler), forward, loss, backward,
  `clip_grad_norm_`, Adam step; nothing read back to the host;
- rnn-orch: the worker's own step (`orchestrator.training_step`): `forward_backward`,
  `clip_gradients`, `read_figures`, the divergence guard's `judge`, then
  `Precision.step`. It reads the step's figures back once a step, since the guard
  decides on the loss and the gradient norm.

The ways take turns, `--repeats` times; each is timed over `--steps` steps after
`--warmup` (normalized cells: a quarter of each), between two `torch.cuda.synchronize()`
calls, and the median tokens/s is kept. Needs CUDA, not Ray or MLflow;
exits non-zero when it could not measure. Target: rnn-orch >= 0.95 of plain for the
fused cells.

    python benchmarks/gpu_step.py --out benchmarks/results/gpu_step.md     # ~3 min on an H200
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from cells import FUSED_REFERENCE

from models import ModelSpec, build_model
from orchestrator import objectives
from orchestrator.clipping import Clipper
from orchestrator.config import Config
from orchestrator.guard import DivergenceGuard
from orchestrator.precision import Precision
from orchestrator.training_step import (
    Place,
    clip_gradients,
    forward_backward,
    judge,
    read_figures,
)
from pipelines.synthetic import AddingProblem

TARGET = 0.95
FUSED = frozenset(FUSED_REFERENCE.values())  # lstm, gru
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru", "ln_lstm", "ln_gru",
                                                       "bn_lstm"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the results as Markdown here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_step.py needs a CUDA device; torch sees none")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True

    task = AddingProblem(args.seq_len)
    rng = np.random.default_rng(0)
    batches = [task.generate(rng, args.batch) for _ in range(16)]  # host-side, reused
    rows = []
    for cell in args.cells:
        fused = cell in FUSED
        steps, warmup = (args.steps, args.warmup) if fused else (
            max(args.steps // 4, 1), max(args.warmup // 4, 1))
        for precision in args.precisions:
            ways = {"plain": plain_step(cell, precision, args, device),
                    "rnn-orch": rnn_orch_step(cell, precision, args, device)}
            measured: dict[str, list[float]] = {way: [] for way in ways}
            for _ in range(args.repeats):
                for way, step in ways.items():
                    measured[way].append(tokens_per_second(step, batches, steps, warmup,
                                                           args))
            median = {way: statistics.median(values) for way, values in measured.items()}
            rows.append((cell, precision, median["plain"], median["rnn-orch"]))
            print(f"  {cell} {precision}: plain {median['plain']:,.0f}, rnn-orch "
                  f"{median['rnn-orch']:,.0f} tokens/s", file=sys.stderr, flush=True)

    lines = report(rows, args)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


def spec(cell: str, args) -> ModelSpec:
    return ModelSpec(cell=cell, input_size=2, hidden_size=args.hidden, num_layers=1,
                     dropout=0.0, head="regression", output_size=1)


def fresh_model(cell: str, args, device: torch.device):
    torch.manual_seed(0)
    model = build_model(spec(cell, args)).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def plain_step(cell: str, precision: str, args, device: torch.device) -> Callable:
    """A hand-written mixed-precision step, with no host reads."""
    model, optimizer = fresh_model(cell, args, device)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    threshold = Config().clip.threshold

    def step(batch: dict[str, np.ndarray]) -> None:
        inputs, lengths, targets = (torch.from_numpy(batch[name]).to(device, non_blocking=True)
                                    for name in ("inputs", "lengths", "targets"))
        with torch.autocast("cuda", dtype=DTYPES.get(precision, torch.float32),
                            enabled=precision in DTYPES):
            outputs = model(inputs, lengths)
        loss = torch.nn.functional.mse_loss(outputs.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), threshold)
        scaler.step(optimizer)
        scaler.update()

    return step


def rnn_orch_step(cell: str, precision: str, args, device: torch.device) -> Callable:
    """The step `orchestrator.worker` runs, with the default clipping and guard."""
    model, optimizer = fresh_model(cell, args, device)
    config = Config()
    run_precision = Precision(precision, device)
    clipper = Clipper(config.clip.policy, config.clip.threshold)
    g = config.guard
    guard = DivergenceGuard(g.spike_factor, g.window, g.patience, g.max_rollbacks)
    objective = objectives.of("regression", 1)
    place = Place(0, 1, device)

    def step(batch: dict[str, np.ndarray]) -> None:
        tensors = {name: torch.from_numpy(array) for name, array in batch.items()}
        figures = forward_backward(model, optimizer, tensors, run_precision, objective, place)
        figures = read_figures(figures | clip_gradients(model, clipper)
                               | run_precision.figures())
        verdict = judge(guard, run_precision, figures)
        if verdict and verdict.cause:
            sys.exit(f"{cell} {precision}: the guard judged a step {verdict.cause}; the "
                     "benchmark trains a healthy model and should see none")
        run_precision.step(optimizer)

    return step


def tokens_per_second(step: Callable, batches: list, steps: int, warmup: int, args) -> float:
    for i in range(warmup):
        step(batches[i % len(batches)])
    torch.cuda.synchronize()
    started = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    torch.cuda.synchronize()
    return steps * args.batch * args.seq_len / (time.perf_counter() - started)


def report(rows: list[tuple[str, str, float, float]], args) -> list[str]:
    command = " ".join(["python benchmarks/gpu_step.py", *sys.argv[1:]])
    lines = [
        "# On a GPU: rnn-orch's training step against a plain PyTorch loop",
        "",
        f"- GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}, cuDNN "
        f"{torch.backends.cudnn.version()}; Python {platform.python_version()}",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Command: `{command}`",
        f"- Model: one layer, H={args.hidden}, adding problem T={args.seq_len}, batch "
        f"{args.batch}; Adam; clip.policy=norm; batches made on the host and copied",
        f"- Timed: {args.steps} steps after {args.warmup} (normalized cells a quarter of "
        f"each), median of {args.repeats} repeats taking turns",
        "",
        "| cell | precision | plain tokens/s | rnn-orch tokens/s | rnn-orch / plain | "
        "against fused fp32 (rnn-orch) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    fp32 = {cell: orch for cell, precision, _, orch in rows if precision == "fp32"}
    for cell, precision, plain, orch in rows:
        reference = fp32.get(FUSED_REFERENCE[cell])
        against = f"{orch / reference:.2f}" if reference else ""
        lines.append(f"| {cell} | {precision} | {plain:,.0f} | {orch:,.0f} | "
                     f"{orch / plain:.2f} | {against} |")
    fused = [orch / plain for cell, _, plain, orch in rows if cell in FUSED]
    if fused:
        lines += ["", f"Fused cells, rnn-orch / plain: {min(fused):.2f} to {max(fused):.2f} "
                  f"(target >= {TARGET}: {'met' if min(fused) >= TARGET else 'NOT met'})."]
    return lines


if __name__ == "__main__":
    main()
