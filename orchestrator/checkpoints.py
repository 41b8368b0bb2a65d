"""What a checkpoint holds, and how it is written and read back.

One directory, two files: `state.pt` (weights, optimizer, step, the RNG state of every
rank, the state of the loop's helpers (curriculum, clipping policy, divergence guard),
the model spec) and `config.yaml` (the resolved config, readable without torch).
Carrying the spec and the config with the weights means a checkpoint alone rebuilds the
model. Ray moves the directory to storage; this module only knows directories.

`state.pt` holds only tensors, numbers, strings and plain containers, and is read with
`torch.load(weights_only=True)`: population-based training loads other trials'
checkpoints, and users hand in checkpoints and models from elsewhere, so a file that would
need arbitrary unpickling (which can run code) is refused, never loaded. `save` checks the
same rule, so a helper whose state breaks it fails at its first checkpoint, not at resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from models import ModelSpec, SequenceModel, build_model
from pipelines.errors import DataError

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"


class UnsafeCheckpointError(DataError):
    """A checkpoint or model file holds objects that only arbitrary unpickling could
    rebuild. A DataError, so the CLI reports it like any other bad input file."""


def save(directory: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         step: int, spec: ModelSpec, rng_states: list[Any], parts: dict[str, dict[str, Any]],
         config_yaml: str, files: dict[str, str] | None = None) -> None:
    """`parts` holds the state_dict of each stateful helper of the loop, by name
    (curriculum, clip, guard). `files` are more text files to keep beside the weights,
    by name (a forecaster's layout.json, which it needs to read tables and answer in
    their units). Everything must load with `torch.load(weights_only=True)`: tensors,
    numbers, strings, and lists, tuples and dicts of them (no numpy values, no deques)."""
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
    _refuse_unsafe_state(directory / STATE_FILE)
    (directory / CONFIG_FILE).write_text(config_yaml)
    for name, text in (files or {}).items():
        (directory / name).write_text(text)


def _refuse_unsafe_state(path: Path) -> None:
    """Raise TypeError, naming what breaks the rule, if `path` would not load weights-only
    (it reads the pickle's opcodes, runs nothing)."""
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    if unsafe:
        raise TypeError(
            f"{path}: the checkpoint's state holds {', '.join(unsafe)}, which "
            "torch.load(weights_only=True) refuses, so it could never be loaded again. The "
            "helpers' state_dicts, the RNG states and the optimizer's state must be tensors, "
            "numbers, strings and lists, tuples or dicts of them (float(x) for a numpy "
            "scalar, a tensor for an array, list(d) for a deque).")


def load(directory: str | Path) -> dict[str, Any]:
    """The state `save` wrote, read weights-only (see `load_weights_only`)."""
    return load_weights_only(Path(directory) / STATE_FILE)


def load_weights_only(path: str | Path, name: str | None = None) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; a file that holds anything but
    tensors, numbers, strings and plain containers raises UnsafeCheckpointError, whose
    message calls the file `name` (default: its path)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        wanted = re.search(r"GLOBAL (\S+)", str(error))
        raise UnsafeCheckpointError(
            f"{name or path} holds objects other than tensors, numbers, strings and plain "
            f"containers{f' (it asks for {wanted[1]})' if wanted else ''}, so rnn-orch "
            "refuses to load it: unpickling them could run code from the file. rnn-orch "
            "writes none into its checkpoints and models, so this file was written by "
            "something else, or altered.") from error


def load_model(directory: str | Path) -> SequenceModel:
    """Rebuild the trained model from a checkpoint directory, on the CPU."""
    return model_from(load(directory))


def model_from(state: dict[str, Any]) -> SequenceModel:
    """The model of a loaded checkpoint state (`load`)."""
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
