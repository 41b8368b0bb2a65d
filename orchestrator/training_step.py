"""One training step's parts, free of Ray: what every rank runs between two batches.

`orchestrator.worker` strings them into the loop Ray Train runs; they are kept apart so
that the step can be run, tested and timed on its own, on any device (a GPU machine
without Ray included: benchmarks/gpu_step.py).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from models.process_group import distributed
from orchestrator import objectives
from orchestrator.clipping import Clipper
from orchestrator.guard import DivergenceGuard, Verdict
from orchestrator.language_model import CarriedState
from orchestrator.precision import Precision


@dataclasses.dataclass(frozen=True)
class Place:
    """Where this copy of the loop runs."""

    rank: int
    world: int
    device: torch.device


def predict(model: torch.nn.Module, batch: dict[str, torch.Tensor],
            carried: CarriedState | None) -> torch.Tensor:
    """The model on one batch; a language model from (and to) its carried state."""
    if carried is None:
        return model(batch["inputs"], batch["lengths"])
    return carried.run(model, batch)


def forward_backward(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     batch: dict[str, torch.Tensor], precision: Precision,
                     objective: objectives.Objective, place: Place,
                     carried: CarriedState | None = None) -> dict[str, torch.Tensor]:
    """Forward in the run's precision, the loss in float32, backward: leaves the true
    (unscaled, all-reduced) gradients in `.grad`. The figures stay on the device (see
    `read_figures`); `padding_efficiency` is the share of this rank's computed steps that
    are real steps, not padding."""
    batch = to_device(batch, place.device)
    real = batch["lengths"].sum()
    computed = batch["lengths"].numel() * batch["inputs"].shape[1]
    model.train()
    with precision.autocast():
        outputs = predict(model, batch, carried)
    loss = objective.loss(outputs.float(), batch)
    optimizer.zero_grad(set_to_none=True)
    precision.backward(loss, optimizer)  # DDP all-reduces the gradients here
    return {"train_loss": mean_over_ranks(loss.detach()), "tokens": real * place.world,
            "padding_efficiency": real / computed}


def clip_gradients(model: torch.nn.Module, clipper: Clipper) -> dict[str, torch.Tensor]:
    """Clip in place; the gradient norm before and after, and whether anything changed."""
    clip = clipper(model.parameters(), head=unwrap(model).head.parameters())
    figures = {
        "grad_norm": clip.grad_norm,
        "grad_norm_clipped": clip.grad_norm_clipped,
        "clipped": clip.clipped,
    }
    if clipper.adaptive:
        figures["clip_threshold"] = clip.threshold
    return figures


def read_figures(figures: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """The step's figures as numbers, read back from the device in one transfer.

    A readback waits for all the work queued on a GPU before it; a step that read its
    loss, its gradient norm and its clipping figures one by one would stall the device
    once for each. The divergence guard needs the loss and the norm before the optimizer
    moves, so one readback per step is the least a guarded step can do.
    """
    tensors = {name: value for name, value in figures.items() if torch.is_tensor(value)}
    if not tensors:
        return dict(figures)
    device = next(iter(tensors.values())).device
    numbers = torch.stack([value.detach().to(device, torch.float64)
                           for value in tensors.values()]).tolist()
    return {**figures, **dict(zip(tensors, numbers, strict=True))}


def judge(guard: DivergenceGuard | None, precision: Precision,
          figures: dict[str, float]) -> Verdict | None:
    """The guard's verdict on the step. None without a guard, and for a loss-scaler
    overflow, which the scaler deals with itself (see `orchestrator.precision`)."""
    if guard is None or precision.overflowed(figures["train_loss"], figures["grad_norm"]):
        return None
    return guard.judge(figures["train_loss"], figures["grad_norm"])


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    if distributed():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}
