from __future__ import annotations

from pathlib import Path

import pytest

from models import CELL_NAMES
from orchestrator.config import (
    Config,
    ConfigError,
    apply_overrides,
    describe_keys,
    load_config,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIGS = sorted(path for path in (ROOT / "configs").rglob("*.yaml")
                         # sweep files: test_sweep_file.py; the Kubernetes manifest:
                         # tests/test_cluster_config.py
                         if not {"sweeps", "kuberay"} & set(path.parts))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str = "{}", overrides: list[str] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), list(overrides))
    return str(info.value)


# --- the example configs ---------------------------------------------------------------

def test_there_are_example_configs():
    assert EXAMPLE_CONFIGS, "configs/*.yaml is empty: the parametrized tests below test nothing"


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda p: p.name)
def test_example_config_loads_and_round_trips(path, tmp_path):
    config = load_config(path)
    assert isinstance(config, Config)
    assert Config.from_dict(config.to_dict()) == config
    assert load_config(write(tmp_path, config.to_yaml())) == config


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda p: p.name)
def test_example_config_is_headed_by_its_command(path):
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    name = path.relative_to(ROOT / "configs")
    assert any(f"rnn-orch train configs/{name}" in line for line in header)


# --- overrides -------------------------------------------------------------------------

def test_overrides_change_values_with_their_types(tmp_path):
    config = load_config(write(tmp_path, "{}"), [
        "train.steps=500", "optim.lr=1", "model.dropout=0.25", "scaling.use_gpu=true",
        "model.cell=gru", "seed=7",
    ])
    assert config.train.steps == 500 and type(config.train.steps) is int
    assert config.optim.lr == 1.0 and type(config.optim.lr) is float
    assert config.model.dropout == 0.25
    assert config.scaling.use_gpu is True
    assert config.model.cell == "gru"
    assert config.seed == 7


def test_overrides_win_over_the_file(tmp_path):
    config = load_config(write(tmp_path, "model: {cell: lstm, hidden_size: 32}"),
                         ["model.hidden_size=16"])
    assert (config.model.cell, config.model.hidden_size) == ("lstm", 16)


def test_scientific_notation_floats_are_accepted(tmp_path):
    # PyYAML follows YAML 1.1, where `1e-3` (no dot) is a string, not a float.
    assert load_config(write(tmp_path, "optim: {lr: 3e-4}")).optim.lr == pytest.approx(3e-4)
    assert load_config(write(tmp_path, "{}"), ["optim.lr=1e-3"]).optim.lr == pytest.approx(1e-3)


def test_apply_overrides_to_a_loaded_config():
    config = apply_overrides(Config(), ["model.cell=gru", "clip.threshold=5"])
    assert config.model.cell == "gru" and config.clip.threshold == 5.0
    assert config.train == Config().train


def test_defaults_are_valid():
    assert Config.from_dict({}) == Config()


# --- rejections: each names the key ----------------------------------------------------

def test_unknown_top_level_key(tmp_path):
    message = error_of(tmp_path, "modle: {cell: lstm}")
    assert "'modle'" in message
    assert "Did you mean 'model'?" in message


def test_unknown_section_key_names_dotted_key_and_valid_keys(tmp_path):
    message = error_of(tmp_path, "model: {cel: lstm}")
    assert "'model.cel'" in message
    assert "Did you mean 'model.cell'?" in message
    for key in ("model.cell", "model.hidden_size", "model.num_layers", "model.dropout"):
        assert key in message


def test_unknown_key_in_an_override(tmp_path):
    message = error_of(tmp_path, overrides=["train.step=5"])
    assert "'train.step'" in message and "train.steps" in message


