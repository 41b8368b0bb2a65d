"""Transfer learning without Ray: matching a source's weights, layers and their learning
rates, freezing (bit-identical weights) and gradual unfreezing."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models import ModelSpec, build_model
from orchestrator.optimizers import build_optimizer
from orchestrator.transfer import (
    Freezer,
    TransferError,
    layers,
    load_source,
    param_groups,
    plan,
)

SPEC = ModelSpec(cell="lstm", input_size=3, hidden_size=8, num_layers=2, dropout=0.0,
                 head="regression", output_size=2)


def source(spec: ModelSpec = SPEC) -> dict:
    torch.manual_seed(1)
    return {"spec": dataclasses.asdict(spec), "model": build_model(spec).state_dict()}


def shapes(spec: ModelSpec) -> dict[str, torch.Size]:
    return {name: p.shape for name, p in build_model(spec).named_parameters()}


def test_matching_weights_load_and_a_new_head_and_input_projection_say_why():
    target = dataclasses.replace(SPEC, input_size=5, output_size=4, head="sequence")
    result = plan("models:/src/1", source(), target, shapes(target))
    assert set(result.weights) == {name for name in shapes(SPEC)
                                   if name not in ("rnn.weight_ih_l0", "head.linear.weight",
                                                   "head.linear.bias")}
    assert torch.equal(result.weights["rnn.weight_hh_l0"], source()["model"]["rnn.weight_hh_l0"])
    why = dict(result.new)
    assert why["head.linear.weight"].startswith("a new head: 2 outputs (regression) in the "
                                                "source, 4 (sequence) here")
    assert why["rnn.weight_ih_l0"] == ("a new input projection: 3 input features in the "
                                       "source, 5 here")
    assert "Loaded (7)" in result.report() and "New (3)" in result.report()


def test_normalized_cells_of_the_same_family_take_the_weights_and_start_their_norms():
    target = dataclasses.replace(SPEC, cell="ln_lstm")
    result = plan("runs:/x/model", source(), target, shapes(target))
    assert "rnn.weight_hh_l1" in result.weights
    assert dict(result.new)["rnn.norm_ih_l0.weight"] == "the source has no such parameter"


@pytest.mark.parametrize(("change", "message"), [
    ({"cell": "gru"}, "is a LSTM \\(lstm\\) and this model a GRU \\(gru\\)"),
    ({"cell": "rnn_relu"}, "another cell family"),
    ({"hidden_size": 16}, "nothing in its recurrent stack fits this model \\(hidden size 8 "
                          "there, 16 here\\)"),
])
def test_a_source_that_cannot_be_meant_is_refused(change, message):
    target = dataclasses.replace(SPEC, **change)
    with pytest.raises(TransferError, match=message):
        plan("models:/src/1", source(), target, shapes(target))


def test_layers_top_first_with_discriminative_learning_rates():
    model = build_model(SPEC)
    assert layers(model) == ["head", "rnn_l1", "rnn_l0"]
    groups = param_groups(model, lr=0.01, lr_decay=2.0)
    assert [g["layer"] for g in groups] == ["head", "rnn_l1", "rnn_l0"]
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.005, 0.0025])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    optimizer = build_optimizer("adam", groups, 0.01, 0.0, 0.9)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.005, 0.0025])


def test_frozen_weights_stay_bit_identical_while_the_rest_trains():
    model = build_model(SPEC)
    optimizer = build_optimizer("adamw", param_groups(model, 0.01, 1.0), 0.01, 0.1, 0.9)
    freezer = Freezer(model, ("rnn.*_l0",), unfreeze_every=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for step in range(1, 6):
        loss = model(torch.randn(4, 6, 3)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        freezer.drop_gradients(model, step)
        optimizer.step()
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) == name.endswith("_l0"), name


def test_gradual_unfreezing_reaches_one_more_layer_every_interval():
    model = build_model(SPEC)
    freezer = Freezer(model, (), unfreeze_every=10)
    rnn = {name for name, _ in model.named_parameters() if name.startswith("rnn.")}
    assert freezer.frozen(1) == rnn and freezer.frozen(10) == rnn  # the head alone
    assert freezer.frozen(11) == {name for name in rnn if name.endswith("_l0")}
    assert freezer.frozen(21) == set() == freezer.frozen(1000)
    assert not Freezer(model, (), 0).active


def test_a_freeze_pattern_that_matches_nothing_is_refused_naming_it():
    with pytest.raises(TransferError, match="init.freeze pattern 'encoder.*' matches no "
                                            "parameter"):
        Freezer(build_model(SPEC), ("encoder.*",), 0)


def test_a_checkpoint_on_storage_is_read_through_its_uri(tmp_path):
    state = {**source(), "step": 3}
    (tmp_path / "checkpoint").mkdir()
    torch.save(state, tmp_path / "checkpoint" / "state.pt")
    for origin in (str(tmp_path / "checkpoint"), f"file://{tmp_path}/checkpoint"):
        loaded = load_source(origin, uri="")
        assert loaded["spec"] == state["spec"]
        assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    with pytest.raises(TransferError, match="expected models:/name/version"):
        load_source(str(tmp_path), uri="")
