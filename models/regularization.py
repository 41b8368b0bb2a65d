"""Regularization of a recurrent model against overfitting: dropout on what goes into
and comes out of the recurrent stack, and DropConnect on its recurrent weights.

- ``SequenceDropout`` (``model.input_dropout``, ``model.output_dropout``): dropout on
  (B, T, F) tensors. Plain dropout draws a fresh mask at every step. Variational
  dropout (``model.variational``, Gal & Ghahramani 2016) draws one mask per row and
  feature and keeps it for the whole sequence: a feature is either there all along or
  gone all along, which is dropout as an approximate Bayesian posterior over the
  weights, and does not inject new noise at every step that the recurrence would
  accumulate.
- ``weight_dropped`` (``model.weight_drop``, AWD-LSTM, Merity et al. 2017): DropConnect
  on the hidden-to-hidden matrices ``weight_hh_l{k}``. It regularises the recurrence
  itself, which dropout on activations leaves alone, and, being a mask on the weights,
  is the same at every step. The dropped matrices are passed with
  ``torch.func.functional_call``, so torch's fused kernels (cuDNN on a GPU) still run,
  and the stored weights are never modified: their gradient flows through the mask.

Dropout between stacked layers (``model.dropout``) is the cells' own, as in torch: a
fresh mask at every step, whatever ``model.variational`` says.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


class SequenceDropout(nn.Module):
    """Dropout on batch-first sequences (B, T, F); the identity in evaluation.

    With ``variational`` one mask of shape (B, 1, F) is drawn per call and broadcast
    over the T steps:

        x (B, T, F) * mask (B, 1, F)      row b, feature f dropped at every step or none
    """

    def __init__(self, p: float, variational: bool) -> None:
        super().__init__()
        self.p, self.variational = p, variational

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if not self.variational:
            return F.dropout(x, self.p, training=True)
        mask = F.dropout(x.new_ones(x.size(0), 1, x.size(2)), self.p, training=True)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, variational={self.variational}"


def weight_dropped(rnn: nn.Module, inputs: torch.Tensor, p: float, state=None):
    """``rnn(inputs, state)`` with DropConnect at rate ``p`` on every ``weight_hh_l{k}``.

    A fresh mask per call (per batch), scaled by 1 / (1 - p) like dropout, so nothing
    needs rescaling in evaluation, where the model is called without this.
    """
    dropped = {name: F.dropout(weight, p, training=True)
               for name, weight in rnn.named_parameters() if name.startswith("weight_hh_l")}
    return functional_call(rnn, dropped, (inputs, state))
