"""A sequence classifier's figures: macro-F1 from confusion counts that add up over
ranks, the majority-class baseline, the test split scored on the driver, the confusion
plot, and `rnn-orch data sequences` through the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from models import ModelSpec, build_model
from orchestrator import classification, objectives
from orchestrator.cli import EXIT_BAD_INPUT, EXIT_OK, main
from pipelines.labelled_sequences import Labelled, convert


def test_macro_f1_weighs_every_class_alike_and_sums_add_up_over_ranks():
    objective = objectives.of("sequence", 3)
    outputs = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    targets = torch.tensor([0, 1, 2, 2])
    halves = [objective.validation_sums(outputs[rows], {"targets": targets[rows]})
              for rows in (slice(0, 2), slice(2, 4))]
    whole = objective.validation_sums(outputs, {"targets": targets})
    assert torch.allclose(halves[0] + halves[1], whole)  # what the all-reduce relies on
    figures = objective.summarize(whole)
    assert figures["val_accuracy"] == pytest.approx(0.75)
    assert figures["val_macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert objective.confusion(whole).tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def write_task(path, seed=0):
    rng = np.random.default_rng(seed)
    labels = ["a"] * 30 + ["b"] * 10
    sequences = [rng.normal(size=(int(rng.integers(2, 6)), 3)).astype(np.float32)
                 for _ in labels]
    test = Labelled(sequences[:8], labels[:5] + labels[-3:], "test")
    convert(Labelled(sequences, labels, "train"), path, test)


def test_majority_class_and_test_figures_on_the_driver(tmp_path):
    write_task(tmp_path / "task")
    figures = classification.majority_figures(tmp_path / "task", 2)
    assert figures == {"accuracy_majority": pytest.approx(6 / 8),
                       "test_accuracy_majority": pytest.approx(5 / 8)}
    model = build_model(ModelSpec(cell="gru", input_size=3, hidden_size=4, num_layers=1,
                                  dropout=0.0, head="sequence", output_size=2))
    objective = objectives.of("sequence", 2)
    sums = classification.test_sums(model, tmp_path / "task" / "test", objective)
    assert objective.confusion(sums).sum() == 8
    path = classification.plot_confusion(objective.confusion(sums), ["a", "b"], tmp_path)
    assert path.stat().st_size > 1000


def test_data_sequences_converts_a_long_table_and_asks_for_its_columns(tmp_path, capsys):
    table = pd.DataFrame({"id": np.repeat(np.arange(20), 3), "t": np.tile([0, 1, 2], 20),
                          "x": np.arange(60.0), "y": np.repeat(["up", "down"], 30)})
    table.to_csv(tmp_path / "steps.csv", index=False)
    base = ["data", "sequences", "--train", str(tmp_path / "steps.csv")]
    assert main([*base, "--out", str(tmp_path / "a"), "--sequence-id", "id"]) == EXIT_BAD_INPUT
    assert "give --time, --channels, --label" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b"), "--sequence-id", "id", "--time", "t",
                 "--channels", "x", "--label", "y"]) == EXIT_OK
    assert "wrote 16 train, 4 val sequences" in capsys.readouterr().out
