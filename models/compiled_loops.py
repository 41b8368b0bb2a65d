"""The time loops of the normalized cells (``ln_lstm``, ``ln_gru``, ``bn_lstm``) as
compiled kernels on CPU, forward and backward (``models/kernels/normalized_cells.cpp``).

Why: a normalized cell has to normalise between the recurrent product and the gates,
where torch's fused LSTM and GRU give no access, so its Python loop runs twenty-odd small
ATen kernels per step, each a pass over memory. A kernel does one matrix product per step
and all the element-wise work of a row in one pass, the input side's norm included; its
backward, written by hand, keeps only what it needs and sums the recurrent weight's
gradient over all steps in one product. ``benchmarks/cells.py`` measures them against
the fused cells and the Python loops.

They are built on first use by torch's extension builder, for the CPU they run on
(``-march=native``): the build is cached under torch's extensions folder
(``TORCH_EXTENSIONS_DIR``) by a name that carries a digest of the CPU's model and flags,
so nodes of different CPUs that share a home folder each build their own, and the
processes of one node wait for one build. Where they cannot be built (no C++ compiler),
one warning says so and the cells run their Python loop, which computes the same.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import threading
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

_SOURCE = Path(__file__).with_name("kernels") / "normalized_cells.cpp"
_FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fopenmp"]
_log = logging.getLogger(__name__)
_loading = threading.Lock()


def applies(inputs: torch.Tensor) -> bool:
    """Whether a kernel runs this layer: on CPU, in float32 or float64, outside CPU
    autocast (whose lower precision the kernels do not compute in), once they are built."""
    return (inputs.device.type == "cpu" and inputs.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu") and _ops() is not None)


def lstm_layer(inputs: torch.Tensor, weight_ih: torch.Tensor, weight_hh: torch.Tensor,
               bias: torch.Tensor, gain_ih: torch.Tensor, gain_hh: torch.Tensor,
               gain_cell: torch.Tensor, shift_cell: torch.Tensor, eps: float,
               initial: tuple[torch.Tensor, ...] | None):
    """One ``ln_lstm`` layer over ``inputs`` (B, T, F): outputs (B, T, H) and (h_T, c_T).

    ``bias`` is both torch-layout biases summed; the gains and the shift are those of
    ``LayerNormLSTM``'s norms.
    """
    h0, c0 = initial or (_zero_state(inputs, weight_hh),) * 2
    outputs, *final = _TimeLoop.apply(
        _Cell("ln_lstm", 2, (eps,)), _time_major_product(inputs, weight_ih), bias, gain_ih,
        weight_hh, gain_hh, gain_cell, shift_cell, h0, c0)
    return outputs, tuple(final)


def gru_layer(inputs: torch.Tensor, weight_ih: torch.Tensor, weight_hh: torch.Tensor,
              bias_ih: torch.Tensor, bias_hh: torch.Tensor, gain_ih: torch.Tensor,
              gain_hh: torch.Tensor, eps: float, initial: tuple[torch.Tensor, ...] | None):
    """One ``ln_gru`` layer over ``inputs`` (B, T, F): outputs (B, T, H) and (h_T,)."""
    (h0,) = initial or (_zero_state(inputs, weight_hh),)
    outputs, *final = _TimeLoop.apply(
        _Cell("ln_gru", 1, (eps,)), _time_major_product(inputs, weight_ih), bias_ih, gain_ih,
        weight_hh, bias_hh, gain_hh, h0)
    return outputs, tuple(final)


def bn_lstm_layer(inputs: torch.Tensor, weight_ih: torch.Tensor, weight_hh: torch.Tensor,
                  bias: torch.Tensor, gain_ih: torch.Tensor, gain_hh: torch.Tensor,
                  gain_cell: torch.Tensor, shift_cell: torch.Tensor,
                  running: list[torch.Tensor], from_batch: bool, eps: float,
                  momentum: float, initial: tuple[torch.Tensor, ...] | None):
    """One ``bn_lstm`` layer over ``inputs`` (B, T, F): outputs (B, T, H) and (h_T, c_T).

    ``running`` holds the running mean and variance of the input side, of the recurrent
    side (T, 4H each) and of the cell (T, H each) for these steps: with ``from_batch``
    (training) the batch's statistics normalise and these move towards them in place, as
    ``F.batch_norm`` moves its own; otherwise they normalise.
    """
    h0, c0 = initial or (_zero_state(inputs, weight_hh),) * 2
    cell = _Cell("bn_lstm", 2, (list(running), from_batch, eps, momentum), (from_batch,))
    outputs, *final = _TimeLoop.apply(cell, _time_major_product(inputs, weight_ih), bias,
                                      gain_ih, weight_hh, gain_hh, gain_cell, shift_cell, h0, c0)
    return outputs, tuple(final)


def _time_major_product(inputs: torch.Tensor, weight_ih: torch.Tensor) -> torch.Tensor:
    """W_ih x_t for every step, (T, B, gates): a step's rows contiguous for the kernel."""
    return F.linear(inputs.transpose(0, 1), weight_ih).contiguous()


