from __future__ import annotations

import dataclasses

from orchestrator.config import Config, apply_overrides
from orchestrator.worker import model_spec
from pipelines.parquet import TaskInfo


def test_every_model_key_reaches_the_model_spec():
    config = apply_overrides(Config(), [
        "model.cell=bn_lstm", "model.hidden_size=16", "model.num_layers=2",
        "model.dropout=0.1", "model.input_dropout=0.2", "model.output_dropout=0.3",
        "model.variational=true", "model.weight_drop=0.4",
    ])
    spec = model_spec(config, TaskInfo("regression", 2, 1))
    for key in dataclasses.fields(config.model):
        assert getattr(spec, key.name) == getattr(config.model, key.name), key.name
    assert (spec.input_size, spec.output_size, spec.head) == (2, 1, "regression")