@pytest.mark.parametrize(("override", "key"), [
    ("train.steps=1.5", "train.steps"),      # float for an int
    ("seed=true", "seed"),                   # bool for an int
    ("optim.lr=fast", "optim.lr"),           # str for a float
    ("optim.lr=.inf", "optim.lr"),           # not finite
    ("scaling.use_gpu=1", "scaling.use_gpu"),  # int for a bool
])
def test_wrong_type(tmp_path, override, key):
    message = error_of(tmp_path, overrides=[override])
    assert message.startswith(f"{key} must be ")


def test_numbers_for_text_keys_are_text(tmp_path):
    config = load_config(write(tmp_path, ""), ["run.name=2024"])
    assert config.run.name == "2024"
    assert error_of(tmp_path, overrides=["model.cell=3"]).startswith("model.cell is '3'")


def test_section_that_is_not_a_mapping(tmp_path):
    assert "model must be a mapping" in error_of(tmp_path, "model: 3")


def test_value_not_in_choices_lists_valid_cells(tmp_path):
    message = error_of(tmp_path, overrides=["model.cell=lsmt"])
    assert "model.cell" in message and "'lsmt'" in message
    for cell in CELL_NAMES:
        assert cell in message
    assert "Did you mean 'lstm'?" in message


@pytest.mark.parametrize(("override", "key"), [
    ("optim.name=adamm", "optim.name"),
    ("clip.policy=global", "clip.policy"),
    ("task.name=addition", "task.name"),
])
def test_other_choices(tmp_path, override, key):
    assert key in error_of(tmp_path, overrides=[override])


@pytest.mark.parametrize("override", ["train.steps=0", "train.steps=-5"])
def test_non_positive_steps(tmp_path, override):
    assert "train.steps must be > 0" in error_of(tmp_path, overrides=[override])


@pytest.mark.parametrize(("override", "expected"), [
    ("task.shuffle_rows=-1", "task.shuffle_rows must be >= 0"),
    ("task.bucket_batches=0", "task.bucket_batches must be > 0"),
])
def test_shuffle_and_bucketing_reject_impossible_sizes(tmp_path, override, expected):
    assert expected in error_of(tmp_path, overrides=[override])


def test_checkpoint_every_must_be_a_multiple_of_eval_every(tmp_path):
    message = error_of(tmp_path, overrides=["train.eval_every=100", "train.checkpoint_every=150"])
    assert "train.checkpoint_every" in message and "train.eval_every" in message
    ok = load_config(write(tmp_path, "{}"),
                     ["train.eval_every=50", "train.checkpoint_every=150"])
    assert ok.train.checkpoint_every == 150


def test_parquet_task_needs_a_path(tmp_path):
    assert "task.path" in error_of(tmp_path, overrides=["task.name=parquet"])
    config = load_config(write(tmp_path, "{}"), ["task.name=parquet", "task.path=data/x"])
    assert config.task.path == "data/x"


def test_channel_normalization_is_for_parquet_tasks(tmp_path):
    message = error_of(tmp_path, overrides=["task.normalize_channels=true"])
    assert "task.normalize_channels" in message and "parquet" in message
    config = load_config(write(tmp_path, "{}"), ["task.name=parquet", "task.path=data/x",
                                                 "task.normalize_channels=true"])
    assert config.task.normalize_channels


def test_dropout_out_of_range(tmp_path):
    assert "model.dropout" in error_of(tmp_path, overrides=["model.dropout=1.0"])


@pytest.mark.parametrize("override", ["train.steps", "=5", "train.steps 500"])
def test_malformed_override(tmp_path, override):
    message = error_of(tmp_path, overrides=[override])
    assert repr(override) in message and "section.key=value" in message


