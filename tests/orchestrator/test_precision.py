"""Mixed precision on CPU: bf16 autocast trains; with a loss scaler (torch's CPU GradScaler
stands in for the GPU one), gradients are unscaled before clipping, and an overflow is
the scaler's business, not the divergence guard's.

fp16 runs only on GPUs in training (the config says so); here it runs on a GRU, which
CPU autocast leaves in float32 (oneDNN has no float16 LSTM), with a float16 head."""

from __future__ import annotations

import math

import pytest
import torch

from models import ModelSpec, build_model
from orchestrator import objectives
from orchestrator.clipping import Clipper
from orchestrator.config import Config, ConfigError, apply_overrides
from orchestrator.guard import DivergenceGuard
from orchestrator.optimizers import build_optimizer
from orchestrator.precision import Precision, cpu_runs_bf16_lstm
from orchestrator.training_step import (
    Place,
    clip_gradients,
    forward_backward,
    judge,
    read_figures,
)
from pipelines.synthetic import make_task, rng_for

REGRESSION = objectives.of("regression")
CPU = torch.device("cpu")
PLACE = Place(rank=0, world=1, device=CPU)


def model_and_optimizer(cell: str = "lstm", lr: float = 0.01):
    torch.manual_seed(0)
    model = build_model(ModelSpec(cell, 2, 16, 1, 0.0, "regression", 1))
    return model, build_optimizer("adam", model.parameters(), lr, 0.0, 0.9)


def adding_batch(step: int, seq_len: int = 10) -> dict[str, torch.Tensor]:
    arrays = make_task("adding", seq_len).generate(rng_for(0, 0, step), 32)
    return {name: torch.from_numpy(array) for name, array in arrays.items()}


def train_step(model, optimizer, precision, clipper, batch) -> dict[str, float]:
    figures = forward_backward(model, optimizer, batch, precision, REGRESSION, PLACE)
    figures = read_figures(figures | clip_gradients(model, clipper))
    precision.step(optimizer)
    return figures


@pytest.mark.skipif(not cpu_runs_bf16_lstm(), reason="this CPU has no bfloat16 LSTM kernels")
def test_bf16_runs_the_forward_in_bfloat16_and_trains():
    model, optimizer = model_and_optimizer()
    precision = Precision("bf16", CPU)
    with precision.autocast():
        outputs, _ = model.rnn(adding_batch(0)["inputs"])
    assert outputs.dtype == torch.bfloat16
    clipper = Clipper("norm", 1.0)
    losses = [train_step(model, optimizer, precision, clipper, adding_batch(step))["train_loss"]
              for step in range(60)]
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.skipif(cpu_runs_bf16_lstm(), reason="this CPU has bfloat16 LSTM kernels")
def test_bf16_on_a_cpu_without_bf16_kernels_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="train.precision=bf16: this CPU has no bfloat16"):
        Precision("bf16", CPU)


def test_scaled_gradients_are_unscaled_before_clipping():
    batch = adding_batch(0)
    clipped = {}
    for name in ("fp32", "fp16"):
        model, optimizer = model_and_optimizer("gru")
        precision = Precision(name, CPU)
        precision.load_state_dict({**precision.state_dict(), "scale": 1024.0})  # fp16 only
        figures = forward_backward(model, optimizer, batch, precision, REGRESSION, PLACE)
        figures = read_figures(figures | clip_gradients(model, Clipper("norm", 0.01)))
        clipped[name] = (figures, [p.grad.clone() for p in model.parameters()])
    (fp32, fp32_grads), (fp16, fp16_grads) = clipped["fp32"], clipped["fp16"]
    # Clipped before unscaling, the fp16 gradients would be 1024 times smaller.
    assert fp16["grad_norm"] == pytest.approx(fp32["grad_norm"], rel=1e-2)
    assert fp32["grad_norm"] > 0.01 and fp16["clipped"] == 1.0
    for a, b in zip(fp32_grads, fp16_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-6)  # float16 head


