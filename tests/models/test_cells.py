from __future__ import annotations

import pytest
import torch
from torch import nn

from models import CELL_NAMES, ModelSpec, UnknownCellError, build_model
from models.cells import CELLS, build_recurrent

FUSED = {"rnn_tanh": nn.RNN, "rnn_relu": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def test_cell_names_are_the_registry():
    assert CELL_NAMES == ("rnn_tanh", "rnn_relu", "lstm", "gru", "ln_lstm", "ln_gru", "bn_lstm")
    assert CELL_NAMES == tuple(CELLS)


@pytest.mark.parametrize("cell", FUSED)
def test_builds_fused_batch_first_module(cell):
    rnn = build_recurrent(cell, input_size=3, hidden_size=5, num_layers=2, dropout=0.25)
    assert type(rnn) is FUSED[cell]
    assert rnn.batch_first
    assert (rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.dropout) == (3, 5, 2, 0.25)
    outputs, _ = rnn(torch.randn(4, 7, 3))
    assert outputs.shape == (4, 7, 5)


def test_rnn_nonlinearity_follows_the_name():
    assert build_recurrent("rnn_tanh", 2, 4, 1, 0.0).nonlinearity == "tanh"
    assert build_recurrent("rnn_relu", 2, 4, 1, 0.0).nonlinearity == "relu"


def test_unknown_cell_lists_valid_names():
    with pytest.raises(UnknownCellError) as info:
        build_recurrent("lstmm", 2, 4, 1, 0.0)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "'lstmm'" in message and "model.cell" in message
    for name in CELL_NAMES:
        assert name in message


def test_unknown_cell_raised_by_build_model():
    spec = ModelSpec("transformer", 2, 4, 1, 0.0, "regression", 1)
    with pytest.raises(UnknownCellError, match="rnn_tanh, rnn_relu, lstm, gru"):
        build_model(spec)


def test_new_cell_needs_only_a_registry_entry(monkeypatch):
    def tiny(input_size, hidden_size, num_layers, dropout):
        return nn.RNN(input_size, hidden_size, num_layers, dropout=dropout, batch_first=True)

    monkeypatch.setitem(CELLS, "tiny", tiny)
    assert isinstance(build_recurrent("tiny", 2, 4, 1, 0.0), nn.RNN)
    with pytest.raises(UnknownCellError, match="tiny"):
        build_recurrent("nope", 2, 4, 1, 0.0)