def test_override_below_a_value_is_rejected(tmp_path):
    assert "model.cell" in error_of(tmp_path, overrides=["model.cell.x=1"])
    assert "model.cell" in error_of(tmp_path, "model: {cell: lstm}", ["model.cell.x=1"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_yaml_that_is_not_a_mapping(tmp_path, text):
    assert "must hold a mapping" in error_of(tmp_path, text)


def test_invalid_yaml(tmp_path):
    assert "not valid YAML" in error_of(tmp_path, "model: {cell: lstm\n")


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --- views of a config -----------------------------------------------------------------

def test_round_trip_of_a_non_default_config(tmp_path):
    config = apply_overrides(Config(), [
        "seed=3", "model.cell=gru", "model.num_layers=2", "model.dropout=0.1",
        "optim.lr=0.01", "scaling.use_gpu=true", "run.name=exp-1",
    ])
    assert Config.from_dict(config.to_dict()) == config
    assert load_config(write(tmp_path, config.to_yaml())) == config


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        Config().model.cell = "gru"


def test_flat_gives_dotted_keys():
    flat = Config().flat()
    assert flat["seed"] == 0
    assert flat["model.cell"] == "lstm"
    assert flat["train.steps"] == Config().train.steps
    assert all(not isinstance(value, dict) for value in flat.values())


def test_describe_keys_covers_every_leaf_key():
    rows = describe_keys()
    keys = [key for key, _, _ in rows]
    assert keys == list(Config().flat())
    assert all(meaning for _, _, meaning in rows)
    meaning = dict((key, meaning) for key, _, meaning in rows)
    for cell in CELL_NAMES:
        assert cell in meaning["model.cell"]


def test_autoclip_threshold_is_a_percentile(tmp_path):
    message = error_of(tmp_path, overrides=["clip.policy=autoclip", "clip.threshold=150"])
    assert message.startswith("clip.threshold is a percentile")
    assert load_config(write(tmp_path, ""), ["clip.policy=agc", "clip.threshold=0.01"])


def test_regularization_keys_default_off_and_override():
    model = Config().model
    assert (model.input_dropout, model.output_dropout, model.variational,
            model.weight_drop) == (0.0, 0.0, False, 0.0)
    model = apply_overrides(Config(), [
        "model.input_dropout=0.1", "model.output_dropout=0.2", "model.variational=true",
        "model.weight_drop=0.3", "model.cell=ln_lstm",
    ]).model
    assert (model.input_dropout, model.output_dropout, model.variational,
            model.weight_drop, model.cell) == (0.1, 0.2, True, 0.3, "ln_lstm")


@pytest.mark.parametrize("key", ["input_dropout", "output_dropout", "weight_drop"])
@pytest.mark.parametrize("rate", ["1.0", "-0.1"])
def test_regularization_rates_must_be_below_one(tmp_path, key, rate):
    message = error_of(tmp_path, overrides=[f"model.{key}={rate}"])
    assert message.startswith(f"model.{key} is a rate") and "[0, 1)" in message


def test_variational_is_a_bool(tmp_path):
    assert error_of(tmp_path, overrides=["model.variational=0.5"]).startswith(
        "model.variational must be true or false")


def test_zero_workers_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"scaling.num_workers must be >= 1"):
        Config.from_dict({"scaling": {"num_workers": 0}})


def test_elastic_workers_range_from_min_workers_to_num_workers():
    fixed = Config().scaling
    assert not fixed.elastic and fixed.describe_workers() == "2 workers"
    elastic = apply_overrides(Config(), ["scaling.min_workers=1", "scaling.num_workers=4"])
    assert elastic.scaling.elastic and elastic.scaling.describe_workers() == "1-4 workers"
    same = apply_overrides(Config(), ["scaling.min_workers=2"])  # min = num: fixed
    assert not same.scaling.elastic


@pytest.mark.parametrize("overrides, named", [
    (["scaling.min_workers=3"], "scaling.min_workers must be between 0"),
    (["scaling.min_workers=-1"], "scaling.min_workers must be between 0"),
    (["scaling.resize_every_s=0"], "scaling.resize_every_s must be > 0"),
])
def test_bad_elastic_settings_are_refused_naming_the_key(overrides, named):
    with pytest.raises(ConfigError, match=named):
        apply_overrides(Config(), overrides)
