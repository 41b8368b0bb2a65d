"""What a checkpoint holds, and how it is written and read back.

One directory, two files: `state.pt` (weights, optimizer, step, the RNG state of every
rank, the state of the loop's helpers (curriculum, clipping policy, divergence guard),
the model spec) and `config.yaml` (the resolved config, readable without torch).
Carrying the spec and the config with the weights means a checkpoint alone rebuilds the
model. Ray moves the directory to storage; this module only knows directories.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch

from models import ModelSpec, SequenceModel, build_model

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"


def save(directory: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         step: int, spec: ModelSpec, rng_states: list[Any], parts: dict[str, dict[str, Any]],
         config_yaml: str, files: dict[str, str] | None = None) -> None:
    """`parts` holds the state_dict of each stateful helper of the loop, by name
    (curriculum, clip, guard). `files` are more text files to keep beside the weights,
    by name (a forecaster's layout.json, which it needs to read tables and answer in
    their units)."""
    directory = Path(directory)
    torch.save(
        {
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "spec": dataclasses.asdict(spec),
            "rng_states": rng_states,
            "parts": parts,
        },
        directory / STATE_FILE,
    )
    (directory / CONFIG_FILE).write_text(config_yaml)
    for name, text in (files or {}).items():
        (directory / name).write_text(text)


def load(directory: str | Path) -> dict[str, Any]:
    # weights_only=False: the state holds RNG states and plain dicts written by `save`.
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)


def load_model(directory: str | Path) -> SequenceModel:
    """Rebuild the trained model from a checkpoint directory, on the CPU."""
    state = load(directory)
    model = build_model(ModelSpec(**state["spec"]))
    model.load_state_dict(state["model"])
    return model


def weights_digest(directory: str | Path) -> str:
    """A short fingerprint of a checkpoint's weights: equal digests mean equal weights, so
    a sweep can show which trial's weights another trial took over."""
    digest = hashlib.sha256()
    for name, tensor in sorted(load(directory)["model"].items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]
