"""Gradient health on the adding problem: vanishing through time, exploding without clipping.

(a) Vanishing. A tanh RNN and an LSTM (configs/adding.yaml otherwise) train at length T
    with `diagnostics.every` on. The figures come back from MLflow: grad_time_ratio =
    ||dL/dh_0|| / ||dL/dh_{T-1}|| over training, and the heatmaps of log10 ||dL/dh_t||
    (training step x time step), side by side.
(b) Exploding. An IRNN (rnn_relu, identity recurrent weights) with a large learning rate
    and the divergence guard off, once with clip.policy=none and once with norm.
(c) Cost. One diagnostic measurement against one training step of the same model, timed
    in this process, so the overhead of a given diagnostics.every can be read off.

Every run goes through the real driver (Ray Train, MLflow in a scratch SQLite store),
one Ray Train worker by default: the lightest real run on a small machine. Writes a
Markdown report and two PNGs next to it.

    .venv/bin/python benchmarks/gradient_health.py          # about 4 minutes on 2 cores
    .venv/bin/python benchmarks/gradient_health.py --seq-len 150 --steps 3000 --workers 2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import describe
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from models import build_model
from orchestrator import driver, objectives
from orchestrator.clipping import Clipper
from orchestrator.config import Config, load_config
from orchestrator.diagnostics import MATRIX_FILE, Diagnostics, read_matrix, save_figure
from orchestrator.optimizers import build_optimizer
from orchestrator.precision import Precision
from orchestrator.training_step import Place, clip_gradients, forward_backward
from orchestrator.worker import model_spec
from pipelines.parquet import TaskInfo
from pipelines.synthetic import make_task, rng_for

ROOT = Path(__file__).resolve().parents[1]
SOLVED = 0.01  # val MSE under which the adding problem counts as solved (baseline 0.167)


@dataclasses.dataclass
class Run:
    label: str
    config: Config
    outcome: driver.Outcome

    def history(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one metric, read back from the run's MLflow store, which
        keeps an infinite value as the largest float: it is made infinite again."""
        client = MlflowClient(self.config.tracking.uri)
        points = sorted((m.step, m.value) for m in
                        client.get_metric_history(self.outcome.run_id, key))
        steps, values = (np.array(column) for column in zip(*points, strict=True))
        infinite = np.abs(values) >= sys.float_info.max
        return steps.astype(int), np.where(infinite, np.copysign(np.inf, values), values)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=100, help="adding problem length T")
    parser.add_argument("--steps", type=int, default=2000, help="(a): steps of each run")
    parser.add_argument("--every", type=int, default=25, help="(a): diagnostics.every")
    parser.add_argument("--explode-steps", type=int, default=600, help="(b): steps of each run")
    parser.add_argument("--explode-lr", type=float, default=0.01, help="(b): optim.lr (Adam)")
    parser.add_argument("--workers", type=int, default=1, help="scaling.num_workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/gradient_health.md"))
    args = parser.parse_args()

    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    cost = diagnostic_cost(load_config(ROOT / "configs/adding.yaml", [
        f"task.seq_len={args.seq_len}", "model.cell=lstm"]))
    home = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # MLflow keeps a SQLite store's artifacts under ./mlruns
        vanishing = [train(args, Path(scratch), f"vanishing-{cell}", [
            f"model.cell={cell}", f"train.steps={args.steps}",
            f"train.checkpoint_every={args.steps}", f"diagnostics.every={args.every}"])
            for cell in ("rnn_tanh", "lstm")]
        exploding = [train(args, Path(scratch), f"exploding-clip-{policy}", [
            "model.cell=rnn_relu", f"optim.lr={args.explode_lr}", "guard.enabled=false",
            f"clip.policy={policy}", "clip.threshold=1.0", f"train.steps={args.explode_steps}",
            f"train.checkpoint_every={args.explode_steps}"]) for policy in ("none", "norm")]
        heatmaps = out.with_name(out.stem + "_heatmaps.png")
        save_figure(heatmaps, [heatmap_panel(run, Path(scratch)) for run in vanishing])
        curves = out.with_name(out.stem + "_clipping.png")
        plot_clipping(curves, exploding)
        os.chdir(home)
    report = write_report(args, vanishing, exploding, cost, heatmaps.name, curves.name)
    out.write_text(report)
    print(report)