def _zero_state(inputs: torch.Tensor, weight_hh: torch.Tensor) -> torch.Tensor:
    return inputs.new_zeros(inputs.size(0), weight_hh.size(1))


class _Cell(NamedTuple):
    """Which kernels a layer runs (``<name>_forward``, ``<name>_backward``), how many
    tensors its state has (h, or h and c), and what the two take besides tensors."""

    name: str
    states: int
    forward_settings: tuple
    backward_settings: tuple = ()


class _TimeLoop(torch.autograd.Function):
    """xp (T, B, gates), the input side of every step before its norm, and the cell's
    tensors, its initial state last -> outputs (B, T, H) and the final state."""

    @staticmethod
    def forward(ctx, cell: _Cell, xp: torch.Tensor, *tensors: torch.Tensor):
        tensors = [t.contiguous() for t in tensors]
        outputs, *saved = getattr(_ops(), f"{cell.name}_forward")(xp, tensors,
                                                                  *cell.forward_settings)
        ctx.cell, ctx.count = cell, len(tensors)
        ctx.save_for_backward(xp, *tensors, *saved)
        # what a kernel keeps starts with h (and c) for steps 0..T: the last is the final one
        return outputs, *(saved[k][-1].clone() for k in range(cell.states))

    @staticmethod
    @once_differentiable
    def backward(ctx, d_outputs, *d_states):
        xp, *rest = ctx.saved_tensors
        tensors, saved = rest[:ctx.count], rest[ctx.count:]
        grads = getattr(_ops(), f"{ctx.cell.name}_backward")(
            d_outputs.contiguous(), xp, [d.contiguous() for d in d_states], tensors,
            *ctx.cell.backward_settings, saved)
        return None, *grads  # none for the cell


def _ops():
    """The kernels' ops once built and loaded, or None (with one warning) when they cannot
    be built here. One thread builds; another asking meanwhile waits for it (loading the
    library twice would register its ops twice)."""
    with _loading:
        return _built()


@functools.cache
def _built():
    try:
        _put_ninja_on_path()
        from torch.utils import cpp_extension

        cpp_extension.load(name=f"rnn_orch_normalized_cells_{_cpu_digest()}",
                           sources=[str(_SOURCE)], extra_cflags=_FLAGS,
                           extra_ldflags=["-fopenmp"], is_python_module=False)
    except Exception as error:  # a missing or failing compiler: fall back, say why
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        _log.warning("the normalized cells run their Python time loop: their compiled "
                     "kernels could not be built from %s (%s)", _SOURCE, reason)
        return None
    return torch.ops.rnn_orch


def _put_ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the ``ninja`` package installs it next to
    the interpreter, which is not on PATH when the interpreter is called by its path."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _cpu_digest() -> str:
    """A digest of this CPU's model and instruction sets: what ``-march=native`` built for."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        described = [line for line in cpuinfo.splitlines()
                     if line.startswith(("model name", "flags", "Features", "CPU part"))]
    except OSError:  # not Linux
        described = [platform.machine(), platform.processor()]
    return hashlib.sha256("\n".join(described).encode()).hexdigest()[:12]
