"""What a finished sweep found: a ranked table of trials and the plots that explain it.

    summary.md                      trials ranked by the sweep's metric
    plots/<metric>_by_key.png       the metric against each searched key
    plots/learning_curves.png       the metric over steps, one line per trial

Pure functions of the trials' figures: the sweep driver collects them from Tune and
writes these files to the sweep's MLflow parent run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.sweep_file import Sweep

TOP_ROWS = 10  # printed at the end of a sweep; summary.md has them all


@dataclass(frozen=True)
class TrialRow:
    """One trial's outcome: its values of the searched keys and its last reported figures."""

    trial: str
    status: str  # completed, stopped early, error
    values: dict[str, Any]
    step: int
    score: float  # the sweep's metric at its last report (nan if it never reported)
    curve: tuple[tuple[int, float], ...]  # (step, metric) at every report


def status_of(error: bool, step: int, steps: int) -> str:
    if error:
        return "error"
    return "completed" if step >= steps else "stopped early"


def ranked(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    """Best first; trials without a score last."""
    sign = 1.0 if mode == "min" else -1.0
    return sorted(rows, key=lambda r: (math.isnan(r.score), sign * _finite(r.score)))


def markdown_table(rows: list[TrialRow], sweep: Sweep) -> str:
    keys = sweep.searched_keys()
    header = ["rank", "trial", "status", *keys, "step", sweep.metric]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for rank, row in enumerate(rows, start=1):
        cells = [str(rank), row.trial, row.status, *(_show(row.values.get(k)) for k in keys),
                 str(row.step), f"{row.score:.4g}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(rows: list[TrialRow], sweep: Sweep, directory: Path) -> Path:
    """summary.md and the plots, in `directory`; returns summary.md's path."""
    (directory / "plots").mkdir(parents=True, exist_ok=True)
    summary = directory / "summary.md"
    summary.write_text(f"# Sweep {sweep.name}: trials ranked by {sweep.metric} "
                       f"({sweep.mode})\n\n" + markdown_table(rows, sweep))
    plot_metric_by_key(rows, sweep, directory / "plots" / f"{sweep.metric}_by_key.png")
    plot_learning_curves(rows, sweep, directory / "plots" / "learning_curves.png")
    return summary


def plot_metric_by_key(rows: list[TrialRow], sweep: Sweep, path: Path) -> None:
    """One panel per searched key: each trial's last metric against its value. Hollow
    markers are trials a scheduler stopped early."""
    from matplotlib.figure import Figure  # loaded only by sweeps that draw
    from matplotlib.ticker import NullFormatter

    keys = sweep.searched_keys()
    figure = Figure(figsize=(4 * len(keys), 3.5), layout="tight")
    axes = figure.subplots(1, len(keys), squeeze=False)
    for axis, key in zip(axes[0], keys, strict=True):
        values = [row.values.get(key) for row in rows]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if numeric:
            xs = values
            draw = sweep.space.get(key) or sweep.scheduler.mutations.get(key)
            if draw is not None and draw.kind == "loguniform":
                axis.set_xscale("log")
                axis.xaxis.set_minor_formatter(NullFormatter())  # labels would overlap
        else:
            labels = sorted({_show(v) for v in values})
            xs = [labels.index(_show(v)) for v in values]
            axis.set_xticks(range(len(labels)), labels, rotation=30)
        for x, row in zip(xs, rows, strict=True):
            done = row.status == "completed"
            axis.scatter([x], [row.score], facecolors="C0" if done else "none",
                         edgecolors="C0")
        axis.set_xlabel(key)
        axis.set_ylabel(sweep.metric)
        if sweep.metric.endswith("loss"):  # losses span decades; the good ones sit low
            axis.set_yscale("log")
    figure.suptitle(f"{sweep.name}: {sweep.metric} by searched key (hollow: stopped early)")
    figure.savefig(path, dpi=100)


def plot_learning_curves(rows: list[TrialRow], sweep: Sweep, path: Path) -> None:
    from matplotlib.figure import Figure  # loaded only by sweeps that draw

    figure = Figure(figsize=(7, 4), layout="tight")
    axis = figure.subplots()
    for row in rows:
        if row.curve:
            steps, scores = zip(*row.curve, strict=True)
            axis.plot(steps, scores, label=row.trial, linestyle="-" if
                      row.status == "completed" else "--")
    axis.set_xlabel("step")
    axis.set_ylabel(sweep.metric)
    if sweep.metric.endswith("loss"):
        axis.set_yscale("log")
    axis.set_title(f"{sweep.name}: learning curves (dashed: stopped early)")
    if len(rows) <= TOP_ROWS:
        axis.legend(fontsize="small")
    figure.savefig(path, dpi=100)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _finite(score: float) -> float:
    return 0.0 if math.isnan(score) else score
