"""The compiled ln_lstm time loop against the Python loop it replaces on CPU."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from models import ln_lstm_kernel
from models.layer_norm_cells import LayerNormLSTM

BATCH, STEPS, FEATURES, HIDDEN, LAYERS = 5, 7, 3, 6, 2


def randomized(dtype):
    """A two-layer cell whose gains, shifts and weights are all away from their start."""
    torch.manual_seed(0)
    rnn = LayerNormLSTM(FEATURES, HIDDEN, num_layers=LAYERS).to(dtype)
    with torch.no_grad():
        for param in rnn.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return rnn


def outputs_and_gradients(rnn, dtype):
    """Outputs, final state, and the gradients of a loss that reads all three, as one list."""
    torch.manual_seed(1)
    x = torch.randn(BATCH, STEPS, FEATURES, dtype=dtype)
    initial = tuple(torch.randn(LAYERS, BATCH, HIDDEN, dtype=dtype, requires_grad=True)
                    for _ in range(2))
    outputs, (h, c) = rnn(x, initial)
    loss = outputs.sin().sum() + h.cos().sum() + c.square().sum()
    return [outputs, h, c, *torch.autograd.grad(loss, [*initial, *rnn.parameters()])]


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler on this machine")
def test_the_kernel_builds_and_runs_ln_lstm_on_cpu():
    assert ln_lstm_kernel.applies(torch.zeros(1))
    assert not ln_lstm_kernel.applies(torch.zeros(1, dtype=torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not ln_lstm_kernel.applies(torch.zeros(1))


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_it_computes_what_the_python_loop_computes(dtype, tolerance):
    rnn = randomized(dtype)
    kernel = outputs_and_gradients(rnn, dtype)
    rnn.compiled = False
    reference = outputs_and_gradients(rnn, dtype)
    for got, expected in zip(kernel, reference, strict=True):
        scale = expected.abs().max().item()
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance * scale)


def test_its_gradients_pass_gradcheck():
    torch.manual_seed(2)
    batch, steps, hidden = 3, 4, 5

    def tensor(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    inputs = (tensor(batch, steps, 2), tensor(4 * hidden, 2), tensor(4 * hidden, hidden),
              tensor(4 * hidden), tensor(4 * hidden), tensor(4 * hidden), tensor(hidden),
              tensor(hidden))
    initial = (tensor(batch, hidden), tensor(batch, hidden))

    def layer(x, w_ih, w_hh, bias, g_ih, g_hh, g_c, s_c, h0, c0):
        outputs, (h, c) = ln_lstm_kernel.layer(x, w_ih, w_hh, bias, g_ih, g_hh, g_c, s_c,
                                               1e-5, (h0, c0))
        return outputs, h, c

    assert torch.autograd.gradcheck(layer, (*inputs, *initial))


def test_a_nan_in_the_weights_reaches_the_outputs():
    """The divergence guard sees a diverged step by its loss: the kernel's own exp must
    carry a NaN through, not clamp it away."""
    rnn = randomized(torch.float32)
    with torch.no_grad():
        rnn.weight_hh_l0[3, 2] = float("nan")
    outputs, (h, c) = rnn(torch.randn(BATCH, STEPS, FEATURES))
    assert outputs[:, 1:].isnan().all() and h.isnan().all() and c.isnan().all()


def test_saturated_gates_stay_finite():
    rnn = randomized(torch.float32)
    x = 1e6 * torch.randn(BATCH, STEPS, FEATURES)
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            if name.startswith("bias"):
                param.mul_(1e4)
    outputs, _ = rnn(x)
    loss = outputs.square().sum()
    loss.backward()
    assert outputs.isfinite().all()
    assert all(p.grad.isfinite().all() for p in rnn.parameters())


def test_unroll_runs_the_python_loop_for_its_per_step_gradients():
    rnn = randomized(torch.float32)
    unrolled = rnn.unroll(torch.randn(BATCH, STEPS, FEATURES))
    grads = torch.autograd.grad(unrolled.outputs[:, -1].sum(), unrolled.hidden)
    assert len(grads) == STEPS and grads[0].abs().sum() > 0


def test_without_a_compiler_it_falls_back_to_the_python_loop(tmp_path, monkeypatch, caplog):
    broken = tmp_path / "ln_lstm.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(ln_lstm_kernel, "_SOURCE", broken)
    monkeypatch.setattr(ln_lstm_kernel, "_cpu_digest", lambda: "broken_source_test")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    ln_lstm_kernel._ops.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=ln_lstm_kernel.__name__):
            assert not ln_lstm_kernel.applies(torch.zeros(1))
            rnn = randomized(torch.float32)
            outputs, _ = rnn(torch.randn(BATCH, STEPS, FEATURES))
    finally:
        ln_lstm_kernel._ops.cache_clear()
    assert outputs.shape == (BATCH, STEPS, HIDDEN)
    assert "runs its Python time loop" in caplog.text and str(broken) in caplog.text
