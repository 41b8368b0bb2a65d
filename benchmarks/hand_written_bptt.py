"""A layer-normalized LSTM layer with a hand-written backward through time, to measure
against the autograd loop that `models.layer_norm_cells.LayerNormLSTM` runs
(`benchmarks/cells.py` times both, side by side).

The known way to speed up a cell whose time loop runs in Python: one
`torch.autograd.Function` for the whole layer. Its forward runs without autograd
recording and saves only what the backward needs (the gates, the norms' statistics, the
states); its backward is written by hand, step by step backwards, with ATen's own
layer-norm backward kernels, and the gradients of the recurrent weight and of the gains
are summed over all steps at once. `check` verifies it computes the shipped layer's
outputs and gradients before it is timed. It is not in `models/` because it measured
no faster (0.96-1.09x of the shipped loop with the workers' malloc settings, 1.2-1.3x
with glibc's defaults; benchmarks/results/cells.md): a step's cost is in its twenty-odd
small kernels, not in autograd's bookkeeping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.layer_norm_cells import LayerNormLSTM

_aten = torch.ops.aten


class _Recurrence(torch.autograd.Function):
    """The time loop of one ln_lstm layer: ih (B, T, 4H), the input side of every step,
    normalised and biased -> h_t for every t (B, T, H), and the final (h, c)."""

    @staticmethod
    def forward(ctx, ih, weight_hh, gain_hh, gain_cell, shift_cell, eps):
        batch, steps, gates = ih.shape
        hidden = gates // 4
        hh = ih.new_empty(steps, batch, gates)  # W_hh h_{t-1}, before its norm
        hh_mean, hh_rstd = ih.new_empty(steps, batch, 4, 1), ih.new_empty(steps, batch, 4, 1)
        acts = ih.new_empty(steps, batch, gates)  # i, f, g, o after their nonlinearities
        cells = ih.new_zeros(steps + 1, batch, hidden)
        cell_mean, cell_rstd = ih.new_empty(steps, batch, 1), ih.new_empty(steps, batch, 1)
        tanh_cells = ih.new_empty(steps, batch, hidden)
        hs = ih.new_zeros(steps + 1, batch, hidden)
        for t, ih_t in enumerate(ih.unbind(1)):
            torch.mm(hs[t], weight_hh.t(), out=hh[t])
            normed, hh_mean[t], hh_rstd[t] = torch.native_layer_norm(
                hh[t].view(batch, 4, hidden), (hidden,), None, None, eps)
            pre = torch.addcmul(ih_t, normed.view(batch, gates), gain_hh)
            act = torch.sigmoid(pre, out=acts[t])
            torch.tanh(pre[:, 2 * hidden:3 * hidden], out=act[:, 2 * hidden:3 * hidden])
            i, f, g, o = act.chunk(4, 1)
            torch.addcmul(f * cells[t], i, g, out=cells[t + 1])
            normed_cell, cell_mean[t], cell_rstd[t] = torch.native_layer_norm(
                cells[t + 1], (hidden,), gain_cell, shift_cell, eps)
            torch.mul(o, torch.tanh(normed_cell, out=tanh_cells[t]), out=hs[t + 1])
        ctx.save_for_backward(weight_hh, gain_hh, gain_cell, shift_cell, hh, hh_mean, hh_rstd,
                              acts, cells, cell_mean, cell_rstd, tanh_cells, hs)
        return hs[1:].transpose(0, 1), hs[steps].clone(), cells[steps].clone()

    @staticmethod
    def backward(ctx, d_outputs, d_h_last, d_c_last):
        (weight_hh, gain_hh, gain_cell, shift_cell, hh, hh_mean, hh_rstd, acts, cells,
         cell_mean, cell_rstd, tanh_cells, hs) = ctx.saved_tensors
        steps, batch, gates = acts.shape
        hidden = gates // 4
        d_outputs = d_outputs.transpose(0, 1)
        i, f, g, o = acts.view(steps, batch, 4, hidden).unbind(2)
        # What multiplies the gradient along the chain, for every step at once.
        o_slope = tanh_cells * o * (1 - o)
        cell_slope = o * (1 - tanh_cells * tanh_cells)
        ifg_slope = torch.cat([g * i * (1 - i), cells[:-1] * f * (1 - f), i * (1 - g * g)], 2)
        d_gates = acts.new_empty(steps, batch, gates)
        d_hh = acts.new_empty(steps, batch, gates)
        d_normed_cells = acts.new_empty(steps, batch, hidden)
        d_h, d_c = d_outputs[steps - 1] + d_h_last, d_c_last.clone()
        for t in range(steps - 1, -1, -1):
            d_normed = torch.mul(d_h, cell_slope[t], out=d_normed_cells[t])
            d_c = d_c + _aten.native_layer_norm_backward(
                d_normed, cells[t + 1], (hidden,), cell_mean[t], cell_rstd[t], gain_cell,
                shift_cell, [True, False, False])[0]
            d_gate = d_gates[t]
            torch.mul(d_c.repeat(1, 3), ifg_slope[t], out=d_gate[:, :3 * hidden])
            torch.mul(d_h, o_slope[t], out=d_gate[:, 3 * hidden:])
            d_c = d_c * f[t]
            d_hh[t] = _aten.native_layer_norm_backward(
                (d_gate * gain_hh).view(batch, 4, hidden), hh[t].view(batch, 4, hidden),
                (hidden,), hh_mean[t], hh_rstd[t], None, None, [True, False, False],
            )[0].view(batch, gates)
            d_h = (torch.addmm(d_outputs[t - 1], d_hh[t], weight_hh) if t
                   else d_hh[t] @ weight_hh)
        normed_hh = ((hh.view(steps, batch, 4, hidden) - hh_mean) * hh_rstd).view(
            steps, batch, gates)
        normed_cells = (cells[1:] - cell_mean) * cell_rstd
        d_weight_hh = d_hh.view(-1, gates).t() @ hs[:-1].reshape(-1, hidden)
        return (d_gates.transpose(0, 1), d_weight_hh, (d_gates * normed_hh).sum((0, 1)),
                (d_normed_cells * normed_cells).sum((0, 1)), d_normed_cells.sum((0, 1)),
                None)


def forward(rnn: LayerNormLSTM, inputs: torch.Tensor) -> torch.Tensor:
    """A one-layer `rnn`'s outputs (B, T, H) from a zero state, through `_Recurrence`."""
    weight_ih, weight_hh, bias_ih, bias_hh = rnn._weights(0)
    ih = rnn.norm_ih_l0(F.linear(inputs, weight_ih)) + (bias_ih + bias_hh)
    norm_hh, norm_cell = rnn.norm_hh_l0, rnn.norm_cell_l0
    outputs, _, _ = _Recurrence.apply(ih, weight_hh, norm_hh.weight, norm_cell.weight,
                                      norm_cell.bias, norm_hh.eps)
    return outputs


def check(features: int, hidden: int) -> float:
    """The largest difference, relative to the largest gradient, between this layer's
    gradients and the shipped layer's, on a short random batch (8 steps: over a long
    sequence two correct float32 computations drift apart through the recurrence)."""
    torch.manual_seed(0)
    rnn = LayerNormLSTM(features, hidden)
    with torch.no_grad():  # away from the initial gains of 1, so every term counts
        for parameter in rnn.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    inputs = torch.randn(4, 8, features)
    weights = torch.randn(4, 8, hidden)
    shipped = torch.autograd.grad((rnn(inputs)[0] * weights).sum(), list(rnn.parameters()))
    written = torch.autograd.grad((forward(rnn, inputs) * weights).sum(),
                                  list(rnn.parameters()))
    return max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
               for a, b in zip(shipped, written, strict=True))
