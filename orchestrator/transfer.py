"""Transfer learning: start from a trained model, freeze and unfreeze its layers, and give
lower layers smaller learning rates (the `init.*` keys).

    init:
      from: models:/beijing-pm/3      # or models:/name@alias, runs:/<id>/model, a checkpoint
      freeze: [rnn.*_l0]              # fnmatch patterns of parameter names, frozen all run
      unfreeze_every: 200             # ULMFiT: the head first, one more layer down every 200
      lr_decay: 2.6                   # each layer down trains at the rate above / 2.6

Loading. The source's weights that match the new model by name and shape are loaded;
the rest starts fresh, and the report says why (a new head because the number of
outputs differs, a new input projection because the feature count differs). A source of
another cell family, or one whose recurrent stack has nothing that fits (another hidden
size), cannot be meant: that is refused before training starts.

Layers. A model's parameters fall in layers, top first: `head`, then `rnn_l{k}` from the
top recurrent layer down to `rnn_l0`. Each layer is one optimizer parameter group
with its own learning rate, `optim.lr / lr_decay**depth` (`lr_scale` in the group, so
the guard's and PBT's changes of `optim.lr` keep the ratios).

Freezing. A frozen parameter's gradient is dropped after backward (`.grad = None`), so
clipping does not count it and the optimizer skips it: its weights stay bit-identical,
and under DDP every rank drops the same gradients. Gradients are still computed and
all-reduced for frozen layers (DDP's buckets are fixed when it wraps the model), which
costs time but keeps unfreezing a matter of no longer dropping them.
"""

from __future__ import annotations

import fnmatch
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from models import ModelSpec
from orchestrator.config import ConfigError
from orchestrator.diagnostics import parameter_group
from pipelines.tables import filesystem_of

FAMILIES = {"lstm": "LSTM", "ln_lstm": "LSTM", "bn_lstm": "LSTM", "gru": "GRU",
            "ln_gru": "GRU", "rnn_tanh": "tanh RNN", "rnn_relu": "ReLU RNN"}


class TransferError(ConfigError):
    """`init.*` names a model, or parameters, that cannot be meant for this model; the
    message says why (bad input: exit 2)."""


@dataclass(frozen=True)
class TransferPlan:
    """What `init.from` gives the new model: the weights to load, and the report."""

    origin: str
    source_spec: dict[str, Any]
    weights: dict[str, torch.Tensor]
    new: tuple[tuple[str, str], ...]  # (parameter, why it starts fresh)

    def report(self) -> str:
        """A short text for the console and the MLflow run (`transfer_report.md`)."""
        spec = self.source_spec
        lines = [f"Started from {self.origin} ({spec['cell']} x{spec['num_layers']}, hidden "
                 f"{spec['hidden_size']}, {spec['input_size']} inputs, "
                 f"{spec['output_size']} outputs).", "",
                 f"Loaded ({len(self.weights)}): {', '.join(self.weights) or 'nothing'}."]
        if self.new:
            lines += ["", f"New ({len(self.new)}):"]
            lines += [f"- {name}: {why}" for name, why in self.new]
        return "\n".join(lines)


def plan(origin: str, source: dict[str, Any], spec: ModelSpec,
         shapes: dict[str, torch.Size]) -> TransferPlan:
    """Match the source's weights (`{"spec": ..., "model": state dict}`) against the new
    model's parameter `shapes`; raises TransferError for a source that cannot be meant."""
    source_spec, state = source["spec"], source["model"]
    if FAMILIES[source_spec["cell"]] != FAMILIES[spec.cell]:
        raise TransferError(
            f"init.from {origin} is a {FAMILIES[source_spec['cell']]} "
            f"({source_spec['cell']}) and this model a {FAMILIES[spec.cell]} ({spec.cell}): "
            "another cell family's weights mean something else; set model.cell="
            f"{source_spec['cell']} or train from scratch.")
    weights, new = {}, []
    for name, shape in shapes.items():
        if name in state and state[name].shape == shape:
            weights[name] = state[name]
        else:
            new.append((name, _why_new(name, shape, state, source_spec, spec)))
    if not any(name.startswith("rnn.") for name in weights):
        raise TransferError(
            f"init.from {origin}: nothing in its recurrent stack fits this model (hidden "
            f"size {source_spec['hidden_size']} there, {spec.hidden_size} here); set "
            f"model.hidden_size={source_spec['hidden_size']} to start from it.")
    return TransferPlan(origin, source_spec, weights, tuple(new))


