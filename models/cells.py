"""Recurrent layers chosen by config name (``model.cell``).

The built-in cells are torch's fused modules: one call runs the whole sequence through
every layer, which is what lets cuDNN do the work on a GPU. The normalized cells
(``ln_lstm``, ``ln_gru``, ``bn_lstm``) normalise inside the recurrence, which the fused
kernels cannot, and run their time loop step by step (``models.custom_cells``), compiled
on CPU (``models.compiled_loops``). A cell joins by adding one entry to ``CELLS``:
anything callable as ``builder(input_size, hidden_size, num_layers, dropout=dropout)``
that returns a batch-first module mapping inputs (B, T, F) to
``(outputs (B, T, H), state)``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from models.batch_norm_lstm import BatchNormLSTM
from models.layer_norm_cells import LayerNormGRU, LayerNormLSTM

CELLS: dict[str, Callable[..., nn.Module]] = {
    "rnn_tanh": partial(nn.RNN, nonlinearity="tanh", batch_first=True),
    "rnn_relu": partial(nn.RNN, nonlinearity="relu", batch_first=True),
    "lstm": partial(nn.LSTM, batch_first=True),
    "gru": partial(nn.GRU, batch_first=True),
    "ln_lstm": LayerNormLSTM,
    "ln_gru": LayerNormGRU,
    "bn_lstm": BatchNormLSTM,
}
CELL_NAMES = tuple(CELLS)


class UnknownCellError(ValueError):
    """``model.cell`` names no entry of ``CELLS``; the message lists the valid names."""


def build_recurrent(
    cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float
) -> nn.Module:
    """Build the recurrent stack for ``cell``.

    ``dropout`` acts like torch's own in every cell: applied to the outputs of every
    layer but the last, a fresh mask at every step, so it only acts when
    ``num_layers > 1``.
    """
    if cell not in CELLS:
        raise UnknownCellError(
            f"model.cell: unknown cell {cell!r}; expected one of {', '.join(CELLS)}."
        )
    return CELLS[cell](input_size, hidden_size, num_layers, dropout=dropout)
