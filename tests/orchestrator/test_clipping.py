from __future__ import annotations

import pytest
import torch

from orchestrator.clipping import clip_gradients


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
    result = clip_gradients(model.parameters(), "norm", 1.0)
    assert result.clipped
    assert result.grad_norm == pytest.approx(before, rel=1e-5)
    assert total_norm(model) <= 1.0 + 1e-6
    assert result.grad_norm_clipped == pytest.approx(total_norm(model), rel=1e-5)


def test_norm_keeps_the_direction():
    model = model_with_grads(scale=100.0)
    before = torch.cat([g.reshape(-1) for g in grads_of(model)])
    clip_gradients(model.parameters(), "norm", 1.0)
    after = torch.cat([g.reshape(-1) for g in grads_of(model)])
    cosine = torch.nn.functional.cosine_similarity(before, after, dim=0)
    assert cosine.item() == pytest.approx(1.0, abs=1e-5)


def test_norm_below_the_threshold_changes_nothing():
    model = model_with_grads(scale=0.01)
    before = grads_of(model)
    norm = total_norm(model)
    result = clip_gradients(model.parameters(), "norm", 10 * norm + 1.0)
    assert not result.clipped
    assert result.grad_norm == pytest.approx(result.grad_norm_clipped)
    for old, new in zip(before, grads_of(model), strict=True):
        assert torch.equal(old, new)


def test_value_bounds_every_element():
    model = model_with_grads(scale=100.0)
    threshold = 0.0625  # exact in float32, so `<=` needs no tolerance
    assert max(g.abs().max().item() for g in grads_of(model)) > threshold
    result = clip_gradients(model.parameters(), "value", threshold)
    assert result.clipped
    for grad in grads_of(model):
        assert grad.abs().max().item() <= threshold
    assert result.grad_norm_clipped == pytest.approx(total_norm(model), rel=1e-5)
    assert result.grad_norm_clipped < result.grad_norm


def test_none_leaves_gradients_untouched_and_measures_torchs_norm():
    model = model_with_grads(scale=100.0)
    before = grads_of(model)
    expected = torch.nn.utils.get_total_norm(before).item()
    result = clip_gradients(model.parameters(), "none", 1.0)
    assert not result.clipped
    assert result.grad_norm == pytest.approx(expected, rel=1e-6)
    assert result.grad_norm_clipped == result.grad_norm
    for old, new in zip(before, grads_of(model), strict=True):
        assert torch.equal(old, new)


@pytest.mark.parametrize("policy", ["none", "norm", "value"])
def test_parameters_without_grads_are_skipped(policy):
    model = model_with_grads(scale=100.0)
    frozen = torch.nn.Parameter(torch.ones(3))  # never took part in backward: grad is None
    norm = total_norm(model)
    result = clip_gradients([frozen, *model.parameters()], policy, 1.0)
    assert frozen.grad is None
    assert result.grad_norm == pytest.approx(norm, rel=1e-5)


def test_no_gradients_at_all():
    result = clip_gradients([torch.nn.Parameter(torch.ones(2))], "norm", 1.0)
    assert (result.grad_norm, result.grad_norm_clipped, result.clipped) == (0.0, 0.0, False)


def test_unknown_policy():
    model = model_with_grads(scale=1.0)
    with pytest.raises(ValueError, match="clip.policy"):
        clip_gradients(model.parameters(), "autoclipp", 1.0)
