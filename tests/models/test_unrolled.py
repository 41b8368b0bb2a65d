"""The unrolled pass replays torch's fused cells step by step, with the same results."""

from __future__ import annotations

import pytest
import torch

from models.cells import build_recurrent
from models.init import initialize_recurrent
from models.unrolled import Unrolled, unroll

FUSED = ("rnn_tanh", "rnn_relu", "lstm", "gru")
GATES = {"rnn_tanh": set(), "rnn_relu": set(), "lstm": {"input", "forget", "output"},
         "gru": {"reset", "update"}}
BATCH, STEPS, FEATURES, HIDDEN = 3, 7, 2, 5


def recurrent(cell: str, num_layers: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    rnn = build_recurrent(cell, FEATURES, HIDDEN, num_layers, dropout=0.0)
    initialize_recurrent(rnn, cell)
    return rnn


def inputs() -> torch.Tensor:
    return torch.randn(BATCH, STEPS, FEATURES, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("cell", FUSED)
def test_outputs_and_hidden_match_the_fused_module(cell):
    rnn = recurrent(cell, num_layers=2)
    x = inputs()
    fused, _ = rnn(x)
    unrolled = unroll(rnn, cell, x)
    torch.testing.assert_close(unrolled.outputs, fused, atol=1e-5, rtol=1e-5)
    assert len(unrolled.hidden) == STEPS
    torch.testing.assert_close(torch.stack(unrolled.hidden, dim=1), fused, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", FUSED)
def test_gates_are_the_top_layer_activations_in_0_1(cell):
    unrolled = unroll(recurrent(cell, num_layers=2), cell, inputs())
    assert set(unrolled.gates) == GATES[cell]
    for name, values in unrolled.gates.items():
        assert values.shape == (BATCH, STEPS, HIDDEN), name
        assert ((values > 0) & (values < 1)).all(), name


@pytest.mark.parametrize("cell", FUSED)
def test_gradient_at_the_last_step_is_the_direct_gradient(cell):
    unrolled = unroll(recurrent(cell, num_layers=2), cell, inputs())
    weights = torch.randn(BATCH, HIDDEN)
    loss = (unrolled.outputs[:, -1] * weights).sum()
    grads = torch.autograd.grad(loss, unrolled.hidden)
    torch.testing.assert_close(grads[-1], weights)
    assert grads[0].abs().sum() > 0  # and earlier steps get some through the recurrence


@pytest.mark.parametrize("cell", FUSED)
def test_gradient_through_time_matches_the_fused_module_restarted_at_t(cell):
    """dL/dh_t of the unrolled graph equals the gradient of the same loss computed by the
    fused module run from h_t (and c_t) over the rest of the sequence."""
    rnn = recurrent(cell)
    x = inputs()
    weights = torch.randn(BATCH, HIDDEN)
    unrolled = unroll(rnn, cell, x)
    grads = torch.autograd.grad((unrolled.outputs[:, -1] * weights).sum(), unrolled.hidden)
    with torch.no_grad():
        _, states = zip(*(rnn(x[:, :t + 1]) for t in range(STEPS - 1)), strict=True)
    for t, state in enumerate(states):
        h = (state[0] if cell == "lstm" else state).clone().requires_grad_()
        rest = (h, state[1]) if cell == "lstm" else h
        outputs, _ = rnn(x[:, t + 1:], rest)
        (expected,) = torch.autograd.grad((outputs[:, -1] * weights).sum(), h)
        torch.testing.assert_close(grads[t], expected[0], atol=1e-5, rtol=1e-4)


def test_vanishing_is_visible_for_a_tanh_rnn_with_small_weights():
    rnn = recurrent("rnn_tanh")
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(0.3)
    unrolled = unroll(rnn, "rnn_tanh", inputs())
    grads = torch.autograd.grad(unrolled.outputs[:, -1].sum(), unrolled.hidden)
    norms = [g.norm().item() for g in grads]
    assert norms[0] < 1e-2 * norms[-1]


def test_a_module_with_its_own_unroll_runs_it():
    class Custom(torch.nn.Module):
        def unroll(self, x):
            return Unrolled(x, [x[:, t] for t in range(x.size(1))], {"forget": x})

    x = inputs()
    assert unroll(Custom(), "ln_lstm", x).gates["forget"] is x


def test_a_cell_without_an_unrolled_pass_is_named():
    with pytest.raises(ValueError, match="model.cell 'mystery'"):
        unroll(torch.nn.Linear(2, 2), "mystery", inputs())
