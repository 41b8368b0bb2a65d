from __future__ import annotations

import copy

import pytest
import torch

from models import ModelSpec, build_model
from models.cells import build_recurrent
from models.regularization import SequenceDropout, weight_dropped

BATCH, STEPS, FEATURES, HIDDEN = 16, 9, 12, 6


def ones():
    return torch.ones(BATCH, STEPS, FEATURES)


def test_variational_mask_is_the_same_at_every_step_and_differs_between_rows():
    torch.manual_seed(0)
    dropped = SequenceDropout(0.5, variational=True).train()(ones())
    assert set(dropped.unique().tolist()) == {0.0, 2.0}  # kept values scaled by 1 / (1 - p)
    torch.testing.assert_close(dropped, dropped[:, :1].expand_as(dropped), atol=0, rtol=0)
    masks = dropped[:, 0]  # (B, F)
    assert len({tuple(row.tolist()) for row in masks}) > BATCH // 2


def test_plain_dropout_draws_a_new_mask_at_every_step():
    torch.manual_seed(0)
    dropped = SequenceDropout(0.5, variational=False).train()(ones())
    assert set(dropped.unique().tolist()) == {0.0, 2.0}
    assert not torch.equal(dropped[:, 0], dropped[:, 1])


@pytest.mark.parametrize("variational", [False, True])
def test_sequence_dropout_is_the_identity_in_evaluation_and_at_rate_zero(variational):
    x = torch.randn(BATCH, STEPS, FEATURES)
    assert SequenceDropout(0.5, variational).eval()(x) is x
    assert SequenceDropout(0.0, variational).train()(x) is x


@pytest.mark.parametrize("cell", ["lstm", "gru", "ln_lstm", "bn_lstm"])
def test_weight_drop_masks_a_copy_of_the_recurrent_weights(cell):
    torch.manual_seed(0)
    rnn = build_recurrent(cell, FEATURES, HIDDEN, 2, 0.0).train()
    stored = {name: param.detach().clone() for name, param in rnn.named_parameters()}
    x = torch.randn(BATCH, STEPS, FEATURES)

    torch.manual_seed(5)
    dropped_outputs, _ = weight_dropped(rnn, x, 0.5)
    assert all(torch.equal(stored[name], param) for name, param in rnn.named_parameters())
    assert not torch.allclose(dropped_outputs, rnn(x)[0])

    reference = copy.deepcopy(rnn)  # the same masks, applied to the weights themselves
    torch.manual_seed(5)
    with torch.no_grad():
        for k in range(2):
            weight = getattr(reference, f"weight_hh_l{k}")
            weight.copy_(torch.nn.functional.dropout(weight, 0.5, training=True))
    torch.testing.assert_close(dropped_outputs, reference(x)[0], atol=1e-6, rtol=1e-5)

    dropped_outputs.square().sum().backward()
    for k in range(2):
        grad = getattr(rnn, f"weight_hh_l{k}").grad
        masked = getattr(reference, f"weight_hh_l{k}") == 0
        assert grad[~masked].abs().sum() > 0  # the raw weights learn through the mask
        assert torch.equal(grad[masked], torch.zeros_like(grad[masked]))


def spec(**regularization):
    return ModelSpec(cell="lstm", input_size=FEATURES, hidden_size=HIDDEN, num_layers=1,
                     dropout=0.0, head="per_step", output_size=2, **regularization)


@pytest.mark.parametrize("key", ["input_dropout", "output_dropout", "weight_drop"])
def test_each_regularizer_acts_in_training_only(key):
    torch.manual_seed(0)
    plain = build_model(spec())
    regularized = build_model(spec(**{key: 0.5}))
    regularized.load_state_dict(plain.state_dict())  # same parameters, nothing added
    x = torch.randn(BATCH, STEPS, FEATURES)
    regularized.train()
    assert not torch.equal(regularized(x), regularized(x))
    plain.eval(), regularized.eval()
    with torch.no_grad():
        torch.testing.assert_close(regularized(x), plain(x), atol=0, rtol=0)


def test_spec_builds_the_dropouts_it_names():
    model = build_model(spec(input_dropout=0.5, output_dropout=0.25, variational=True))
    assert (model.input_dropout.p, model.input_dropout.variational) == (0.5, True)
    assert (model.output_dropout.p, model.output_dropout.variational) == (0.25, True)
    torch.manual_seed(0)
    dropped = model.train().input_dropout(ones())
    torch.testing.assert_close(dropped, dropped[:, :1].expand_as(dropped), atol=0, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "ln_gru"])
def test_weight_drop_starts_from_the_state_it_is_given(cell):
    """A language model carries its state into the next chunk with weight drop on too:
    under the same mask (same seed), starting from a state differs from starting at zero."""
    rnn = build_recurrent(cell, 3, 4, 1, 0.0)
    inputs = torch.randn(2, 5, 3)
    _, state = rnn(torch.randn(2, 5, 3))
    torch.manual_seed(7)
    from_state, _ = weight_dropped(rnn, inputs, 0.5, state)
    torch.manual_seed(7)
    from_zeros, _ = weight_dropped(rnn, inputs, 0.5)
    assert not torch.allclose(from_state, from_zeros)