def train(args: argparse.Namespace, scratch: Path, label: str, overrides: list[str]) -> Run:
    """configs/adding.yaml at length T with `overrides`, validation every 100 steps (so
    step counts are multiples of 100)."""
    config = driver.resolve(load_config(ROOT / "configs/adding.yaml", [
        f"seed={args.seed}", f"task.seq_len={args.seq_len}", "train.eval_every=100",
        *overrides, f"scaling.num_workers={args.workers}", f"run.name={label}",
        f"run.storage_path={scratch / 'runs'}", f"tracking.uri=sqlite:///{scratch}/mlflow.db",
        "tracking.experiment=benchmark-gradient-health",
    ]), {})
    outcome = driver.train(config)
    print(f"{label}: val_loss {outcome.final['val_loss']:.4g} in {outcome.seconds:.0f} s",
          flush=True)
    return Run(label, config, outcome)


def heatmap_panel(run: Run, scratch: Path) -> tuple[str, np.ndarray, np.ndarray]:
    client = MlflowClient(run.config.tracking.uri)
    local = client.download_artifacts(run.outcome.run_id, f"diagnostics/{MATRIX_FILE}",
                                      str(scratch / run.label))
    steps, matrix = read_matrix(local)
    return f"{run.config.model.cell}, T={run.config.task.seq_len}", steps, matrix


def plot_clipping(path: Path, runs: list[Run]) -> None:
    """grad_norm (before clipping) and train_loss per step, one line per clip policy."""
    figure = Figure(figsize=(11, 4), layout="constrained")
    axes = figure.subplots(1, 2)
    for ax, key in zip(axes, ("grad_norm", "train_loss"), strict=True):
        for run in runs:
            steps, values = run.history(key)
            ax.plot(steps, values, lw=0.8, label=f"clip.policy={run.config.clip.policy}")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_title(f"{key}" + (" (before clipping)" if key == "grad_norm" else "")
                     + "; gaps: not finite")
        ax.legend()
    cell, lr = runs[0].config.model.cell, runs[0].config.optim.lr
    figure.suptitle(f"{cell}, adam lr={lr:g}, guard off, T={runs[0].config.task.seq_len}")
    figure.savefig(path, dpi=110)


def quarters(run: Run, key: str) -> list[tuple[str, float]]:
    """(steps a-b, median of `key`) over each quarter of the run's diagnostic steps."""
    steps, values = run.history(key)
    return [(f"{chunk_steps[0]}-{chunk_steps[-1]}", float(np.median(chunk)))
            for chunk_steps, chunk in zip(np.array_split(steps, 4), np.array_split(values, 4),
                                          strict=True)]


def vanishing_table(runs: list[Run]) -> list[str]:
    """One row per cell: the result, and grad_time_ratio (and for gated cells the
    forget or update gate's saturation) quarter by quarter."""
    spans = [span for span, _ in quarters(runs[0], "grad_time_ratio")]
    lines = ["| cell | final val_loss | first val_loss < 0.01 at step | " +
             " | ".join(f"grad_time_ratio, steps {span}" for span in spans) + " | wall s |",
             "| --- " * (len(spans) + 4) + "|"]
    for run in runs:
        val_steps, val = run.history("val_loss")
        solved = next((int(s) for s, v in zip(val_steps, val, strict=True) if v < SOLVED),
                      "never")
        ratios = " | ".join(f"{median:.2g}" for _, median in quarters(run, "grad_time_ratio"))
        lines.append(f"| {run.config.model.cell} | {run.outcome.final['val_loss']:.4f} | "
                     f"{solved} | {ratios} | {run.outcome.seconds:.0f} |")
    gated = [run for run in runs if run.config.model.cell == "lstm"]
    for run in gated:
        saturation = " | ".join(f"{median:.2f}" for _, median in
                                quarters(run, "gate_saturation/forget"))
        lines.append(f"| {run.config.model.cell}: gate_saturation/forget | | | {saturation} | |")
    return lines


def exploding_row(run: Run) -> str:
    steps, grad_norms = run.history("grad_norm")
    _, losses = run.history("train_loss")
    non_finite = ~np.isfinite(grad_norms) | ~np.isfinite(losses)
    first = steps[non_finite][0] if non_finite.any() else "-"
    largest = grad_norms[np.isfinite(grad_norms)].max()
    return (f"| {run.config.clip.policy} | {run.outcome.final['val_loss']:.4g} | "
            f"{largest:.3g} | {int(non_finite.sum())} | {first} | "
            f"{np.median(losses[-100:]):.4g} | {run.outcome.seconds:.0f} |")