def overflowing_fp16() -> Precision:
    """fp16 with a scale so large that the scaled gradients overflow float32."""
    precision = Precision("fp16", CPU)
    precision.load_state_dict({**precision.state_dict(), "scale": 2.0**127})
    return precision


def test_a_scaler_overflow_is_skipped_by_the_scaler_and_not_judged_by_the_guard():
    model, optimizer = model_and_optimizer("gru")
    precision, guard = overflowing_fp16(), DivergenceGuard(10.0, 50, patience=1,
                                                           max_rollbacks=0)
    before = [p.detach().clone() for p in model.parameters()]
    figures = forward_backward(model, optimizer, adding_batch(0), precision, REGRESSION,
                               PLACE)
    figures = read_figures(figures | clip_gradients(model, Clipper("norm", 1.0))
                           | precision.figures())
    assert figures["loss_scale"] == 2.0**127
    assert math.isfinite(figures["train_loss"]) and not math.isfinite(figures["grad_norm"])

    assert judge(guard, precision, figures) is None
    assert (guard.skipped, guard.bad_in_a_row, len(guard.recent)) == (0, 0, 0)
    precision.step(optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert read_figures(precision.figures()) == {"loss_scale": 2.0**126}  # backed off

    # The same figures without a scaler are a divergence incident.
    fresh = DivergenceGuard(10.0, 50, patience=3, max_rollbacks=0)
    assert judge(fresh, Precision("fp32", CPU), figures).cause == "non-finite gradient"


def test_a_non_finite_loss_under_fp16_is_still_the_guards_business():
    guard = DivergenceGuard(10.0, 50, patience=3, max_rollbacks=0)
    verdict = judge(guard, overflowing_fp16(), {"train_loss": math.nan, "grad_norm": math.nan})
    assert verdict.cause == "non-finite loss" and guard.skipped == 1


def test_a_step_the_guard_skipped_still_closes_the_scalers_step():
    model, optimizer = model_and_optimizer("gru")
    precision = Precision("fp16", CPU)
    for step in range(2):  # a second unscale_ without update would raise
        forward_backward(model, optimizer, adding_batch(step), precision, REGRESSION, PLACE)
        precision.skip()


def test_the_loss_scale_survives_a_checkpoint():
    saved = Precision("fp16", CPU)
    saved.load_state_dict({**saved.state_dict(), "scale": 512.0})
    restored = Precision("fp16", CPU)
    restored.load_state_dict(saved.state_dict())
    assert restored.figures() == {"loss_scale": 512.0}
    assert Precision("fp32", CPU).state_dict() == {}


def test_fp16_needs_a_gpu_and_the_error_names_both_keys():
    with pytest.raises(ConfigError, match=r"train\.precision=fp16 .*scaling\.use_gpu"):
        apply_overrides(Config(), ["train.precision=fp16"])
    config = apply_overrides(Config(), ["train.precision=fp16", "scaling.use_gpu=true"])
    assert config.train.precision == "fp16"
    assert apply_overrides(Config(), ["train.precision=bf16"]).train.precision == "bf16"


def test_an_unknown_precision_lists_the_choices():
    with pytest.raises(ConfigError, match="train.precision .*fp32, bf16, fp16"):
        apply_overrides(Config(), ["train.precision=fp8"])


def test_padding_efficiency_is_the_share_of_computed_steps_that_are_real():
    model, optimizer = model_and_optimizer()
    batch = {"inputs": torch.randn(3, 10, 2), "lengths": torch.tensor([10, 5, 3]),
             "targets": torch.randn(3, 1)}
    figures = read_figures(forward_backward(model, optimizer, batch, Precision("fp32", CPU),
                                            REGRESSION, PLACE))
    assert figures["padding_efficiency"] == pytest.approx(18 / 30)
    assert figures["tokens"] == 18
