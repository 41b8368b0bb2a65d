"""The worker loop's set-up helpers, without Ray: config to model spec, the
hyperparameters a run copied from another run's checkpoint takes from its own config, the
time loop a run tags, and what a worker imports."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import ModelSpec, build_model
from orchestrator.clipping import Clipper
from orchestrator.config import Config, apply_overrides
from orchestrator.precision import Precision, cpu_runs_bf16_lstm
from orchestrator.training_step import Place
from orchestrator.worker import adopt_hyperparameters, data_position, model_spec, time_loop
from pipelines.parquet import TaskInfo


def test_every_model_key_reaches_the_model_spec():
    config = apply_overrides(Config(), [
        "model.cell=bn_lstm", "model.hidden_size=16", "model.num_layers=2",
        "model.dropout=0.1", "model.input_dropout=0.2", "model.output_dropout=0.3",
        "model.variational=true", "model.weight_drop=0.4",
    ])
    spec = model_spec(config, TaskInfo("regression", 2, 1))
    for key in dataclasses.fields(config.model):
        if key.name != "embedding_size":  # a language model's (below)
            assert getattr(spec, key.name) == getattr(config.model, key.name), key.name
    assert (spec.input_size, spec.output_size, spec.head) == (2, 1, "regression")
    assert spec.vocab_size == 0


def test_a_language_model_embeds_its_vocabulary():
    config = apply_overrides(Config(), ["task.name=text", "task.path=corpus",
                                        "model.embedding_size=24"])
    spec = model_spec(config, TaskInfo("per_step", 256, 256))
    assert (spec.vocab_size, spec.input_size, spec.output_size) == (256, 24, 256)


def test_a_copied_checkpoint_takes_the_configs_hyperparameters():
    """PBT copies a trial's optimizer state, then explores its own values: the restored
    learning rates, weight decay, momentum and clip threshold give way to the config's."""
    groups = [{"params": [torch.nn.Parameter(torch.ones(2))], "lr_scale": 1.0},
              {"params": [torch.nn.Parameter(torch.ones(2))], "lr_scale": 0.5}]
    optimizer = torch.optim.SGD(groups, lr=0.5, momentum=0.1, weight_decay=0.2)
    clipper = Clipper("norm", 5.0)
    config = apply_overrides(Config(), ["optim.name=sgd", "optim.lr=0.01", "optim.momentum=0.7",
                                        "optim.weight_decay=0.03", "clip.threshold=0.25",
                                        "init.lr_decay=4"])
    adopt_hyperparameters(config, optimizer, clipper)
    top, lower = optimizer.param_groups
    assert (top["lr"], top["momentum"], top["weight_decay"]) == (0.01, 0.7, 0.03)
    assert lower["lr"] == 0.0025  # a layer down: optim.lr / init.lr_decay
    assert clipper.threshold == 0.25


def test_the_training_loop_leaves_mlflow_to_rank_0():
    """Every worker imports orchestrator.worker when its run starts; only rank 0 logs."""
    code = "import sys, orchestrator.worker; print('mlflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).parents[2])
    assert result.stdout.strip() == "False"


def test_the_training_step_runs_without_ray():
    """A machine with torch alone (a GPU box, a notebook) can run and time the step."""
    code = ("import sys, orchestrator.training_step; "
            "print(sorted({'ray', 'mlflow'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).parents[2])
    assert result.stdout.strip() == "[]"


def test_a_resized_group_goes_on_at_the_same_share_of_its_epoch():
    """Two workers had each taken 10 batches of their half of the epoch: one worker, whose
    shard is the whole epoch, goes on at its 20th batch, four workers at their 5th."""
    state = {"rng_states": [{}, {}], "parts": {"data": {"epoch": 3, "taken": 10}}}
    cpu = torch.device("cpu")
    assert data_position(state, Place(1, 2, cpu)) == {"epoch": 3, "taken": 10}
    assert data_position(state, Place(0, 1, cpu)) == {"epoch": 3, "taken": 20}
    assert data_position(state, Place(3, 4, cpu)) == {"epoch": 3, "taken": 5}
    assert data_position({"rng_states": [{}], "parts": {"data": {}}}, Place(0, 2, cpu)) == {}
    assert data_position(None, Place(0, 2, cpu)) is None


@pytest.mark.parametrize("cell, precision, expected", [
    ("ln_lstm", "fp32", "compiled"), ("ln_gru", "fp32", "compiled"),
    ("bn_lstm", "fp32", "compiled"), ("lstm", "fp32", None),
    ("ln_lstm", "bf16", "python"),  # the kernels compute in float32 or float64 only
])
def test_a_run_tags_how_its_normalized_cell_steps_through_time(cell, precision, expected):
    if precision == "bf16" and not cpu_runs_bf16_lstm():
        pytest.skip("this CPU has no bfloat16 LSTM kernels")
    if expected == "compiled" and shutil.which("c++") is None:
        pytest.skip("no C++ compiler to build the kernels with")
    model = build_model(ModelSpec(cell=cell, input_size=3, hidden_size=4, num_layers=1,
                                  dropout=0.0, head="regression", output_size=1))
    cpu = torch.device("cpu")
    assert time_loop(model, Place(0, 1, cpu), Precision(precision, cpu)) == expected