def diagnostic_cost(config: Config, repeats: int = 20) -> dict[str, float]:
    """Milliseconds of one training step (forward, backward, clip; batch_size rows) and
    of one diagnostic measurement (diagnostics.rows rows, unrolled), same model, here, on
    one torch thread as a Ray Train worker of one CPU runs them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return timed_step_and_measurement(config, repeats)
    finally:
        torch.set_num_threads(threads)


def timed_step_and_measurement(config: Config, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    task = make_task(config.task.name, config.task.seq_len)
    spec = model_spec(config, TaskInfo.of(task))
    model = build_model(spec)
    optimizer = build_optimizer("adam", model.parameters(), 1e-3, 0.0, 0.9)
    place, precision = Place(0, 1, torch.device("cpu")), Precision("fp32", torch.device("cpu"))
    clipper = Clipper("norm", 1.0)
    diagnostics = Diagnostics(1, config.diagnostics.rows, spec.cell, objectives.of(spec.head))
    batch = {k: torch.from_numpy(v) for k, v in
             task.generate(rng_for(0, 0, 0), config.train.batch_size).items()}

    def step() -> None:
        forward_backward(model, optimizer, batch, precision, objectives.of(spec.head), place)
        clip_gradients(model, clipper)

    step_ms = best_ms(step, repeats)
    measure_ms = best_ms(lambda: diagnostics.measure(0, model, batch), repeats)
    return {"step_ms": step_ms, "measure_ms": measure_ms}


def best_ms(function, repeats: int) -> float:
    """The median of `repeats` timings after one warm-up call, in milliseconds."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def write_report(args, vanishing: list[Run], exploding: list[Run], cost: dict[str, float],
                 heatmaps: str, curves: str) -> str:
    command = "python benchmarks/gradient_health.py " + " ".join(sys.argv[1:])
    every = args.every
    overhead = cost["measure_ms"] / (every * cost["step_ms"])
    lines = [
        f"# Gradient health on the adding problem, T={args.seq_len}",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {describe()}, torch {torch.__version__}; scaling.num_workers={args.workers}, "
        f"seed {args.seed}, "
        "one run per row. configs/adding.yaml otherwise (hidden 64, Adam, batch 64). "
        f"val_loss is the MSE at T; a model that learned nothing scores 0.167; solved means "
        f"below {SOLVED}.",
        "",
        f"## (a) Vanishing gradients: tanh RNN against LSTM, {args.steps} steps, "
        f"diagnostics.every={every}",
        "",
        "grad_time_ratio = ||dL/dh_0|| / ||dL/dh_{T-1}|| of the top layer, measured on "
        "rows of the training batch (`diagnostics.rows`); the table gives its median over "
        "each quarter of the run (and the LSTM's forget-gate saturation likewise).",
        "",
        *vanishing_table(vanishing),
        "",
        f"![log10 of the gradient through time, tanh RNN and LSTM]({heatmaps})",
        "",
        f"## (b) Exploding gradients: rnn_relu, Adam lr={args.explode_lr:g}, guard off, "
        f"{args.explode_steps} steps",
        "",
        "| clip.policy | final val_loss | largest finite grad_norm | steps with a non-finite "
        "loss or gradient | the first of them | median train_loss, last 100 steps | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(exploding_row(run) for run in exploding),
        "",
        f"![grad_norm and train_loss with and without clipping]({curves})",
        "",
        "## (c) What the diagnostics cost",
        "",
        "Timed in the benchmark process on one torch thread, the LSTM of (a): "
        f"one training step (forward, backward, clip; {vanishing[1].config.train.batch_size} "
        f"rows) {cost['step_ms']:.1f} ms; one diagnostic measurement (per-layer norms, the "
        f"unrolled pass over {vanishing[1].config.diagnostics.rows} rows, gate saturation) "
        f"{cost['measure_ms']:.1f} ms. At diagnostics.every={every} that adds "
        f"{100 * overhead:.1f}% to rank 0's time (heatmap drawing at checkpoints not "
        "included).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
