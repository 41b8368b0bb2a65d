"""The training step reads its figures back from the device once: on a GPU every readback
(`.item()`, `.tolist()`, `float(tensor)`, a tensor in an `if`) waits for the work queued
before it. The readbacks are counted here on CPU, where they cost nothing, by intercepting
every tensor method that hands a value to the host."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from models import ModelSpec, build_model
from orchestrator import objectives
from orchestrator.clipping import POLICIES, Clipper
from orchestrator.guard import DivergenceGuard
from orchestrator.language_model import CarriedState, TextObjective
from orchestrator.optimizers import build_optimizer
from orchestrator.precision import Precision
from orchestrator.training_step import (
    Place,
    clip_gradients,
    forward_backward,
    judge,
    read_figures,
)
from pipelines.synthetic import make_task, rng_for

CPU = torch.device("cpu")
PLACE = Place(rank=0, world=1, device=CPU)
READBACKS = {"item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__",
             "__index__"}


class CountReadbacks(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READBACKS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def adding_batch(step: int) -> dict[str, torch.Tensor]:
    arrays = make_task("adding", 12).generate(rng_for(0, 0, step), 16)
    return {name: torch.from_numpy(array) for name, array in arrays.items()}


def guarded_step(cell: str, policy: str, precision: Precision, batch, objective,
                 carried: CarriedState | None = None, vocab: int = 0):
    torch.manual_seed(0)
    spec = (ModelSpec(cell, 8, 16, 2, 0.0, "per_step", vocab, vocab_size=vocab) if vocab
            else ModelSpec(cell, 2, 16, 2, 0.0, "regression", 1))
    model = build_model(spec)
    optimizer = build_optimizer("adam", model.parameters(), 0.01, 0.0, 0.9)
    clipper = Clipper(policy, 1.0 if policy != "agc" else 0.01)
    guard = DivergenceGuard(10.0, 50, patience=3, max_rollbacks=1)

    def step() -> dict[str, float]:
        figures = forward_backward(model, optimizer, batch, precision, objective, PLACE,
                                   carried)
        figures = read_figures(figures | clip_gradients(model, clipper)
                               | precision.figures())
        verdict = judge(guard, precision, figures)
        assert verdict is not None and verdict.cause is None
        return figures

    return step


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("cell", ["lstm", "gru", "ln_lstm", "bn_lstm"])
def test_a_guarded_step_reads_back_once_for_every_cell_and_clip_policy(cell, policy):
    step = guarded_step(cell, policy, Precision("fp32", CPU), adding_batch(0),
                           objectives.of("regression"))
    with CountReadbacks() as counted:
        figures = step()
    assert counted.calls == ["tolist"]
    assert all(isinstance(value, float) and math.isfinite(value)
               for value in figures.values())


def test_a_ragged_batch_and_fp16_read_back_once_before_the_scalers_own_check():
    batch = adding_batch(0)
    batch["lengths"] = torch.from_numpy(np.arange(16) % 12 + 1)
    precision = Precision("fp16", CPU)  # torch's CPU GradScaler stands in for the GPU one
    precision.load_state_dict({**precision.state_dict(), "scale": 1024.0})  # no overflow
    step = guarded_step("gru", "autoclip", precision, batch, objectives.of("regression"))
    with CountReadbacks() as counted:
        figures = step()
    assert counted.calls == ["tolist"]
    assert figures["loss_scale"] == 1024.0
    assert figures["tokens"] == sum(range(1, 13)) + sum(range(1, 5))


def test_a_language_model_step_carrying_its_state_reads_back_once():
    rng = np.random.default_rng(0)
    tokens = torch.from_numpy(rng.integers(0, 5, (4, 7)))
    batch = {"inputs": tokens, "targets": torch.roll(tokens, -1, 1),
             "lengths": torch.full((4,), 7), "reset": torch.tensor([True, False, True, False])}
    step = guarded_step("lstm", "norm", Precision("fp32", CPU), batch, TextObjective(),
                           carried=CarriedState(), vocab=5)
    step()  # the streams start
    with CountReadbacks() as counted:
        step()  # and carry on from the state the first step left
    assert counted.calls == ["tolist"]


def test_read_figures_keeps_numbers_and_names_and_reads_bools_as_0_or_1():
    figures = read_figures({"loss": torch.tensor(0.5), "tokens": torch.tensor(12),
                            "clipped": torch.tensor(True), "threshold": 2.0})
    assert figures == {"loss": 0.5, "tokens": 12.0, "clipped": 1.0, "threshold": 2.0}
    assert list(figures) == ["loss", "tokens", "clipped", "threshold"]
    assert read_figures({"threshold": 2.0}) == {"threshold": 2.0}


def test_a_step_in_a_process_group_of_one_takes_no_collectives(alone_in_a_group):
    """A single Ray Train worker runs in a process group of one: its loss is its own, with
    no all-reduce every step."""
    step = guarded_step("lstm", "norm", Precision("fp32", CPU), adding_batch(0),
                        objectives.of("regression"))
    alone = step()
    with alone_in_a_group():
        grouped = guarded_step("lstm", "norm", Precision("fp32", CPU), adding_batch(0),
                               objectives.of("regression"))()
    assert grouped == alone