def _why_new(name: str, shape: torch.Size, state: dict[str, torch.Tensor],
             source: dict[str, Any], spec: ModelSpec) -> str:
    if name not in state:
        return "the source has no such parameter"
    if name.startswith("head."):
        return (f"a new head: {source['output_size']} outputs ({source['head']}) in the "
                f"source, {spec.output_size} ({spec.head}) here")
    if "weight_ih_l0" in name and source["input_size"] != spec.input_size:
        return (f"a new input projection: {source['input_size']} input features in the "
                f"source, {spec.input_size} here")
    return f"shape {tuple(state[name].shape)} in the source, {tuple(shape)} here"


def load_source(origin: str, uri: str) -> dict[str, Any]:
    """`{"spec", "model"}` of a registered model or a run's model (in the MLflow store at
    `uri`), or of a checkpoint directory (local, or on the runs' storage: s3://, gs://),
    read without unpickling code (weights only)."""
    from orchestrator import checkpoints, tracking

    if origin.startswith(("models:/", "runs:/")):
        return tracking.model_weights(origin, uri)
    with tempfile.TemporaryDirectory() as directory:
        state_file = _state_file(origin, Path(directory))
        state = checkpoints.load_weights_only(state_file, f"{origin} ({state_file.name})")
    return {"spec": state["spec"], "model": state["model"]}


def _state_file(origin: str, scratch: Path) -> Path:
    """A checkpoint's state file: where it is on local disk, else copied from storage."""
    from orchestrator.checkpoints import STATE_FILE

    filesystem, root = filesystem_of(origin)
    where = f"{root}/{STATE_FILE}"
    if filesystem.get_file_info(where).type != pafs.FileType.File:
        raise TransferError(f"init.from {origin}: expected models:/name/version, "
                            "models:/name@alias, runs:/<run id>/model, or a checkpoint "
                            f"directory holding {STATE_FILE}.")
    if isinstance(filesystem, pafs.LocalFileSystem):
        return Path(where)
    pafs.copy_files(where, str(scratch / STATE_FILE), source_filesystem=filesystem)
    return scratch / STATE_FILE


def layer_of(name: str) -> str:
    """`head`, or `rnn_l{k}` for recurrent layer k (see `diagnostics.parameter_group`)."""
    group = parameter_group(name)
    return group if group == "head" else group.rsplit("_", 1)[0]


def layers(model: torch.nn.Module) -> list[str]:
    """The model's layers, top first: head, then the recurrent layers downwards."""
    found = {layer_of(name) for name, _ in model.named_parameters()}
    recurrent = sorted((layer for layer in found if layer != "head"),
                       key=lambda layer: -int(layer.removeprefix("rnn_l")))
    return ["head", *recurrent]


def param_groups(model: torch.nn.Module, lr: float, lr_decay: float) -> list[dict[str, Any]]:
    """One optimizer group per layer, top first, at `lr / lr_decay**depth`."""
    order = layers(model)
    groups = {layer: {"params": [], "layer": layer, "lr_scale": lr_decay ** -depth,
                      "lr": lr * lr_decay ** -depth} for depth, layer in enumerate(order)}
    for name, param in model.named_parameters():
        groups[layer_of(name)]["params"].append(param)
    return [groups[layer] for layer in order]


class Freezer:
    """Which parameters are frozen at a step: those matching `patterns` always, and under
    gradual unfreezing (`unfreeze_every` > 0) every layer below the ones reached so far."""

    def __init__(self, model: torch.nn.Module, patterns: tuple[str, ...],
                 unfreeze_every: int):
        self._names = [name for name, _ in model.named_parameters()]
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in self._names):
                raise TransferError(f"init.freeze pattern {pattern!r} matches no parameter; "
                                    f"the model has: {', '.join(self._names)}.")
        self._pinned = {name for name in self._names
                        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)}
        self._order = layers(model)
        self._every = unfreeze_every

    @property
    def active(self) -> bool:
        return bool(self._pinned) or self._every > 0

    def frozen(self, step: int) -> set[str]:
        """The parameters frozen at `step` (1-based, as the loop counts)."""
        if self._every <= 0:
            return set(self._pinned)
        reached = set(self._order[:1 + (step - 1) // self._every])
        return self._pinned | {name for name in self._names if layer_of(name) not in reached}

    def drop_gradients(self, model: torch.nn.Module, step: int) -> None:
        """Drop the frozen parameters' gradients (after backward, before clipping)."""
        frozen = self.frozen(step)
        for name, param in model.named_parameters():
            if name in frozen:
                param.grad = None
