"""The divergence guard's judgement, and the rollback the worker loop performs."""

from __future__ import annotations

import math

import pytest
import torch

from models import ModelSpec, build_model
from orchestrator.clipping import Clipper
from orchestrator.config import Config, ConfigError, apply_overrides
from orchestrator.guard import MIN_HISTORY, Diverged, DivergenceGuard, Verdict
from orchestrator.optimizers import build_optimizer
from orchestrator.worker import recover, take_snapshot


def guard(patience=3, max_rollbacks=2, spike_factor=10.0) -> DivergenceGuard:
    return DivergenceGuard(spike_factor, window=50, patience=patience,
                           max_rollbacks=max_rollbacks)


def warmed(g: DivergenceGuard, loss: float = 1.0) -> DivergenceGuard:
    for _ in range(MIN_HISTORY):
        assert g.judge(loss, 1.0) == Verdict(None, False)
    return g


@pytest.mark.parametrize(("loss", "grad_norm", "cause"), [
    (math.nan, 1.0, "non-finite loss"),
    (math.inf, 1.0, "non-finite loss"),
    (1.0, math.nan, "non-finite gradient"),
    (1.0, math.inf, "non-finite gradient"),
])
def test_non_finite_steps_are_bad_from_the_first_step(loss, grad_norm, cause):
    assert guard().judge(loss, grad_norm) == Verdict(cause, False)


def test_a_spike_is_judged_against_the_median_of_recent_good_losses():
    g = guard()
    assert g.judge(100.0, 1.0).cause is None  # no history yet: nothing to compare with
    g = warmed(guard(), loss=1.0)
    assert g.judge(9.9, 1.0).cause is None
    assert g.judge(10.5, 1.0).cause.startswith("loss spike")


def test_patience_bad_steps_in_a_row_trigger_a_rollback_and_a_good_step_resets():
    g = guard(patience=3)
    assert not g.judge(math.nan, 1.0).rollback
    assert not g.judge(math.nan, 1.0).rollback
    assert g.judge(1.0, 1.0).cause is None  # the run continues: the count starts over
    assert not g.judge(math.nan, 1.0).rollback
    assert not g.judge(math.nan, 1.0).rollback
    assert g.judge(math.nan, 1.0) == Verdict("non-finite loss", True)
    assert (g.skipped, g.rollbacks) == (5, 1)


def test_after_max_rollbacks_the_run_stops_with_a_clear_message():
    g = guard(patience=1, max_rollbacks=2)
    assert g.judge(math.nan, 1.0).rollback and g.judge(math.nan, 1.0).rollback
    with pytest.raises(Diverged, match="after 2 rollbacks .guard.max_rollbacks."):
        g.judge(math.nan, 1.0)


def test_bad_losses_never_enter_the_history():
    g = warmed(guard(patience=100), loss=1.0)
    for _ in range(20):
        g.judge(50.0, 1.0)  # spikes
    assert g.judge(9.0, 1.0).cause is None  # the median is still 1.0


def test_state_round_trip():
    g = warmed(guard(patience=1))
    g.judge(math.nan, 1.0)
    restored = guard(patience=1)
    restored.load_state_dict(g.state_dict())
    assert (restored.skipped, restored.rollbacks, list(restored.recent)) == (
        g.skipped, g.rollbacks, list(g.recent))


def test_autoclip_history_ignores_non_finite_norms():
    clipper = Clipper("autoclip", 50.0)
    parameter = torch.nn.Parameter(torch.ones(3))
    for value in (1.0, math.nan, 3.0):
        parameter.grad = torch.full((3,), value)
        clipper([parameter])
    assert clipper.norms.counts.sum() == 2  # the NaN was not counted


def test_recover_rolls_back_lowers_the_rate_and_tightens_clipping():
    config = apply_overrides(Config(), ["guard.lr_factor=0.1", "guard.clip_factor=0.5"])
    model = build_model(ModelSpec("gru", 2, 8, 1, 0.0, "regression", 1))
    optimizer = build_optimizer("adam", model.parameters(), 0.01, 0.0, 0.9)
    snapshot = take_snapshot(7, model, optimizer)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the run wandered off
    clipper = Clipper("norm", 2.0)

    assert recover(Verdict("non-finite loss", False), model, optimizer, clipper, snapshot,
                   config) == "step skipped"
    assert optimizer.param_groups[0]["lr"] == 0.01 and clipper.threshold == 2.0

    action = recover(Verdict("non-finite loss", True), model, optimizer, clipper, snapshot,
                     config)
    assert action.startswith("rolled back to step 7")
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshot.model[name])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001)
    assert clipper.threshold == 1.0


@pytest.mark.parametrize("override", ["guard.spike_factor=1", "guard.lr_factor=0",
                                      "guard.clip_factor=1.5", "guard.patience=0",
                                      "guard.max_rollbacks=-1"])
def test_bad_guard_settings_are_rejected_naming_the_key(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        apply_overrides(Config(), [override])


def test_forgetting_the_losses_lets_a_harder_level_start_higher():
    g = warmed(guard(), loss=0.01)
    g.forget_losses()
    assert g.judge(0.5, 1.0).cause is None
