from __future__ import annotations

import pytest
import torch

from models import HEAD_NAMES, ModelSpec, build_model
from models.heads import PerStepHead, RegressionHead, SequenceHead, build_head

LENGTHS = torch.tensor([3, 5, 1])


def padded_batch(features=2, steps=5):
    torch.manual_seed(1)
    inputs = torch.randn(len(LENGTHS), steps, features)
    inputs[torch.arange(steps) >= LENGTHS.unsqueeze(1)] = 0.0
    return inputs


def with_new_padding(inputs):
    """Same rows, garbage after each row's length."""
    changed = inputs.clone()
    pad = torch.arange(inputs.size(1)) >= LENGTHS.unsqueeze(1)
    changed[pad] = torch.randn(int(pad.sum()), inputs.size(2)) * 10
    return changed


def model(cell, head, output_size=3):
    torch.manual_seed(0)
    return build_model(ModelSpec(cell, 2, 8, 1, 0.0, head, output_size)).eval()


def test_head_names():
    assert HEAD_NAMES == ("regression", "per_step", "sequence")


def test_unknown_head_lists_valid_names():
    with pytest.raises(ValueError, match="'classify'.*regression, per_step, sequence"):
        build_head("classify", 4, 2)


def test_regression_head_reads_step_lengths_minus_one():
    head = RegressionHead(4, 2)
    outputs = torch.randn(3, 5, 4)
    expected = head.linear(torch.stack([outputs[0, 2], outputs[1, 4], outputs[2, 0]]))
    torch.testing.assert_close(head(outputs, LENGTHS), expected)


def test_sequence_head_is_linear_on_mean_of_valid_steps():
    head = SequenceHead(4, 2)
    outputs = torch.randn(3, 5, 4)
    means = torch.stack([outputs[0, :3].mean(0), outputs[1].mean(0), outputs[2, :1].mean(0)])
    torch.testing.assert_close(head(outputs, LENGTHS), head.linear(means))


def test_per_step_head_keeps_every_step():
    head = PerStepHead(4, 2)
    outputs = torch.randn(3, 5, 4)
    torch.testing.assert_close(head(outputs, LENGTHS), head.linear(outputs))


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm"])
def test_regression_ignores_inputs_after_length(cell):
    net = model(cell, "regression")
    inputs = padded_batch()
    with torch.no_grad():
        before = net(inputs, LENGTHS)
        after = net(with_new_padding(inputs), LENGTHS)
        inputs_changed_inside = inputs.clone()
        inputs_changed_inside[0, 2] += 1.0  # the last valid step of row 0
        inside = net(inputs_changed_inside, LENGTHS)
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    assert not torch.allclose(inside[0], before[0])
    torch.testing.assert_close(inside[1:], before[1:], atol=0, rtol=0)


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru"])
def test_sequence_ignores_padding(cell):
    net = model(cell, "sequence")
    inputs = padded_batch()
    with torch.no_grad():
        padded = net(inputs, LENGTHS)
        repadded = net(with_new_padding(inputs), LENGTHS)
        alone = torch.cat([net(inputs[i:i + 1, :n]) for i, n in enumerate(LENGTHS.tolist())])
    torch.testing.assert_close(repadded, padded, atol=0, rtol=0)
    torch.testing.assert_close(alone, padded)


def test_per_step_valid_steps_ignore_padding():
    net = model("lstm", "per_step")
    inputs = padded_batch()
    with torch.no_grad():
        before = net(inputs, LENGTHS)
        after = net(with_new_padding(inputs), LENGTHS)
    valid = torch.arange(inputs.size(1)) < LENGTHS.unsqueeze(1)
    torch.testing.assert_close(after[valid], before[valid], atol=0, rtol=0)
    assert not torch.allclose(after[~valid], before[~valid])
