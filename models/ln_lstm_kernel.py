"""The time loop of an ``ln_lstm`` layer as one compiled kernel on CPU, forward and
backward (``models/kernels/ln_lstm.cpp``).

Why: a layer-normalized LSTM has to normalise between the recurrent product and the
gates, where torch's fused LSTM gives no access, so its Python loop runs twenty-odd small
ATen kernels per step, each a pass over memory. The kernel does one matrix product per
step and all the element-wise work of a row in one pass; its backward, written by hand,
keeps only what it needs and sums the recurrent weight's gradient over all steps in one
product. ``benchmarks/cells.py`` measures it against the fused LSTM and the Python loop.

It is built on first use by torch's extension builder, for the CPU it runs on
(``-march=native``): the build is cached under torch's extensions folder
(``TORCH_EXTENSIONS_DIR``) by a name that carries a digest of the CPU's model and flags,
so nodes of different CPUs that share a home folder each build their own, and processes
of one node wait for one build. Where it cannot be built (no C++ compiler), one warning
says so and ``ln_lstm`` runs the Python loop, which computes the same.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

_SOURCE = Path(__file__).with_name("kernels") / "ln_lstm.cpp"
_FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fopenmp"]
_log = logging.getLogger(__name__)


def applies(inputs: torch.Tensor) -> bool:
    """Whether the kernel runs this layer: on CPU, in float32 or float64, outside CPU
    autocast (whose lower precision the kernel does not compute in), once it is built."""
    return (inputs.device.type == "cpu" and inputs.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu") and _ops() is not None)


def layer(inputs: torch.Tensor, weight_ih: torch.Tensor, weight_hh: torch.Tensor,
          bias: torch.Tensor, gain_ih: torch.Tensor, gain_hh: torch.Tensor,
          gain_cell: torch.Tensor, shift_cell: torch.Tensor, eps: float,
          initial: tuple[torch.Tensor, torch.Tensor] | None):
    """One ``ln_lstm`` layer over ``inputs`` (B, T, F): outputs (B, T, H) and (h_T, c_T).

    ``bias`` is both torch-layout biases summed; the gains and the shift are those of
    ``LayerNormLSTM``'s norms. The input side's product runs time-major, so that every
    step's rows are contiguous for the kernel.
    """
    batch, hidden_size = inputs.size(0), weight_hh.size(1)
    h0, c0 = initial or (inputs.new_zeros(batch, hidden_size),) * 2
    xp = F.linear(inputs.transpose(0, 1), weight_ih)  # (T, B, 4H)
    outputs, h_last, c_last = _TimeLoop.apply(
        xp, bias, gain_ih, weight_hh, gain_hh, gain_cell, shift_cell, h0, c0, eps)
    return outputs, (h_last, c_last)


class _TimeLoop(torch.autograd.Function):
    """xp (T, B, 4H), the input side of every step before its norm -> outputs (B, T, H),
    h_T and c_T."""

    @staticmethod
    def forward(ctx, xp, bias, gain_ih, weight_hh, gain_hh, gain_cell, shift_cell, h0, c0, eps):
        params = [t.contiguous() for t in (bias, gain_ih, weight_hh, gain_hh, gain_cell,
                                           shift_cell, h0, c0)]
        outputs, *saved = _ops().ln_lstm_forward(xp.contiguous(), *params, eps)
        ctx.save_for_backward(xp, *params[1:5], *saved)
        hs, cells = saved[0], saved[1]  # (T+1, B, H): the last step is the final state
        return outputs, hs[-1].clone(), cells[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_outputs, d_h_last, d_c_last):
        xp, gain_ih, weight_hh, gain_hh, gain_cell, *saved = ctx.saved_tensors
        grads = _ops().ln_lstm_backward(d_outputs.contiguous(), xp, d_h_last, d_c_last,
                                         gain_ih, weight_hh, gain_hh, gain_cell, saved)
        return (*grads, None)  # none for eps


@functools.cache
def _ops():
    """The kernel's ops once built and loaded, or None (with one warning) when they cannot
    be built here."""
    try:
        _put_ninja_on_path()
        from torch.utils import cpp_extension

        cpp_extension.load(name=f"rnn_orch_ln_lstm_{_cpu_digest()}", sources=[str(_SOURCE)],
                           extra_cflags=_FLAGS, extra_ldflags=["-fopenmp"],
                           is_python_module=False)
    except Exception as error:  # a missing or failing compiler: fall back, say why
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        _log.warning("ln_lstm runs its Python time loop: its compiled kernel could not be "
                     "built from %s (%s)", _SOURCE, reason)
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
