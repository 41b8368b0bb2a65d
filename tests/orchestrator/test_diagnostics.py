"""Gradient diagnostics on plain torch models: what they measure, and that they leave the
training step as it was."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models import ModelSpec, build_model
from orchestrator import objectives
from orchestrator.config import Config, ConfigError, apply_overrides
from orchestrator.diagnostics import (
    HEATMAP_FILE,
    MATRIX_FILE,
    Diagnostics,
    layer_grad_norms,
    parameter_group,
    read_matrix,
    saturation,
)
from orchestrator.training_step import Place
from orchestrator.worker import make_diagnostics
from pipelines.parquet import TaskInfo
from pipelines.synthetic import make_task, rng_for

STEPS = 12


REGRESSION = objectives.of("regression")


def model(cell: str = "lstm", num_layers: int = 2, dropout: float = 0.0):
    torch.manual_seed(0)
    return build_model(ModelSpec(cell, 2, 8, num_layers, dropout, "regression", 1))


def batch(seq_len: int = STEPS, rows: int = 16) -> dict[str, torch.Tensor]:
    arrays = make_task("adding", seq_len).generate(rng_for(0, 0, 1), rows)
    return {name: torch.from_numpy(array) for name, array in arrays.items()}


def trained_step(net, data) -> None:
    """A training step's forward and backward: `.grad` as the loop leaves it."""
    objectives.loss("regression", net(data["inputs"], data["lengths"]), data).backward()


@pytest.mark.parametrize(("name", "group"), [
    ("rnn.weight_ih_l0", "rnn_l0_ih"), ("rnn.bias_ih_l0", "rnn_l0_ih"),
    ("rnn.weight_hh_l1", "rnn_l1_hh"), ("rnn.bias_hh_l1", "rnn_l1_hh"),
    ("head.linear.weight", "head"), ("head.linear.bias", "head"),
    ("rnn.layers.1.weight_ih", "rnn_l1_ih"), ("rnn.layers.0.ln_hh.weight", "rnn_l0_hh"),
    ("rnn.layers.2.ln_cell.bias", "rnn_l2_other"), ("rnn.weight_hh", "rnn_l0_hh"),
])
def test_parameters_are_grouped_by_layer_and_side(name, group):
    assert parameter_group(name) == group


def test_layer_norms_add_up_to_the_global_norm():
    net = model()
    trained_step(net, batch())
    norms = layer_grad_norms(net)
    assert set(norms) == {"grad_norm/rnn_l0_ih", "grad_norm/rnn_l0_hh", "grad_norm/rnn_l1_ih",
                          "grad_norm/rnn_l1_hh", "grad_norm/head"}
    total = torch.nn.utils.get_total_norm([p.grad for p in net.parameters()]).item()
    assert math.sqrt(sum(v * v for v in norms.values())) == pytest.approx(total, rel=1e-5)
    recurrent = torch.cat([net.rnn.weight_hh_l1.grad.flatten(), net.rnn.bias_hh_l1.grad])
    assert norms["grad_norm/rnn_l1_hh"] == pytest.approx(recurrent.norm().item(), rel=1e-5)


@pytest.mark.parametrize(("cell", "gates"), [
    ("lstm", {"input", "forget", "output"}), ("gru", {"reset", "update"}),
    ("rnn_tanh", set()), ("rnn_relu", set()),
])
def test_measure_reports_layers_time_and_gates(cell, gates):
    net, data = model(cell), batch()
    trained_step(net, data)
    figures = Diagnostics(every=5, rows=4, cell=cell, objective=REGRESSION).measure(10, net, data)
    assert {"grad_norm/rnn_l1_hh", "grad_norm/head"} <= set(figures)
    assert figures["grad_time_last"] > 0
    assert figures["grad_time_ratio"] == pytest.approx(
        figures["grad_time_first"] / figures["grad_time_last"])
    assert {k.split("/")[1] for k in figures if k.startswith("gate_saturation/")} == gates
    assert all(0.0 <= figures[f"gate_saturation/{gate}"] <= 1.0 for gate in gates)


