from __future__ import annotations

import pytest
import torch

from models.cells import build_recurrent
from models.unrolled import Unrolled

CUSTOM = ("ln_lstm", "ln_gru", "bn_lstm")
GATES = {"ln_lstm": {"input", "forget", "output"}, "ln_gru": {"reset", "update"},
         "bn_lstm": {"input", "forget", "output"}}
BATCH, STEPS, FEATURES, HIDDEN, LAYERS = 4, 6, 3, 5, 2


def built(cell, dropout=0.0):
    torch.manual_seed(0)
    return build_recurrent(cell, FEATURES, HIDDEN, LAYERS, dropout)


def inputs():
    torch.manual_seed(1)
    return torch.randn(BATCH, STEPS, FEATURES)


@pytest.mark.parametrize("cell", CUSTOM)
def test_outputs_and_state_shaped_like_torchs(cell):
    rnn = built(cell)
    assert rnn.batch_first and (rnn.num_layers, rnn.hidden_size) == (LAYERS, HIDDEN)
    outputs, state = rnn(inputs())
    assert outputs.shape == (BATCH, STEPS, HIDDEN)
    states = state if isinstance(state, tuple) else (state,)
    assert len(states) == (1 if cell == "ln_gru" else 2)
    assert all(s.shape == (LAYERS, BATCH, HIDDEN) for s in states)
    torch.testing.assert_close(states[0][-1], outputs[:, -1], atol=0, rtol=0)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("cell", CUSTOM)
def test_unroll_is_the_forward_pass(cell, training):
    rnn = built(cell).train(training)
    x = inputs()
    unrolled = rnn.unroll(x)
    assert isinstance(unrolled, Unrolled)
    # forward runs the compiled time loop, unroll the Python one: the same sums in another
    # order
    torch.testing.assert_close(unrolled.outputs, rnn(x)[0], atol=1e-6, rtol=1e-5)
    assert len(unrolled.hidden) == STEPS
    torch.testing.assert_close(torch.stack(unrolled.hidden, dim=1), unrolled.outputs,
                               atol=0, rtol=0)


@pytest.mark.parametrize("cell", CUSTOM)
def test_unroll_gives_gradients_through_time(cell):
    rnn = built(cell).eval()
    unrolled = rnn.unroll(inputs())
    loss = unrolled.outputs[:, -1].square().sum()  # reads only the last step
    grads = torch.autograd.grad(loss, unrolled.hidden)
    assert all(g.shape == (BATCH, HIDDEN) for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)  # dL/dh_0 can only come through time


@pytest.mark.parametrize("cell", CUSTOM)
def test_unroll_gives_the_top_layers_gates(cell):
    unrolled = built(cell).unroll(inputs())
    assert set(unrolled.gates) == GATES[cell]
    for values in unrolled.gates.values():
        assert values.shape == (BATCH, STEPS, HIDDEN)
        assert ((values > 0) & (values < 1)).all()


@pytest.mark.parametrize("cell", CUSTOM)
def test_dropout_between_layers_only_in_training(cell):
    rnn = built(cell, dropout=0.5)
    x = inputs()
    rnn.train()
    assert not torch.equal(rnn(x)[0], rnn(x)[0])
    rnn.eval()
    torch.testing.assert_close(rnn(x)[0], rnn(x)[0], atol=0, rtol=0)
    single = build_recurrent(cell, FEATURES, HIDDEN, 1, 0.5).train()
    assert torch.equal(single(x)[0], single(x)[0])
