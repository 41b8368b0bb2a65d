from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.layer_norm_cells import BlockLayerNorm, LayerNormGRU, LayerNormLSTM

BATCH, STEPS, FEATURES, HIDDEN = 3, 7, 4, 5
PAIRS = {"lstm": (LayerNormLSTM, nn.LSTM), "gru": (LayerNormGRU, nn.GRU)}


def inputs():
    torch.manual_seed(3)
    return torch.randn(BATCH, STEPS, FEATURES)


@pytest.mark.parametrize("kind", PAIRS)
def test_without_normalization_it_is_torchs_cell(kind):
    custom_class, fused_class = PAIRS[kind]
    torch.manual_seed(0)
    fused = fused_class(FEATURES, HIDDEN, num_layers=2, batch_first=True)
    custom = custom_class(FEATURES, HIDDEN, num_layers=2, normalize=False)
    custom.load_state_dict(fused.state_dict())  # strict: the very same parameters
    x = inputs()
    expected, expected_state = fused(x)
    got, state = custom(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    for mine, theirs in zip(as_tuple(state), as_tuple(expected_state), strict=True):
        assert mine.shape == theirs.shape == (2, BATCH, HIDDEN)
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(got.square().sum(), list(custom.parameters()))
    expected_grads = torch.autograd.grad(expected.square().sum(), list(fused.parameters()))
    for mine, theirs in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def reference_ln_lstm(cell: LayerNormLSTM, x: torch.Tensor) -> torch.Tensor:
    """One layer, written from Ba et al. 2016 with one layer_norm call per gate."""
    def ln(v, gain, bias=None):
        return F.layer_norm(v, (HIDDEN,), gain, bias, eps=1e-5)

    w_ih, w_hh = cell.weight_ih_l0.split(HIDDEN), cell.weight_hh_l0.split(HIDDEN)
    g_ih, g_hh = cell.norm_ih_l0.weight.split(HIDDEN), cell.norm_hh_l0.weight.split(HIDDEN)
    bias = (cell.bias_ih_l0 + cell.bias_hh_l0).split(HIDDEN)
    h = c = torch.zeros(x.size(0), HIDDEN)
    outputs = []
    for t in range(x.size(1)):
        i, f, g, o = (ln(x[:, t] @ w_ih[j].T, g_ih[j]) + ln(h @ w_hh[j].T, g_hh[j]) + bias[j]
                      for j in range(4))
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(ln(c, cell.norm_cell_l0.weight,
                                             cell.norm_cell_l0.bias))
        outputs.append(h)
    return torch.stack(outputs, dim=1)


def reference_ln_gru(cell: LayerNormGRU, x: torch.Tensor) -> torch.Tensor:
    def ln(v, gain):
        return F.layer_norm(v, (HIDDEN,), gain, eps=1e-5)

    w_ih, w_hh = cell.weight_ih_l0.split(HIDDEN), cell.weight_hh_l0.split(HIDDEN)
    g_ih, g_hh = cell.norm_ih_l0.weight.split(HIDDEN), cell.norm_hh_l0.weight.split(HIDDEN)
    b_ih, b_hh = cell.bias_ih_l0.split(HIDDEN), cell.bias_hh_l0.split(HIDDEN)
    h = torch.zeros(x.size(0), HIDDEN)
    outputs = []
    for t in range(x.size(1)):
        xs = [ln(x[:, t] @ w_ih[j].T, g_ih[j]) + b_ih[j] for j in range(3)]
        hs = [ln(h @ w_hh[j].T, g_hh[j]) + b_hh[j] for j in range(3)]
        r, z = torch.sigmoid(xs[0] + hs[0]), torch.sigmoid(xs[1] + hs[1])
        n = torch.tanh(xs[2] + r * hs[2])
        h = (1 - z) * n + z * h
        outputs.append(h)
    return torch.stack(outputs, dim=1)


def randomized(cell):
    """Gains and shifts away from their 1/0 start, so the test sees them used."""
    with torch.no_grad():
        for name, param in cell.named_parameters():
            if name.startswith("norm_"):
                param.uniform_(0.5, 1.5)
    return cell


@pytest.mark.parametrize("kind", PAIRS)
def test_matches_the_papers_equations(kind):
    torch.manual_seed(1)
    cell = randomized(PAIRS[kind][0](FEATURES, HIDDEN))
    reference = reference_ln_lstm if kind == "lstm" else reference_ln_gru
    x = inputs()
    torch.testing.assert_close(cell(x)[0], reference(cell, x), atol=1e-5, rtol=1e-5)


def block_scaled_outputs(cell, x):
    """Outputs before and after scaling each gate block of W_ih and W_hh by its own factor."""
    with torch.no_grad():  # pre-activation variances far above the norm's eps
        cell.weight_ih_l0.mul_(4)
        cell.weight_hh_l0.mul_(4)
        before = cell(x)[0]
        for weight in (cell.weight_ih_l0, cell.weight_hh_l0):
            blocks = weight.split(HIDDEN)
            for factor, block in zip((3.0, 0.5, 7.0, 2.0)[:len(blocks)], blocks, strict=True):
                block.mul_(factor)
        return before, cell(x)[0]


@pytest.mark.parametrize("kind", PAIRS)
def test_each_gate_block_is_normalized_on_its_own(kind):
    """Layer norm per gate block makes the output blind to scaling any block of W_ih or
    W_hh by its own factor; one norm over all gates together would not be, nor no norm."""
    torch.manual_seed(2)
    before, after = block_scaled_outputs(PAIRS[kind][0](FEATURES, HIDDEN), inputs())
    torch.testing.assert_close(after, before, atol=1e-3, rtol=0)
    torch.manual_seed(2)
    before, after = block_scaled_outputs(PAIRS[kind][0](FEATURES, HIDDEN, normalize=False),
                                         inputs())
    assert (after - before).abs().max() > 0.1


def test_block_layer_norm_gives_each_block_zero_mean_unit_variance():
    norm = BlockLayerNorm(blocks=3, width=8)
    x = torch.randn(4, 24) * torch.tensor([1.0, 10.0, 0.5]).repeat_interleave(8) + 5
    blocks = norm(x).unflatten(-1, (3, 8))
    torch.testing.assert_close(blocks.mean(-1), torch.zeros(4, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(blocks.var(-1, correction=0), torch.ones(4, 3), atol=1e-3,
                               rtol=0)


def test_normalize_off_has_exactly_torchs_parameters():
    names = {name for name, _ in LayerNormLSTM(2, 3, 2, normalize=False).named_parameters()}
    assert names == {name for name, _ in nn.LSTM(2, 3, 2).named_parameters()}
    normalized = {name for name, _ in LayerNormGRU(2, 3, 1).named_parameters()}
    assert normalized == {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                          "norm_ih_l0.weight", "norm_hh_l0.weight"}
