"""Mixed precision, chosen by `train.precision`.

    fp32  plain float32 (the default).
    bf16  the forward pass under torch.autocast in bfloat16, on CPU or GPU. bfloat16 keeps
          float32's exponent range, so gradients overflow or underflow no more than in
          float32: no loss scaling.
    fp16  the forward pass under torch.autocast in float16, GPUs only (the config rejects
          it without scaling.use_gpu). float16's range is narrow and small gradients flush
          to zero, so the loss is multiplied by a scale before backward
          (torch.amp.GradScaler) and the gradients are divided by it right after, BEFORE
          clipping: clipping, `grad_norm`, the guard and the diagnostics all see the true
          gradients. The scaler grows the scale while steps go well and halves it when the
          scaled gradients overflow, skipping that step.

Weights, optimizer state and the loss stay float32 in every mode (the loss is computed
on the outputs cast back to float32); validation and the diagnostic pass run in float32.

The divergence guard and overflows. An fp16 step whose loss is finite but whose
gradients are not is a scaler overflow: the scaler skips it and lowers its scale, which
is how loss scaling finds its level, not a sign of divergence. The guard does not judge
such a step: it is not counted as bad, does not break a run of good steps, and its loss
does not enter the spike median. A non-finite loss, or a loss spike, is judged as in fp32.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_runs_bf16_lstm() -> bool:
    """Whether torch's fused LSTM runs under bfloat16 autocast on this CPU: oneDNN refuses
    it on CPUs without bfloat16 instructions, deep inside the first forward pass."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.LSTM(1, 1)(torch.zeros(1, 1, 1))
    except RuntimeError:
        return False
    return True


class Precision:
    """One run's precision: the autocast context, and for fp16 the loss scaler."""

    def __init__(self, name: str, device: torch.device):
        if name not in PRECISIONS:
            raise ValueError(f"train.precision {name!r} is not one of: {', '.join(PRECISIONS)}.")
        if name == "bf16" and device.type == "cpu" and not cpu_runs_bf16_lstm():
            raise ValueError(
                "train.precision=bf16: this CPU has no bfloat16 kernels for torch's fused "
                "LSTM (oneDNN needs AVX512-BF16 or AMX); use train.precision=fp32 here, or "
                "bf16 on a GPU or a CPU that has them.")
        self.name = name
        self._device_type = device.type
        self._dtype = _AUTOCAST_DTYPES.get(name)
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self) -> AbstractContextManager:
        """The context the forward pass runs in (it changes nothing for fp32)."""
        return torch.autocast(self._device_type, dtype=self._dtype,
                              enabled=self._dtype is not None)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """`loss.backward()`; with a scaler, the scaled loss's, then the gradients are
        unscaled in place, so everything after sees the true gradients."""
        if self.scaler is None:
            loss.backward()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)

    def overflowed(self, loss: float, grad_norm: float) -> bool:
        """Whether this step is a loss-scaler overflow, the scaler's business, not the
        guard's: a finite loss whose (unscaled) gradients are not finite."""
        return self.scaler is not None and math.isfinite(loss) and not math.isfinite(grad_norm)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """`optimizer.step()`; with a scaler, its step (which skips an overflowed step by
        itself) and the update of the scale."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def skip(self) -> None:
        """End a step the guard skipped: the scaler needs one `update` per `unscale_`."""
        if self.scaler is not None:
            self.scaler.update()

    def figures(self) -> dict[str, torch.Tensor | float]:
        """`loss_scale` for fp16, worth a metric: its drops are the overflows. Once the
        scaler has scaled a loss this is its scale tensor, which the step reads back with
        its other figures (`get_scale()` would read it alone)."""
        if self.scaler is None:
            return {}
        scale = self.scaler._get_scale_async()  # None until the first scaled backward
        return {"loss_scale": self.scaler.get_scale() if scale is None else scale}

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """The scale a checkpoint saved (nothing when it was saved without a scaler)."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
