"""Do packed sequences pay on torch's fused cells, with and without length bucketing?

Times forward and backward of torch's fused LSTM and GRU over the same ragged rows (lengths
drawn evenly from [--min-len, --max-len]) four ways:
- padded, shuffled: batches of rows as they come, every row run to its batch's longest
  (what rnn-orch's models do: the head reads each row's output at its own last step);
- packed, shuffled: the same batches through `pack_padded_sequence`, so the cell computes
  each row's real steps only;
- padded, bucketed / packed, bucketed: the rows of the --window batches sorted by length
  first and cut into batches, as `task.bucket_batches` does.

One repetition runs all --window batches of a way; ways take turns repetition by
repetition, so a change in machine load hits them alike. The median is reported with its
ratio to padded, shuffled.

    .venv/bin/python benchmarks/packed_sequences.py                # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/packed_sequences.py --out benchmarks/results/packed_sequences.md
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from cells import time_round_robin
from machine import describe
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.cells import build_recurrent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-len", type=int, default=10)
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64, help="rows per batch")
    parser.add_argument("--window", type=int, default=8, help="batches sorted together")
    parser.add_argument("--features", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru"])
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (cuDNN's kernels)")
    parser.add_argument("--out", type=Path, help="write the results as Markdown here")
    args = parser.parse_args()

    torch.manual_seed(0)
    lengths = np.random.default_rng(0).integers(args.min_len, args.max_len + 1,
                                                size=args.window * args.batch)
    device = torch.device(args.device)
    layouts = {"shuffled": batches_of(lengths, args, device), "bucketed": batches_of(
        np.sort(lengths), args, device)}
    lines = header(args, lengths)
    for cell in args.cells:
        rnn = build_recurrent(cell, args.features, args.hidden, 1, dropout=0.0).to(device)
        ways = {f"{how}, {layout}": epoch_of(rnn, batches, packed=how == "packed")
                for layout, batches in layouts.items() for how in ("padded", "packed")}
        seconds = time_round_robin(ways, None, warmup=1, repeats=args.repeats)
        lines += table(cell, seconds, int(lengths.sum()), layouts)
        print("\n".join(lines[-8:]), flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


def batches_of(lengths: np.ndarray, args,
               device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs padded to the batch's longest row, on `device`; lengths, on the host, where
    packing reads them) of each batch of `lengths`."""
    batches = []
    for start in range(0, len(lengths), args.batch):
        rows = torch.from_numpy(lengths[start:start + args.batch])
        inputs = torch.randn(len(rows), int(rows.max()), args.features)
        inputs[torch.arange(inputs.shape[1]) >= rows[:, None]] = 0.0
        batches.append((inputs.to(device), rows))
    return batches


def epoch_of(rnn: torch.nn.Module, batches, packed: bool) -> Callable[[None], None]:
    """Forward and backward of every batch; the loss reads each row's last real output."""

    def run(_: None) -> None:
        for inputs, lengths in batches:
            if packed:
                sequence = pack_padded_sequence(inputs, lengths, batch_first=True,
                                                enforce_sorted=False)
                outputs, _ = pad_packed_sequence(rnn(sequence)[0], batch_first=True)
            else:
                outputs, _ = rnn(inputs)
            rows = torch.arange(len(lengths), device=outputs.device)
            last = outputs[rows, lengths.to(outputs.device) - 1]
            last.square().mean().backward()
            rnn.zero_grad(set_to_none=True)

    return run


def header(args, lengths: np.ndarray) -> list[str]:
    command = " ".join([".venv/bin/python benchmarks/packed_sequences.py", *sys.argv[1:]])
    return [
        "# Packed sequences against padded ones, torch's fused cells",
        "",
        f"- Machine: {describe()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads",
        f"- Device: {args.device}" + (f" ({torch.cuda.get_device_name()}, cuDNN "
                                       f"{torch.backends.cudnn.version()})"
                                       if args.device.startswith("cuda") else ""),
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Command: `{command}`",
        f"- Rows: {len(lengths)} of lengths {args.min_len} to {args.max_len} "
        f"({int(lengths.sum()):,} real steps), {args.features} features, batches of "
        f"{args.batch}; H={args.hidden}, one layer",
        f"- Median of {args.repeats} passes over all {args.window} batches, forward and "
        "backward; the ways take turns pass by pass",
        "",
    ]


def table(cell: str, seconds: dict[str, list[float]], real_steps: int,
          layouts: dict[str, list]) -> list[str]:
    median = {way: statistics.median(times) for way, times in seconds.items()}
    reference = median["padded, shuffled"]
    computed = {layout: sum(inputs.shape[0] * inputs.shape[1] for inputs, _ in batches)
                for layout, batches in layouts.items()}
    lines = [f"## {cell}", "",
             "| way | padding efficiency | ms a pass | real steps/s | against padded, shuffled |",
             "|---|---:|---:|---:|---:|"]
    for way, value in median.items():
        layout = way.split(", ")[1]
        efficiency = 1.0 if way.startswith("packed") else real_steps / computed[layout]
        lines.append(f"| {way} | {efficiency:.2f} | {1e3 * value:,.0f} | "
                     f"{real_steps / value:,.0f} | {reference / value:.2f}x |")
    return [*lines, ""]


if __name__ == "__main__":
    main()
