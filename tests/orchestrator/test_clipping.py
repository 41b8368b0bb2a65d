from __future__ import annotations

import numpy as np
import pytest
import torch

from orchestrator.clipping import AGC_EPS, POLICIES, Clipper, NormHistogram


def model_with_grads(scale: float) -> torch.nn.Module:
    """A small model whose gradients have a global norm that grows with `scale`."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    loss = (model(torch.randn(16, 4)) * scale).pow(2).sum()
    loss.backward()
    return model


def grads_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def total_norm(model: torch.nn.Module) -> float:
    return torch.linalg.vector_norm(
        torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    ).item()


def test_norm_clips_large_gradients_to_the_threshold():
    model = model_with_grads(scale=100.0)
    before = total_norm(model)
    assert before > 1.0
    result = Clipper("norm", 1.0)(model.parameters())
    assert result.clipped
    assert float(result.grad_norm) == pytest.approx(before, rel=1e-5)
    assert total_norm(model) <= 1.0 + 1e-6
    assert float(result.grad_norm_clipped) == pytest.approx(total_norm(model), rel=1e-5)


def test_norm_keeps_the_direction():
    model = model_with_grads(scale=100.0)
    before = torch.cat([g.reshape(-1) for g in grads_of(model)])
    Clipper("norm", 1.0)(model.parameters())
    after = torch.cat([g.reshape(-1) for g in grads_of(model)])
    cosine = torch.nn.functional.cosine_similarity(before, after, dim=0)
    assert cosine.item() == pytest.approx(1.0, abs=1e-5)


def test_norm_below_the_threshold_changes_nothing():
    model = model_with_grads(scale=0.01)
    before = grads_of(model)
    norm = total_norm(model)
    result = Clipper("norm", 10 * norm + 1.0)(model.parameters())
    assert not result.clipped
    assert float(result.grad_norm) == pytest.approx(float(result.grad_norm_clipped))
    for old, new in zip(before, grads_of(model), strict=True):
        assert torch.equal(old, new)


def test_value_bounds_every_element():
    model = model_with_grads(scale=100.0)
    threshold = 0.0625  # exact in float32, so `<=` needs no tolerance
    assert max(g.abs().max().item() for g in grads_of(model)) > threshold
    result = Clipper("value", threshold)(model.parameters())
    assert result.clipped
    for grad in grads_of(model):
        assert grad.abs().max().item() <= threshold
    assert float(result.grad_norm_clipped) == pytest.approx(total_norm(model), rel=1e-5)
    assert result.grad_norm_clipped < result.grad_norm


def test_none_leaves_gradients_untouched_and_measures_torchs_norm():
    model = model_with_grads(scale=100.0)
    before = grads_of(model)
    expected = torch.nn.utils.get_total_norm(before).item()
    result = Clipper("none", 1.0)(model.parameters())
    assert not result.clipped
    assert float(result.grad_norm) == pytest.approx(expected, rel=1e-6)
    assert result.grad_norm_clipped == result.grad_norm
    for old, new in zip(before, grads_of(model), strict=True):
        assert torch.equal(old, new)


@pytest.mark.parametrize("policy", POLICIES)
def test_parameters_without_grads_are_skipped(policy):
    model = model_with_grads(scale=100.0)
    frozen = torch.nn.Parameter(torch.ones(3))  # never took part in backward: grad is None
    norm = total_norm(model)
    result = Clipper(policy, 1.0)([frozen, *model.parameters()])
    assert frozen.grad is None
    assert float(result.grad_norm) == pytest.approx(norm, rel=1e-5)


def test_no_gradients_at_all():
    result = Clipper("norm", 1.0)([torch.nn.Parameter(torch.ones(2))])
    assert (float(result.grad_norm), float(result.grad_norm_clipped), bool(result.clipped)) == (
        0.0, 0.0, False)


def test_unknown_policy():
    with pytest.raises(ValueError, match="clip.policy"):
        Clipper("autoclipp", 1.0)


def test_autoclip_threshold_is_numpys_percentile_of_the_history_within_a_bin():
    clipper = Clipper("autoclip", 10.0)
    norms = []
    for scale in (1.0, 50.0, 3.0, 200.0, 7.0, 0.5):
        model = model_with_grads(scale)
        norms.append(total_norm(model))
        result = clipper(model.parameters())
        assert float(result.grad_norm) == pytest.approx(norms[-1], rel=1e-5)
        assert float(result.threshold) == pytest.approx(np.percentile(norms, 10.0), rel=0.0182)
        assert total_norm(model) <= float(result.threshold) * (1 + 1e-5)
    assert clipper.adaptive


def test_autoclip_memory_is_bounded_and_its_percentile_stays_within_1_82_percent():
    histogram = NormHistogram()
    norms = np.random.default_rng(0).lognormal(mean=0.0, sigma=3.0, size=50_000)
    histogram.add(torch.from_numpy(norms[:10]))
    for norm in norms[10:100]:
        histogram.add(torch.tensor(norm))  # one step's norm, as the clipper adds it
    histogram.add(torch.from_numpy(norms[100:]))
    for q in (1.0, 10.0, 50.0, 90.0):
        assert float(histogram.percentile(q)) == pytest.approx(np.percentile(norms, q),
                                                               rel=0.0182)
    assert len(histogram.state_dict()) <= len(histogram.counts) == 24 * 64  # not 50,000


def test_a_checkpoint_from_before_the_histogram_still_loads():
    clipper = Clipper("autoclip", 50.0)
    clipper.load_state_dict({"threshold": 2.0, "history": [1.0, 10.0, 100.0]})
    assert clipper.threshold == 2.0
    assert float(clipper.norms.percentile(50.0)) == pytest.approx(10.0, rel=0.0182)


def test_autoclip_history_survives_a_checkpoint():
    clipper = Clipper("autoclip", 50.0)
    for scale in (1.0, 10.0, 100.0):
        clipper(model_with_grads(scale).parameters())
    restored = Clipper("autoclip", 50.0)
    restored.load_state_dict(clipper.state_dict())
    model_a, model_b = model_with_grads(30.0), model_with_grads(30.0)
    assert clipper(model_a.parameters()) == restored(model_b.parameters())


def unit_ratios(parameter: torch.nn.Parameter) -> torch.Tensor:
    if parameter.ndim <= 1:
        return parameter.grad.norm() / parameter.detach().norm().clamp(min=AGC_EPS)
    return parameter.grad.norm(dim=1) / parameter.detach().norm(dim=1).clamp(min=AGC_EPS)


def test_agc_bounds_every_units_ratio_and_spares_the_head():
    model = model_with_grads(scale=100.0)
    body, head = list(model[0].parameters()), list(model[2].parameters())
    head_grads = [p.grad.clone() for p in head]
    assert max(unit_ratios(p).max().item() for p in body) > 0.05
    result = Clipper("agc", 0.05)(model.parameters(), head=head)
    assert result.clipped and result.grad_norm_clipped < result.grad_norm
    for p in body:
        assert (unit_ratios(p) <= 0.05 * (1 + 1e-5)).all()
    for p, before in zip(head, head_grads, strict=True):
        assert torch.equal(p.grad, before)


def test_agc_leaves_units_under_lambda_alone():
    model = model_with_grads(scale=1e-3)
    before = grads_of(model)
    result = Clipper("agc", 10.0)(model.parameters())
    assert not result.clipped
    assert all(torch.equal(a, b) for a, b in zip(grads_of(model), before, strict=True))
