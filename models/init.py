"""The initialisations that decide whether a recurrent network trains at all.

torch's default (uniform in +-1/sqrt(H)) makes the recurrent matrix shrink or grow the
hidden state a little at every step; over hundreds of steps that is the vanishing or
exploding gradient. So:

- Recurrent weights are orthogonal, one gate block at a time: an orthogonal matrix keeps
  the norm of what it multiplies, so gradients neither vanish nor explode through the
  linear part of the recurrence (Saxe et al. 2014). Each gate is a separate H x H map,
  hence separately orthogonal; one orthogonal (4H x H) matrix would not make each gate so.
- rnn_relu starts from the identity (IRNN, Le et al. 2015): with ReLU and zero biases
  the hidden state is copied forward unchanged, so a plain RNN can carry information
  over long gaps, matching LSTMs on the adding problem.
- Input weights are Xavier-uniform per gate block, so each gate's pre-activation starts
  with unit-scale variance whatever the input size.
- Biases are zero except the LSTM forget gate, which starts at 1 (Gers et al. 2000;
  Jozefowicz et al. 2015): a forget gate near sigmoid(0) = 0.5 halves the cell state at
  every step, and the memory is gone before learning can find it useful.
"""

from __future__ import annotations

import torch
from torch import nn

# Cells with the LSTM's gates in torch's order, whose forget gate starts biased to 1.
LSTM_CELLS = frozenset({"lstm", "ln_lstm", "bn_lstm"})


@torch.no_grad()
def initialize_recurrent(rnn: nn.Module, cell: str) -> None:
    """Initialise a recurrent stack built by ``build_recurrent`` in place.

    torch stacks the gates of a layer along the rows of ``weight_ih_l{k}``,
    ``weight_hh_l{k}`` and the biases, H rows each, LSTM in the order
    (input, forget, cell, output). The effective bias is ``bias_ih + bias_hh``; the
    forget-gate 1 goes into ``bias_ih`` only. The custom cells keep that layout, so the
    same rules apply to them; their normalisation gains and shifts (``norm_*``) keep the
    values their modules start them at.
    """
    hidden = rnn.hidden_size
    for name, param in rnn.named_parameters():
        if name.startswith("weight_hh"):
            if cell == "rnn_relu":
                nn.init.eye_(param)
            else:
                for block in param.split(hidden):
                    nn.init.orthogonal_(block)
        elif name.startswith("weight_ih"):
            for block in param.split(hidden):
                nn.init.xavier_uniform_(block)
        elif name.startswith("bias"):
            nn.init.zeros_(param)
            if cell in LSTM_CELLS and name.startswith("bias_ih"):
                nn.init.ones_(param.split(hidden)[1])
