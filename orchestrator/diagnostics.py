"""Gradient diagnostics: where the gradient goes, layer by layer and back through time.

Every `diagnostics.every` steps, rank 0 measures, between backward and clipping:

    grad_norm/rnn_l{k}_ih, grad_norm/rnn_l{k}_hh, grad_norm/head
        the norm of the training gradient (all-reduced, unscaled, not yet clipped) of
        each layer's input projection, recurrent weights and the head
    grad_time_first, grad_time_last, grad_time_ratio
        ||dL/dh_t|| of the top layer at the first and the last time step, and first/last:
        near 0, the gradient vanishes before it reaches the start of the sequence
    gate_saturation/<gate>
        for gated cells, the fraction of gate activations below 0.05 or above 0.95:
        a saturated gate passes (almost) no gradient through its own derivative

The through-time figures need every h_t in the autograd graph, which the fused kernels
hide, so the first `diagnostics.rows` rows of the step's batch go through the same
weights again, unrolled (`models.unrolled.unroll`), and `torch.autograd.grad` takes the
loss's gradient with respect to each h_t. That pass uses the unwrapped module (no DDP
collectives: the other ranks do nothing extra) and never touches the parameters'
`.grad`, so training is unchanged. It runs in eval mode and float32: it measures the
network itself, not one draw of its dropout masks, and eval mode also guarantees it
leaves no trace (no RNG draws, no normalization statistics updated).

Each measurement adds a row ||dL/dh_t|| for t = 0..T-1 to a matrix (training step x time
step) that `save` writes as a heatmap PNG of log10 ||dL/dh_t|| and as CSV (re-plot with
`read_matrix` and `draw_heatmap`); the worker uploads both at every checkpoint. The
matrix is part of the checkpoint, so a resumed run keeps one picture.

With `diagnostics.every: 0` (the default) none of this exists: no object, no hook, no pass.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from models.unrolled import unroll
from orchestrator import objectives

SATURATED_BELOW, SATURATED_ABOVE = 0.05, 0.95
HEATMAP_FILE, MATRIX_FILE = "grad_through_time.png", "grad_through_time.csv"
DISPLAY_FLOOR = 1e-30  # log10 of an exactly vanished gradient is drawn at -30, not -inf


class Diagnostics:
    """Rank 0's diagnostics of one run, and the through-time matrix they accumulate."""

    def __init__(self, every: int, rows: int, cell: str, objective: objectives.Objective):
        self.every, self.rows, self.cell, self.objective = every, rows, cell, objective
        self.steps: list[int] = []
        self.norms: list[list[float]] = []

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def measure(self, step: int, model: torch.nn.Module,
                batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """The figures of one step. Call after backward and before clipping, with the
        unwrapped model and the step's batch."""
        figures = layer_grad_norms(model)
        device = next(model.parameters()).device
        rows = {name: tensor[:self.rows].to(device) for name, tensor in batch.items()}
        norms, saturation = through_time(model, self.cell, self.objective, rows)
        self.steps.append(step)
        self.norms.append(norms.tolist())
        first, last = norms[0].item(), norms[-1].item()
        figures |= {"grad_time_first": first, "grad_time_last": last,
                    "grad_time_ratio": first / last if last > 0 else float("nan")}
        return figures | {f"gate_saturation/{gate}": value for gate, value in saturation.items()}

    def save(self, directory: Path) -> None:
        """Write the heatmap and the matrix it is drawn from into `directory` (after at
        least one `measure`)."""
        steps, matrix = np.array(self.steps), padded(self.norms)
        write_matrix(directory / MATRIX_FILE, steps, matrix)
        title = f"{self.cell}: gradient through time"
        save_figure(directory / HEATMAP_FILE, [(title, steps, matrix)])

    def state_dict(self) -> dict:
        return {"steps": list(self.steps), "norms": [list(row) for row in self.norms]}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.norms = list(state["steps"]), [list(row) for row in state["norms"]]


def parameter_group(name: str) -> str:
    """The metric a parameter's gradient counts towards: `head` for the head's,
    `rnn_l{k}_{ih|hh}` for layer k's input-side and recurrent-side parameters.

    torch's fused modules name them `weight_ih_l0`, `bias_hh_l1`, ...; a custom stack is
    read the same way: the layer is the first `l{k}` or numeric part of the name (0 if
    none), the side the first `ih` or `hh` part, and parameters that are neither (a
    normalization's, say) form `rnn_l{k}_other`. A language model's embedding is the
    input side of layer 0.
    """
    parts = re.split(r"[._]", name)
    if parts[0] == "head":
        return "head"
    if parts[0] == "embedding":
        return "rnn_l0_ih"
    layer = next((p.lstrip("l") for p in parts if re.fullmatch(r"l?\d+", p)), "0")
    side = next((p for p in parts if p in ("ih", "hh")), "other")
    return f"rnn_l{layer}_{side}"


@torch.no_grad()
def layer_grad_norms(model: torch.nn.Module) -> dict[str, float]:
    """`grad_norm/<group>` for every group of `parameter_group` that has gradients."""
    squares: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if param.grad is not None:
            group = parameter_group(name)
            squares[group] = squares.get(group, 0.0) + param.grad.square().sum()
    return {f"grad_norm/{group}": total.sqrt().item() for group, total in squares.items()}


def through_time(model: torch.nn.Module, cell: str, objective: objectives.Objective,
                 batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """||dL/dh_t|| of the top layer for t up to the longest row of `batch` (a CPU tensor),
    and the saturation of each gate over the rows' valid steps.

    L is the training loss of these rows; the gradient is taken with respect to the
    h_t alone (`autograd.grad`), so no parameter's `.grad` changes.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            unrolled = unroll(model.rnn, cell, model.embed(batch["inputs"]))
            loss = objective.loss(model.head(unrolled.outputs, batch["lengths"]), batch)
            grads = torch.autograd.grad(loss, unrolled.hidden)
    finally:
        model.train(was_training)
    longest = int(batch["lengths"].max())
    norms = torch.stack([g.detach().norm() for g in grads[:longest]]).cpu()
    steps = torch.arange(unrolled.outputs.size(1), device=batch["lengths"].device)
    valid = steps < batch["lengths"].unsqueeze(1)  # (B, T): the steps inside each row
    return norms, {gate: saturation(values.detach()[valid])
                   for gate, values in unrolled.gates.items()}


def saturation(values: torch.Tensor) -> float:
    """The fraction of gate activations below 0.05 or above 0.95."""
    saturated = (values < SATURATED_BELOW) | (values > SATURATED_ABOVE)
    return saturated.float().mean().item()


def padded(rows: list[list[float]]) -> np.ndarray:
    """Rows of different lengths (a curriculum changes T) as one matrix, NaN-padded."""
    width = max((len(row) for row in rows), default=0)
    matrix = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        matrix[i, :len(row)] = row
    return matrix


def write_matrix(path: Path, steps: np.ndarray, matrix: np.ndarray) -> None:
    """CSV: one line per diagnostic step, `step, ||dL/dh_0||, ..., ||dL/dh_{T-1}||`."""
    header = ",".join(["step", *(f"t{t}" for t in range(matrix.shape[1]))])
    np.savetxt(path, np.column_stack([steps, matrix]), delimiter=",", header=header,
               comments="", fmt="%.6g")


def read_matrix(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, matrix) of a CSV written by `write_matrix`."""
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return table[:, 0].astype(int), table[:, 1:]


def save_figure(path: Path, panels: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """One heatmap per (title, steps, matrix) panel, side by side, on one colour scale."""
    from matplotlib.figure import Figure  # loaded only by runs that draw

    logs = [np.log10(np.clip(matrix, DISPLAY_FLOOR, None)) for _, _, matrix in panels]
    finite = np.concatenate([log[np.isfinite(log)] for log in logs])
    limits = (finite.min(), finite.max())
    figure = Figure(figsize=(5.5 * len(panels), 4.2), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, steps, _), log in zip(axes, panels, logs, strict=True):
        image = draw_heatmap(ax, steps, log, limits)
        ax.set_title(title)
    figure.colorbar(image, ax=list(axes),
                    label=f"log10 ||dL/dh_t||  (0 drawn at {np.log10(DISPLAY_FLOOR):g})")
    figure.savefig(path, dpi=110)


def draw_heatmap(ax, steps: np.ndarray, log_norms: np.ndarray, limits: tuple[float, float]):
    """log10 ||dL/dh_t|| with time step t across and training step up; grey = no data
    (steps beyond a shorter sequence)."""
    first, last = int(steps[0]), int(steps[-1])
    image = ax.imshow(np.ma.masked_invalid(log_norms), origin="lower", aspect="auto",
                      cmap="viridis", vmin=limits[0], vmax=limits[1], interpolation="nearest",
                      extent=(-0.5, log_norms.shape[1] - 0.5, first, max(last, first + 1)))
    ax.set_facecolor("lightgrey")  # masked cells are transparent
    ax.set_xlabel("time step t")
    ax.set_ylabel("training step")
    return image
