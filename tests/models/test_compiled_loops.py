"""The compiled time loops of ln_lstm, ln_gru and bn_lstm against the Python loops they
replace on CPU."""

from __future__ import annotations

import copy
import logging
import shutil

import pytest
import torch

from models import compiled_loops
from models.batch_norm_lstm import BatchNormLSTM
from models.layer_norm_cells import LayerNormGRU, LayerNormLSTM

BATCH, STEPS, FEATURES, HIDDEN, LAYERS = 5, 7, 3, 6, 2
CELLS = {"ln_lstm": LayerNormLSTM, "ln_gru": LayerNormGRU, "bn_lstm": BatchNormLSTM}


def randomized(cell, dtype=torch.float32):
    """A two-layer cell whose gains, shifts, weights and running statistics are all away
    from their start."""
    torch.manual_seed(0)
    rnn = CELLS[cell](FEATURES, HIDDEN, num_layers=LAYERS).to(dtype)
    with torch.no_grad():
        for param in rnn.parameters():
            param.add_(0.3 * torch.randn_like(param))
        rnn(torch.randn(BATCH, STEPS - 2, FEATURES, dtype=dtype))  # bn_lstm: running stats
    return rnn


def outputs_and_gradients(rnn, dtype):
    """Outputs, final state, and the gradients of a loss that reads them all, in a list."""
    torch.manual_seed(1)
    x = torch.randn(BATCH, STEPS, FEATURES, dtype=dtype)
    initial = tuple(torch.randn(LAYERS, BATCH, HIDDEN, dtype=dtype, requires_grad=True)
                    for _ in range(1 if isinstance(rnn, LayerNormGRU) else 2))
    outputs, state = rnn(x, initial if len(initial) == 2 else initial[0])
    state = state if isinstance(state, tuple) else (state,)
    loss = outputs.sin().sum() + sum(s.cos().sum() for s in state)
    return [outputs, *state, *torch.autograd.grad(loss, [*initial, *rnn.parameters()])]


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler on this machine")
def test_the_kernels_build_and_run_on_cpu_in_float32_and_float64():
    assert compiled_loops.applies(torch.zeros(1))
    assert compiled_loops.applies(torch.zeros(1, dtype=torch.float64))
    assert not compiled_loops.applies(torch.zeros(1, dtype=torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not compiled_loops.applies(torch.zeros(1))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_they_compute_what_the_python_loops_compute(cell, training, dtype, tolerance):
    """Outputs, final states, gradients, and bn_lstm's running statistics after the pass
    (steps beyond those the statistics covered included)."""
    rnn = randomized(cell, dtype).train(training)
    python = copy.deepcopy(rnn)
    python.compiled = False
    kernel = [*outputs_and_gradients(rnn, dtype), *rnn.buffers()]
    reference = [*outputs_and_gradients(python, dtype), *python.buffers()]
    assert len(kernel) == len(reference)
    for got, expected in zip(kernel, reference, strict=True):
        scale = expected.abs().max().item()
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance * scale)


def double(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def test_the_lstm_kernels_gradients_pass_gradcheck():
    torch.manual_seed(2)
    batch, steps, hidden = 3, 4, 5

    def layer(x, w_ih, w_hh, bias, g_ih, g_hh, g_c, s_c, h0, c0):
        outputs, (h, c) = compiled_loops.lstm_layer(x, w_ih, w_hh, bias, g_ih, g_hh, g_c,
                                                    s_c, 1e-5, (h0, c0))
        return outputs, h, c

    inputs = (double(batch, steps, 2), double(4 * hidden, 2), double(4 * hidden, hidden),
              double(4 * hidden), double(4 * hidden), double(4 * hidden), double(hidden),
              double(hidden), double(batch, hidden), double(batch, hidden))
    assert torch.autograd.gradcheck(layer, inputs)


def test_the_gru_kernels_gradients_pass_gradcheck():
    torch.manual_seed(3)
    batch, steps, hidden = 3, 4, 5

    def layer(x, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, h0):
        outputs, (h,) = compiled_loops.gru_layer(x, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh,
                                                 1e-5, (h0,))
        return outputs, h

    inputs = (double(batch, steps, 2), double(3 * hidden, 2), double(3 * hidden, hidden),
              double(3 * hidden), double(3 * hidden), double(3 * hidden), double(3 * hidden),
              double(batch, hidden))
    assert torch.autograd.gradcheck(layer, inputs)


@pytest.mark.parametrize("from_batch", [True, False])
def test_the_bn_lstm_kernels_gradients_pass_gradcheck(from_batch):
    torch.manual_seed(4)
    batch, steps, hidden = 3, 4, 5
    running = [torch.randn(steps, width, dtype=torch.float64) + (0.5 if k % 2 else 0.0)
               for width in (4 * hidden, 4 * hidden, hidden) for k in range(2)]
    for var in running[1::2]:
        var.abs_()

    def layer(x, w_ih, w_hh, bias, g_ih, g_hh, g_c, s_c, h0, c0):
        outputs, (h, c) = compiled_loops.bn_lstm_layer(x, w_ih, w_hh, bias, g_ih, g_hh, g_c,
                                                       s_c, running, from_batch, 1e-5, 0.1,
                                                       (h0, c0))
        return outputs, h, c

    inputs = (double(batch, steps, 2), double(4 * hidden, 2), double(4 * hidden, hidden),
              double(4 * hidden), double(4 * hidden), double(4 * hidden), double(hidden),
              double(hidden), double(batch, hidden), double(batch, hidden))
    assert torch.autograd.gradcheck(layer, inputs)


@pytest.mark.parametrize("cell", CELLS)
def test_a_nan_in_the_weights_reaches_the_outputs(cell):
    """The divergence guard sees a diverged step by its loss: the kernels' own exp must
    carry a NaN through, not clamp it away."""
    rnn = randomized(cell)
    with torch.no_grad():
        rnn.weight_hh_l0[2, 2] = float("nan")
    outputs, state = rnn(torch.randn(BATCH, STEPS, FEATURES))
    states = state if isinstance(state, tuple) else (state,)
    assert outputs[:, 1:].isnan().all() and all(s.isnan().all() for s in states)


@pytest.mark.parametrize("cell", CELLS)
def test_saturated_gates_stay_finite(cell):
    rnn = randomized(cell)
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            if name.startswith("bias"):
                param.mul_(1e4)
    outputs, _ = rnn(1e6 * torch.randn(BATCH, STEPS, FEATURES))
    outputs.square().sum().backward()
    assert outputs.isfinite().all()
    assert all(p.grad.isfinite().all() for p in rnn.parameters())


@pytest.mark.parametrize("cell", CELLS)
def test_unroll_runs_the_python_loop_for_its_per_step_gradients(cell):
    unrolled = randomized(cell).unroll(torch.randn(BATCH, STEPS, FEATURES))
    grads = torch.autograd.grad(unrolled.outputs[:, -1].sum(), unrolled.hidden)
    assert len(grads) == STEPS and grads[0].abs().sum() > 0


def test_without_a_compiler_they_fall_back_to_the_python_loop(tmp_path, monkeypatch, caplog):
    broken = tmp_path / "normalized_cells.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(compiled_loops, "_SOURCE", broken)
    monkeypatch.setattr(compiled_loops, "_cpu_digest", lambda: "broken_source_test")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    compiled_loops._built.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=compiled_loops.__name__):
            assert not compiled_loops.applies(torch.zeros(1))
            outputs, _ = randomized("ln_lstm")(torch.randn(BATCH, STEPS, FEATURES))
    finally:
        compiled_loops._built.cache_clear()
    assert outputs.shape == (BATCH, STEPS, HIDDEN)
    assert "run their Python time loop" in caplog.text and str(broken) in caplog.text
