"""Safe loading: checkpoints and logged models are read with torch.load(weights_only=True),
and a file whose unpickling would run code is refused before any of it runs.

The checkpoint tests use the real helpers of the training loop (no Ray); the model tests
a real SQLite MLflow store and registry in a temporary directory."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from models import ModelSpec, build_model
from orchestrator import checkpoints, objectives, tracking
from orchestrator.checkpoints import UnsafeCheckpointError
from orchestrator.clipping import Clipper
from orchestrator.config import Config
from orchestrator.curriculum import Curriculum, Plan
from orchestrator.diagnostics import Diagnostics
from orchestrator.forecaster import WEIGHTS_FILE, Forecaster
from orchestrator.guard import DivergenceGuard
from orchestrator.optimizers import build_optimizer
from orchestrator.precision import Precision
from pipelines.errors import DataError
from pipelines.timeseries import ForecastLayout
from pipelines.windows import LAYOUT_FILE

SPEC = ModelSpec(cell="lstm", input_size=2, hidden_size=8, num_layers=2, dropout=0.0,
                 head="regression", output_size=1)
CPU = torch.device("cpu")


class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_file(path: Path, marker: Path, how: str) -> Path:
    """A file that runs `touch marker` when unpickled: written by torch.save (zip) or by
    plain pickle (torch.load's legacy format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"step": 1, "model": {}, "spec": {}, "extra": RunsCode(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    return path


# --- a real checkpoint --------------------------------------------------------------------

def helpers():
    """The loop's stateful helpers, fresh: clip, guard, curriculum, precision, diagnostics."""
    return {
        "clip": Clipper("autoclip", 10.0),
        "guard": DivergenceGuard(spike_factor=3.0, window=20, patience=3, max_rollbacks=2),
        "curriculum": Curriculum(Plan("competence", target=100, start=10, warmup_steps=50,
                                      round_to=10, quantiles=tuple(range(101)))),
        "precision": Precision("fp16", CPU),  # torch's CPU GradScaler: a real scaler state
        "diagnostics": Diagnostics(every=1, rows=4, cell="lstm",
                                   objective=objectives.of("regression")),
    }


def trained(steps: int = 4):
    """A model, its Adam optimizer and the helpers after a few real steps, so every helper
    holds state of its own (gradient-norm history, losses, a level, a loss scale, rows)."""
    torch.manual_seed(0)
    model = build_model(SPEC)
    optimizer = build_optimizer("adam", model.parameters(), 0.01, 0.0, 0.9)
    parts = helpers()
    for step in range(1, steps + 1):
        inputs = torch.randn(8, 6, 2)
        batch = {"inputs": inputs, "lengths": torch.full((8,), 6), "targets": torch.randn(8, 1)}
        optimizer.zero_grad()
        loss = objectives.of("regression").loss(model(inputs, batch["lengths"]), batch)
        parts["precision"].backward(loss, optimizer)
        parts["diagnostics"].measure(step, model, batch)
        clipped = parts["clip"](model.parameters())
        parts["guard"].judge(loss.item(), float(clipped.grad_norm))
        parts["precision"].step(optimizer)
        parts["curriculum"].at_step(step * 10)
    return model, optimizer, parts


def save(directory: Path, model, optimizer, parts: dict, rng: torch.Tensor) -> None:
    checkpoints.save(directory, model=model, optimizer=optimizer, step=4, spec=SPEC,
                     rng_states=[{"torch": rng}],
                     parts={name: helper.state_dict() for name, helper in parts.items()},
                     config_yaml=Config().to_yaml())


def test_a_real_checkpoint_loads_weights_only_and_gives_every_helper_its_state(tmp_path):
    model, optimizer, parts = trained()
    rng = torch.get_rng_state()
    save(tmp_path, model, optimizer, parts, rng)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(
        tmp_path / checkpoints.STATE_FILE) == []

    state = checkpoints.load(tmp_path)
    restored = helpers()
    for name, helper in restored.items():
        helper.load_state_dict(state["parts"][name])
        assert helper.state_dict() == parts[name].state_dict(), name
    assert parts["clip"].norms.counts.any() and parts["diagnostics"].norms  # state to keep

    fresh = build_optimizer("adam", build_model(SPEC).parameters(), 0.01, 0.0, 0.9)
    fresh.load_state_dict(state["optimizer"])
    for index, entry in optimizer.state_dict()["state"].items():
        assert torch.equal(fresh.state_dict()["state"][index]["exp_avg"], entry["exp_avg"])
    assert torch.equal(state["rng_states"][0]["torch"], rng)
    restored_model = checkpoints.load_model(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(restored_model.state_dict()[name], tensor), name


def test_save_refuses_a_state_that_would_not_load_weights_only(tmp_path):
    import numpy as np

    model, optimizer, _ = trained(steps=1)
    with pytest.raises(TypeError, match=r"state\.pt: .*numpy.*weights_only=True"):
        checkpoints.save(tmp_path, model=model, optimizer=optimizer, step=1, spec=SPEC,
                         rng_states=[], parts={"clip": {"history": [np.float64(1.0)]}},
                         config_yaml="")


# --- crafted files ------------------------------------------------------------------------

def test_the_crafted_file_really_runs_code_when_unpickled(tmp_path):
    """The control: without weights_only the payload runs, so the refusals below mean
    something."""
    marker = tmp_path / "pwned"
    path = malicious_file(tmp_path / "state.pt", marker, "torch.save")
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
@pytest.mark.parametrize("loader", [checkpoints.load, checkpoints.load_model,
                                    checkpoints.weights_digest])
def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, how, loader):
    marker = tmp_path / "pwned"
    path = malicious_file(tmp_path / "checkpoint" / checkpoints.STATE_FILE, marker, how)
    with pytest.raises(UnsafeCheckpointError) as refused:
        loader(path.parent)
    message = str(refused.value)
    assert str(path) in message
    assert "other than tensors, numbers, strings and plain containers" in message
    assert "refuses to load it" in message and "run code" in message
    assert "\n" not in message
    assert isinstance(refused.value, DataError)  # the CLI prints it like bad input
    assert not marker.exists()


def test_a_forecaster_whose_weights_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    directory = tmp_path / "forecaster"
    malicious_file(directory / WEIGHTS_FILE, marker, "torch.save")
    (directory / LAYOUT_FILE).write_text(layout().to_json())
    with pytest.raises(UnsafeCheckpointError, match=WEIGHTS_FILE):
        Forecaster.load(directory)
    assert not marker.exists()


# --- logged models ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, MlflowClient, str]:
    """One SQLite store for the module (its schema takes seconds), artifacts beside it."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("safe-loading",
                                          artifact_location=(root / "artifacts").as_uri())
    return uri, client, experiment


def new_run(store) -> str:
    _, client, experiment = store
    return client.create_run(experiment).info.run_id


def assert_same_weights(weights: dict, model) -> None:
    assert ModelSpec(**weights["spec"]) == model.spec
    assert weights["model"].keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(weights["model"][name], tensor), name


def test_a_logged_model_gives_back_its_exact_weights(store):
    uri = store[0]
    model, _, _ = trained(steps=1)
    run_id = new_run(store)
    model_uri = tracking.log_model(uri, run_id, model, None)
    assert_same_weights(tracking.model_weights(f"runs:/{run_id}/model", uri), model)
    assert_same_weights(tracking.model_weights(model_uri, uri), model)  # models:/<model id>
    # The pickled model is still there for mlflow.pytorch.load_model.
    loaded = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    assert torch.equal(loaded.state_dict()["head.linear.weight"],
                       model.state_dict()["head.linear.weight"])


def test_a_registered_model_loads_by_version_and_by_alias(store):
    uri, client, _ = store
    model, _, _ = trained(steps=2)
    run_id = new_run(store)
    tracking.log_model(uri, run_id, model, None)
    version = tracking.register_model(uri, f"runs:/{run_id}/model", "safe-net")
    client.set_registered_model_alias("safe-net", "champion", version)
    assert_same_weights(tracking.model_weights(f"models:/safe-net/{version}", uri), model)
    assert_same_weights(tracking.model_weights("models:/safe-net@champion", uri), model)


def layout() -> ForecastLayout:
    return ForecastLayout(
        time_column="t", series_id="", targets=("y",), covariates=(), input_len=4, horizon=2,
        stride=1, season=2, freq=1, time_kind="index", normalize="standard",
        missing="interpolate", quantiles=(), series=("",), offset=((0.0,),),
        scale=((1.0,),), train_mean=((0.0,),), mase_scale=(1.0,))


def test_a_logged_forecaster_gives_back_its_weights(store):
    uri = store[0]
    torch.manual_seed(1)
    model = build_model(ModelSpec("gru", 1, 8, 1, 0.0, "regression", 2))
    run_id = new_run(store)
    tracking.log_forecaster(uri, run_id, Forecaster(model, layout()), None, None)
    assert_same_weights(tracking.model_weights(f"runs:/{run_id}/model", uri), model)


def test_a_model_without_a_weights_only_file_is_refused(store):
    uri = store[0]
    run_id = new_run(store)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.pytorch.log_model(build_model(SPEC), name="model",
                                 serialization_format="pickle", pip_requirements=["torch"])
    with pytest.raises(DataError, match=r"holds no weights-only file .*extra_files/weights\.pt"):
        tracking.model_weights(f"runs:/{run_id}/model", uri)


def test_a_model_whose_weights_file_would_run_code_is_refused(store, tmp_path):
    uri = store[0]
    marker = tmp_path / "pwned"
    weights = malicious_file(tmp_path / tracking.WEIGHTS_FILE, marker, "torch.save")
    run_id = new_run(store)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.pytorch.log_model(build_model(SPEC), name="model", extra_files=[str(weights)],
                                 serialization_format="pickle", pip_requirements=["torch"])
    with pytest.raises(UnsafeCheckpointError, match=f"runs:/{run_id}/model"):
        tracking.model_weights(f"runs:/{run_id}/model", uri)
    assert not marker.exists()


def test_a_model_uri_with_nothing_there_is_refused(store):
    with pytest.raises(DataError, match="no model found there"):
        tracking.model_weights("models:/no-such-model/1", store[0])