def test_measure_changes_neither_gradients_nor_mode_nor_rng():
    net, data = model(dropout=0.5), batch()
    net.train()
    trained_step(net, data)
    grads = [p.grad.clone() for p in net.parameters()]
    rng = torch.get_rng_state()
    Diagnostics(every=1, rows=4, cell="lstm", objective=REGRESSION).measure(1, net, data)
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, net.parameters(), strict=True))
    assert net.training and torch.equal(rng, torch.get_rng_state())


def test_the_unrolled_pass_sees_only_the_rows_and_steps_asked_for():
    net, data = model(), batch()
    data["lengths"][:3] = torch.tensor([5, 7, 4])  # the first rows are shorter than T
    diagnostics = Diagnostics(every=1, rows=3, cell="lstm", objective=REGRESSION)
    diagnostics.measure(1, net, data)
    assert len(diagnostics.norms[0]) == 7  # the longest of the 3 rows


def test_a_vanishing_gradient_shows_as_a_small_ratio():
    net, data = model("rnn_tanh", num_layers=1), batch(seq_len=40)
    with torch.no_grad():
        net.rnn.weight_hh_l0.mul_(0.5)
    figures = Diagnostics(every=1, rows=8, cell="rnn_tanh", objective=REGRESSION).measure(
        1, net, data)
    assert figures["grad_time_ratio"] < 1e-6


def test_saturation_counts_both_tails():
    assert saturation(torch.tensor([0.01, 0.5, 0.99, 0.96, 0.05, 0.95])) == pytest.approx(0.5)


def test_save_writes_the_heatmap_and_a_matrix_that_reads_back(tmp_path):
    net = model()
    diagnostics = Diagnostics(every=10, rows=4, cell="lstm", objective=REGRESSION)
    for step, seq_len in ((10, 6), (20, 9), (30, 9)):  # a curriculum made T grow
        diagnostics.measure(step, net, batch(seq_len))
    diagnostics.save(tmp_path)
    assert (tmp_path / HEATMAP_FILE).read_bytes().startswith(b"\x89PNG")
    steps, matrix = read_matrix(tmp_path / MATRIX_FILE)
    assert steps.tolist() == [10, 20, 30] and matrix.shape == (3, 9)
    assert np.isnan(matrix[0, 6:]).all() and np.isfinite(matrix[0, :6]).all()
    np.testing.assert_allclose(matrix[2], diagnostics.norms[2], rtol=1e-5)


def test_the_matrix_survives_a_checkpoint():
    diagnostics = Diagnostics(every=10, rows=4, cell="lstm", objective=REGRESSION)
    diagnostics.measure(10, model(), batch())
    restored = Diagnostics(every=10, rows=4, cell="lstm", objective=REGRESSION)
    restored.load_state_dict(diagnostics.state_dict())
    assert (restored.steps, restored.norms) == (diagnostics.steps, diagnostics.norms)


def test_diagnostics_exist_only_on_rank_0_and_only_when_on():
    objective = objectives.of(TaskInfo.of(make_task("adding", 10)).kind)
    cpu = torch.device("cpu")
    on = apply_overrides(Config(), ["diagnostics.every=50"])
    assert make_diagnostics(Config(), objective, None, Place(0, 2, cpu)) is None  # off
    assert make_diagnostics(on, objective, None, Place(1, 2, cpu)) is None
    assert make_diagnostics(on, objective, None, Place(0, 2, cpu)).due(100)


@pytest.mark.parametrize(("override", "message"), [
    ("diagnostics.every=-1", "diagnostics.every must be >= 0"),
    ("diagnostics.rows=0", "diagnostics.rows must be > 0"),
])
def test_bad_diagnostics_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), [override])
