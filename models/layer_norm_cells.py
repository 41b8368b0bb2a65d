"""Layer-normalized LSTM and GRU (Ba, Kiros & Hinton 2016): ``ln_lstm`` and ``ln_gru``.

Why: in a plain recurrent net the scale of the gates' pre-activations drifts from step
to step as the hidden state grows or shrinks; large pre-activations saturate the
sigmoids and tanh, whose gradient then vanishes, and the drift itself makes the
effective learning rate change along the sequence. Normalising each gate's
pre-activation over its H units, per row and per step, holds it at the scale its gain
sets, whatever the step. The statistics are each row's own, so training and evaluation
compute the same thing, for any batch size and any length (unlike batch normalization).

What is normalised, each with its own per-unit gain:

    W_ih x_t      per gate block (H units each)        norm_ih_l{k}
    W_hh h_{t-1}  per gate block                       norm_hh_l{k}
    c_t           LSTM only, before the output tanh    norm_cell_l{k} (gain and shift)

The torch-layout biases are added after the normalisation: inside it, a bias would be
partly normalised away, and the LSTM's forget bias of 1 (a constant over its block)
entirely.

``normalize=False`` builds the same cell without normalisation: it then has exactly the
parameters of ``nn.LSTM``/``nn.GRU`` and computes what they compute, the reference the
normalised version is tested against. On CPU the normalised cells' forward runs the
compiled loops of ``models.compiled_loops``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models import compiled_loops
from models.custom_cells import CustomRecurrent, LayerRun, gru_steps, lstm_steps


class BlockLayerNorm(nn.Module):
    """Layer normalization of each of ``blocks`` consecutive blocks of ``width`` features
    on its own, then a gain per feature (and a shift per feature when ``shift``)."""

    def __init__(self, blocks: int, width: int, shift: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.blocks, self.width, self.eps = blocks, width, eps
        self.weight = nn.Parameter(torch.ones(blocks * width))
        self.bias = nn.Parameter(torch.zeros(blocks * width)) if shift else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.blocks == 1:  # one fused kernel, gain and shift included
            return F.layer_norm(x, (self.width,), self.weight, self.bias, self.eps)
        blocks = x.unflatten(-1, (self.blocks, self.width))
        x = F.layer_norm(blocks, (self.width,), eps=self.eps).flatten(-2) * self.weight
        return x if self.bias is None else x + self.bias


class LayerNormRecurrent(CustomRecurrent):
    """What ``ln_lstm`` and ``ln_gru`` share: ``normalize=False`` builds the cell without
    its norms, which runs the Python loop."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, normalize: bool = True, compiled: bool = True) -> None:
        super().__init__(input_size, hidden_size, num_layers, dropout, compiled)
        self.normalize = normalize

    def _runs_compiled(self, inputs: torch.Tensor, unrolling: bool) -> bool:
        return self.normalize and super()._runs_compiled(inputs, unrolling)


class LayerNormLSTM(LayerNormRecurrent):
    """``ln_lstm``: an LSTM with layer normalization, torch's layout and gate order."""

    gate_count = 4

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, normalize: bool = True, compiled: bool = True) -> None:
        super().__init__(input_size, hidden_size, num_layers, dropout, normalize, compiled)
        for k in range(num_layers):
            self.add_module(f"norm_ih_l{k}", _norm(normalize, 4, hidden_size))
            self.add_module(f"norm_hh_l{k}", _norm(normalize, 4, hidden_size))
            self.add_module(f"norm_cell_l{k}", _norm(normalize, 1, hidden_size, shift=True))

    def _layer(self, k: int, inputs: torch.Tensor, unrolling: bool,
               initial: tuple[torch.Tensor, ...] | None) -> LayerRun:
        weight_ih, weight_hh, bias_ih, bias_hh = self._weights(k)
        norm_ih, norm_hh, norm_cell = (getattr(self, f"norm_{part}_l{k}")
                                       for part in ("ih", "hh", "cell"))
        if self._runs_compiled(inputs, unrolling):
            outputs, final = compiled_loops.lstm_layer(
                inputs, weight_ih, weight_hh, bias_ih + bias_hh, norm_ih.weight, norm_hh.weight,
                norm_cell.weight, norm_cell.bias, norm_cell.eps, initial)
            return LayerRun(outputs, [], final, {})
        ih = norm_ih(F.linear(inputs, weight_ih)) + (bias_ih + bias_hh)
        return lstm_steps(ih, weight_hh, lambda x, t: norm_hh(x), lambda c, t: norm_cell(c),
                          keep_gates=unrolling, initial=initial)


class LayerNormGRU(LayerNormRecurrent):
    """``ln_gru``: a GRU with layer normalization, torch's layout and gate order."""

    gate_count = 3

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, normalize: bool = True, compiled: bool = True) -> None:
        super().__init__(input_size, hidden_size, num_layers, dropout, normalize, compiled)
        for k in range(num_layers):
            self.add_module(f"norm_ih_l{k}", _norm(normalize, 3, hidden_size))
            self.add_module(f"norm_hh_l{k}", _norm(normalize, 3, hidden_size))

    def _layer(self, k: int, inputs: torch.Tensor, unrolling: bool,
               initial: tuple[torch.Tensor, ...] | None) -> LayerRun:
        weight_ih, weight_hh, bias_ih, bias_hh = self._weights(k)
        norm_ih, norm_hh = getattr(self, f"norm_ih_l{k}"), getattr(self, f"norm_hh_l{k}")
        if self._runs_compiled(inputs, unrolling):
            outputs, final = compiled_loops.gru_layer(
                inputs, weight_ih, weight_hh, bias_ih, bias_hh, norm_ih.weight, norm_hh.weight,
                norm_hh.eps, initial)
            return LayerRun(outputs, [], final, {})
        ih = norm_ih(F.linear(inputs, weight_ih)) + bias_ih
        return gru_steps(ih, weight_hh, bias_hh, lambda x, t: norm_hh(x), keep_gates=unrolling,
                         initial=initial)


def _norm(normalize: bool, blocks: int, width: int, shift: bool = False) -> nn.Module:
    """The normalisation of one pre-activation; the identity (no parameters) when off."""
    return BlockLayerNorm(blocks, width, shift) if normalize else nn.Identity()
