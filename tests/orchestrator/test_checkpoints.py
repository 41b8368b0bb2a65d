from __future__ import annotations

import random

import torch
import yaml

from models import ModelSpec, SequenceModel, build_model
from orchestrator import checkpoints
from orchestrator.config import Config, load_config
from orchestrator.optimizers import build_optimizer

SPEC = ModelSpec(cell="gru", input_size=3, hidden_size=8, num_layers=2, dropout=0.0,
                 head="regression", output_size=1)


def trained_model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A model one Adam step away from its initialisation, so the optimizer has state."""
    torch.manual_seed(0)
    model = build_model(SPEC)
    optimizer = build_optimizer("adam", model.parameters(), lr=0.01, weight_decay=0.0,
                                momentum=0.9)
    model(torch.randn(4, 5, 3)).pow(2).mean().backward()
    optimizer.step()
    return model, optimizer


def rng_state() -> dict:
    """Plain values and tensors, as the worker saves (numpy's draws come from per-step
    generators, so its global state is not kept; an array would not load weights-only)."""
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def test_save_then_load_model_gives_the_same_outputs(tmp_path):
    model, optimizer = trained_model_and_optimizer()
    checkpoints.save(tmp_path, model=model, optimizer=optimizer, step=7, spec=SPEC,
                     rng_states=[], parts={},
                     config_yaml=Config().to_yaml())
    restored = checkpoints.load_model(tmp_path)
    assert isinstance(restored, SequenceModel)
    assert restored.spec == SPEC

    inputs, lengths = torch.randn(3, 5, 3), torch.tensor([5, 3, 1])
    model.eval()
    restored.eval()
    with torch.no_grad():
        assert torch.equal(restored(inputs, lengths), model(inputs, lengths))
    for name, tensor in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor), name


def test_load_returns_step_optimizer_state_and_rng_states(tmp_path):
    model, optimizer = trained_model_and_optimizer()
    states = [rng_state(), rng_state()]  # one per rank
    checkpoints.save(tmp_path, model=model, optimizer=optimizer, step=1234, spec=SPEC,
                     rng_states=states, parts={"curriculum": {"level": 30}},
                     config_yaml="seed: 0\n")
    state = checkpoints.load(tmp_path)
    assert state["step"] == 1234
    assert state["parts"] == {"curriculum": {"level": 30}}

    fresh = build_optimizer("adam", build_model(SPEC).parameters(), lr=0.01,
                            weight_decay=0.0, momentum=0.9)
    fresh.load_state_dict(state["optimizer"])
    saved, loaded = optimizer.state_dict(), fresh.state_dict()
    assert loaded["param_groups"] == saved["param_groups"]
    assert saved["state"], "Adam should have state after a step"
    for index, entry in saved["state"].items():
        assert torch.equal(loaded["state"][index]["exp_avg"], entry["exp_avg"])

    assert len(state["rng_states"]) == 2
    assert torch.equal(state["rng_states"][1]["torch"], states[1]["torch"])
    assert state["rng_states"][0]["python"] == states[0]["python"]


def test_rng_state_restores_the_same_random_stream(tmp_path):
    model, optimizer = trained_model_and_optimizer()
    saved = rng_state()
    expected = (random.random(), torch.rand(1))
    checkpoints.save(tmp_path, model=model, optimizer=optimizer, step=1, spec=SPEC,
                     rng_states=[saved], parts={"curriculum": {"level": 30}},
                     config_yaml="")
    restored = checkpoints.load(tmp_path)["rng_states"][0]
    random.setstate(restored["python"])
    torch.set_rng_state(restored["torch"])
    assert random.random() == expected[0]
    assert torch.equal(torch.rand(1), expected[1])


def test_config_yaml_is_written_and_loads(tmp_path):
    model, optimizer = trained_model_and_optimizer()
    config = Config()
    checkpoints.save(tmp_path, model=model, optimizer=optimizer, step=1, spec=SPEC,
                     rng_states=[], parts={"curriculum": {"level": 30}},
                     config_yaml=config.to_yaml())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [checkpoints.STATE_FILE, checkpoints.CONFIG_FILE])
    text = (tmp_path / checkpoints.CONFIG_FILE).read_text()
    assert yaml.safe_load(text) == config.to_dict()
    assert load_config(tmp_path / checkpoints.CONFIG_FILE) == config
