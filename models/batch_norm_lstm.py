"""Recurrent batch normalization (Cooijmans et al. 2016): ``bn_lstm``.

    gates_t = BN_ih(W_ih x_t; t) + BN_hh(W_hh h_{t-1}; t) + b_ih + b_hh
    c_t     = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t     = sigmoid(o) * tanh(BN_cell(c_t; t))

Why: like layer normalization it holds the gates' pre-activations at the scale the gains
set, so they neither saturate (vanishing gradients) nor drift along the sequence; here
the statistics are taken over the batch, per unit.

- Statistics per time step: the pre-activations' distribution changes over the first
  steps while the state builds up from zero, so step t has its own running mean and
  variance. Steps beyond the longest sequence seen in training use the last step's
  (the paper's T_max). The running statistics grow with the longest sequence seen and
  are part of the ``state_dict`` (a checkpoint restores them at their length).
- Gains start at 0.1, not 1: unit-variance pre-activations already push sigmoid and
  tanh towards saturation, and the paper finds 0.1 keeps the gradient flowing.
- BN_ih and BN_hh have no shift (the LSTM biases are that shift); BN_cell has one.
- Under DDP each replica sees a different batch, and replicas that normalised with
  different statistics would be different models. So in a training pass the per-step
  sums behind the mean and variance are all-reduced over the ranks (by hand:
  ``nn.SyncBatchNorm`` needs GPUs), differentiably, so the gradient also flows through
  the shared statistics as it would on one process with the whole batch. Ranks must
  therefore run the same number of steps: each pads its batch to the longest T of any
  rank first (its outputs are cut back to its own T; its final state is the one after
  the padding). Per layer and training step that is 2T + 2 small collectives forward
  and 2T + 1 backward, so that pass runs the Python loop; on one process, and in
  evaluation, a CPU runs the compiled loop of ``models.compiled_loops``.
- Padding counts: a row shorter than the batch is zero-padded, and its padded steps
  count in the batch statistics of the steps they fill. Batches of equal length, as
  the synthetic tasks and length bucketing give, are normalised exactly.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from models import compiled_loops
from models.custom_cells import CustomRecurrent, LayerRun, lstm_steps
from models.process_group import distributed

GAIN = 0.1  # initial BN gain, as Cooijmans et al. 2016 recommend


@dataclasses.dataclass(frozen=True)
class Statistics:
    """Which statistics one pass normalises with.

    ``from_batch``: the batch's own (training) or the running ones (evaluation).
    ``track``: fold the batch statistics into the running ones: a training forward, not
    a diagnostic unrolled pass, which must leave the model as it found it.
    ``rows``: 0 for this process's batch alone; otherwise the statistics are summed
    over every rank, whose batches hold this many rows together.
    """

    from_batch: bool
    track: bool
    rows: int = 0


class StepwiseBatchNorm(nn.Module):
    """Batch normalization over the rows (dim 0), with running statistics per step.

    ``running_mean`` and ``running_var`` are (S, C): row t for step t, S the longest
    sequence seen in training. A longer sequence extends them, the new rows starting
    from the last step's statistics, which is what evaluation used for those steps.
    """

    def __init__(self, features: int, shift: bool, momentum: float = 0.1,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.full((features,), GAIN))
        self.bias = nn.Parameter(torch.zeros(features)) if shift else None
        self.register_buffer("running_mean", torch.zeros(1, features))
        self.register_buffer("running_var", torch.ones(1, features))

    def cover(self, steps: int) -> None:
        """Keep running statistics for at least ``steps`` steps."""
        have = self.running_mean.size(0)
        if steps > have:
            for name in ("running_mean", "running_var"):
                running = getattr(self, name)
                setattr(self, name, torch.cat([running, running[-1:].expand(steps - have, -1)]))

    def forward(self, x: torch.Tensor, step: int | None, how: Statistics) -> torch.Tensor:
        """``x`` is (B, C) at step ``step``, or (B, T, C) for steps 0..T-1 when ``step``
        is None.

        On one process this is ``F.batch_norm`` with one channel per (step, feature):
        one fused kernel that normalises, and updates the running statistics in place
        through views of their rows. Across ranks the statistics are all-reduced first.
        """
        if how.rows:
            return self._across_ranks(x, step, how)
        steps = x.size(1) if step is None else 1
        mean, var = self._rows(step, steps) if how.track or not how.from_batch else (None, None)
        shift = None if self.bias is None else self.bias.repeat(steps)
        flat = F.batch_norm(x.reshape(x.size(0), -1), mean, var, self.weight.repeat(steps),
                            shift, training=how.from_batch, momentum=self.momentum,
                            eps=self.eps)
        return flat.view_as(x)

    def running(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The running mean and variance of steps 0..steps-1, (steps, C) each: views of
        the buffers while they cover them, so updates through them land there."""
        mean, var = self._rows(None, steps)
        return mean.view(steps, -1), var.view(steps, -1)

    def _rows(self, step: int | None, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The running statistics of the steps ``x`` holds, flattened like ``x``: views
        while they exist (so updates land in the buffers), the last row beyond."""
        last = self.running_mean.size(0) - 1
        if step is not None:
            where = min(step, last)
        elif steps <= last + 1:
            where = slice(0, steps)
        else:
            where = torch.arange(steps, device=self.running_mean.device).clamp_(max=last)
        return self.running_mean[where].reshape(-1), self.running_var[where].reshape(-1)

    def _across_ranks(self, x: torch.Tensor, step: int | None, how: Statistics):
        mean, var = moments_over_ranks(x, how.rows)
        if how.track:
            self._track(mean, var, step, how.rows)
        x = (x - mean) * torch.rsqrt(var + self.eps) * self.weight
        return x if self.bias is None else x + self.bias

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, var: torch.Tensor, step: int | None, rows: int):
        """The update ``F.batch_norm`` makes, for statistics computed across ranks."""
        where = slice(0, mean.size(0)) if step is None else step
        self.running_mean[where].lerp_(mean, self.momentum)
        self.running_var[where].lerp_(var * (rows / (rows - 1)), self.momentum)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Take the checkpoint's number of steps: resize the running statistics first."""
        for name in ("running_mean", "running_var"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, saved.new_empty(saved.shape,
                                                    device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class BatchNormLSTM(CustomRecurrent):
    """``bn_lstm``: an LSTM with recurrent batch normalization, torch's layout and gate
    order; normalisations ``norm_ih_l{k}``, ``norm_hh_l{k}``, ``norm_cell_l{k}``."""

    gate_count = 4

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, compiled: bool = True) -> None:
        super().__init__(input_size, hidden_size, num_layers, dropout, compiled)
        for k in range(num_layers):
            self.add_module(f"norm_ih_l{k}", StepwiseBatchNorm(4 * hidden_size, shift=False))
            self.add_module(f"norm_hh_l{k}", StepwiseBatchNorm(4 * hidden_size, shift=False))
            self.add_module(f"norm_cell_l{k}", StepwiseBatchNorm(hidden_size, shift=True))

    def _runs_compiled(self, inputs: torch.Tensor, unrolling: bool) -> bool:
        """Nor in a training pass across ranks, whose statistics are all-reduced step by
        step."""
        return (not (self.training and distributed())
                and super()._runs_compiled(inputs, unrolling))

    def _layer(self, k: int, inputs: torch.Tensor, unrolling: bool,
               initial: tuple[torch.Tensor, ...] | None) -> LayerRun:
        weight_ih, weight_hh, bias_ih, bias_hh = self._weights(k)
        norm_ih, norm_hh, norm_cell = (getattr(self, f"norm_{part}_l{k}")
                                       for part in ("ih", "hh", "cell"))
        steps = inputs.size(1)
        how = Statistics(from_batch=self.training, track=self.training and not unrolling)
        if how.from_batch and inputs.size(0) < 2:
            raise ValueError("bn_lstm: a training batch needs at least 2 rows for batch "
                             f"statistics, got {inputs.size(0)}.")
        if how.track and distributed():
            rows, common_steps = shared_shape(inputs)
            inputs = F.pad(inputs, (0, 0, 0, common_steps - steps))
            how = dataclasses.replace(how, rows=rows)
        if how.track:
            for norm in (norm_ih, norm_hh, norm_cell):
                norm.cover(inputs.size(1))
        if self._runs_compiled(inputs, unrolling):  # one eps and momentum: norms built alike
            running = [r for norm in (norm_ih, norm_hh, norm_cell) for r in norm.running(steps)]
            outputs, final = compiled_loops.bn_lstm_layer(
                inputs, weight_ih, weight_hh, bias_ih + bias_hh, norm_ih.weight, norm_hh.weight,
                norm_cell.weight, norm_cell.bias, running, how.from_batch, norm_hh.eps,
                norm_hh.momentum, initial)
            return LayerRun(outputs, [], final, {})
        ih = norm_ih(F.linear(inputs, weight_ih), None, how) + (bias_ih + bias_hh)
        run = lstm_steps(ih, weight_hh, lambda x, t: norm_hh(x, t, how),
                         lambda c, t: norm_cell(c, t, how), keep_gates=unrolling,
                         initial=initial)
        if len(run.hidden) == steps:
            return run
        # Padded for the other ranks. The dropped steps' statistics feed the other ranks'
        # losses, so this rank must run their backward all-reduces too: a zero-valued
        # term keeps the last step in this rank's graph, and every step before it.
        hidden = run.hidden[:steps]
        hidden[-1] = hidden[-1] + 0 * run.hidden[-1].sum()
        return run._replace(outputs=torch.stack(hidden, dim=1), hidden=hidden)


def moments_over_ranks(x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance over dim 0 of every rank's ``x`` (``rows`` rows in all),
    all-reduced so that gradients flow back to every rank."""
    sums = SumOverRanks.apply(torch.stack([x.sum(0), x.square().sum(0)]))
    mean = sums[0] / rows
    return mean, (sums[1] / rows - mean.square()).clamp_min(0)


class SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward is the same all-reduce of the gradients: every
    rank's loss depends on every rank's share of the sum.

    Every rank must call forward and backward the same number of times, in the same
    order (see the padding in ``BatchNormLSTM._layer``).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total


def shared_shape(inputs: torch.Tensor) -> tuple[int, int]:
    """(rows of all ranks together, the longest T of any rank)."""
    shape = torch.tensor([inputs.size(0), inputs.size(1)], device=inputs.device)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    every = torch.stack(shapes)
    return int(every[:, 0].sum()), int(every[:, 1].max())

