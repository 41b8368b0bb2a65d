from __future__ import annotations

import pytest
import torch

from models import CELL_NAMES, ModelSpec, build_model
from models.cells import build_recurrent
from models.init import LSTM_CELLS, initialize_recurrent

HIDDEN = 6
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3, "ln_lstm": 4, "ln_gru": 3,
         "bn_lstm": 4}


def initialized(cell, num_layers=2):
    torch.manual_seed(0)
    rnn = build_recurrent(cell, input_size=3, hidden_size=HIDDEN, num_layers=num_layers,
                          dropout=0.0)
    initialize_recurrent(rnn, cell)
    return rnn


def layers(rnn):
    return range(rnn.num_layers)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_recurrent_gate_blocks_are_orthogonal(cell):
    rnn = initialized(cell)
    for k in layers(rnn):
        blocks = getattr(rnn, f"weight_hh_l{k}").detach().split(HIDDEN)
        assert len(blocks) == GATES[cell]
        for block in blocks:
            torch.testing.assert_close(block @ block.T, torch.eye(HIDDEN), atol=1e-5, rtol=0)


def test_rnn_relu_recurrent_weights_are_identity():
    rnn = initialized("rnn_relu")
    for k in layers(rnn):
        assert torch.equal(getattr(rnn, f"weight_hh_l{k}").detach(), torch.eye(HIDDEN))


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_biases_zero_except_lstm_forget_gate(cell):
    rnn = initialized(cell)
    for k in layers(rnn):
        combined = (getattr(rnn, f"bias_ih_l{k}") + getattr(rnn, f"bias_hh_l{k}")).detach()
        expected = torch.zeros(GATES[cell] * HIDDEN)
        if cell in LSTM_CELLS:  # torch gate order: input, forget, cell, output
            expected[HIDDEN:2 * HIDDEN] = 1.0
        assert torch.equal(combined, expected)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_input_weights_are_xavier_scaled_per_gate(cell):
    rnn = initialized(cell, num_layers=1)
    bound = (6 / (3 + HIDDEN)) ** 0.5  # xavier_uniform bound for one (H x F) gate block
    for block in rnn.weight_ih_l0.detach().split(HIDDEN):
        assert block.abs().max() <= bound
        assert block.abs().max() > bound / 2


def test_sequence_model_applies_the_initialisation():
    model = build_model(ModelSpec("lstm", 3, HIDDEN, 1, 0.0, "regression", 1))
    forget = (model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0).detach()[HIDDEN:2 * HIDDEN]
    assert torch.equal(forget, torch.ones(HIDDEN))


def test_every_cell_with_lstm_gates_gets_the_forget_bias():
    four_gate_cells = {cell for cell in CELL_NAMES
                       if initialized(cell).weight_hh_l0.size(0) == 4 * HIDDEN}
    assert four_gate_cells == LSTM_CELLS


@pytest.mark.parametrize("cell", ["ln_lstm", "ln_gru", "bn_lstm"])
def test_normalization_parameters_keep_their_own_start(cell):
    gain = 0.1 if cell == "bn_lstm" else 1.0
    for name, param in initialized(cell).named_parameters():
        if name.startswith("norm_") and name.endswith(".weight"):
            assert torch.equal(param.detach(), torch.full_like(param, gain)), name
        elif name.startswith("norm_"):
            assert torch.equal(param.detach(), torch.zeros_like(param)), name
