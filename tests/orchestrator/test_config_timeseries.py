"""The `task.*` keys of a forecasting run (task.name=timeseries) in orchestrator.config."""

from __future__ import annotations

import pytest

from orchestrator.config import Config, ConfigError, apply_overrides, load_config
from pipelines.timeseries import SeriesOptions

BASE = {"name": "timeseries", "path": "data/pm.csv", "time_column": "time", "targets": "pm"}


def task(**keys) -> Config:
    return Config.from_dict({"task": BASE | keys})


def refused(**keys) -> str:
    with pytest.raises(ConfigError) as info:
        task(**keys)
    return str(info.value)


@pytest.mark.parametrize("key", ["path", "time_column", "targets"])
def test_required_keys(key):
    assert f"task.{key} is empty" in refused(**{key: ""})


def test_other_tasks_ignore_the_timeseries_keys():
    assert Config.from_dict({"task": {"name": "adding", "horizon": 0}}).task.horizon == 0


def test_list_keys_take_yaml_lists_and_comma_text(tmp_path):
    path = tmp_path / "forecast.yaml"
    path.write_text("task:\n  name: timeseries\n  path: data/pm.csv\n  time_column: time\n"
                    "  targets: [pm, temp]\n  covariates:\n    - wind\n    - rain\n"
                    "  quantiles: [0.1, 0.5, 0.9]\n")
    options = load_config(path).task.series_options()
    assert options.targets == ("pm", "temp")
    assert options.covariates == ("wind", "rain")
    assert options.quantiles == (0.1, 0.5, 0.9)
    text = task(targets="pm,temp", covariates=" wind , rain ", quantiles="0.1, 0.5, 0.9")
    assert text.task.series_options() == options
    override = apply_overrides(load_config(path), ["task.targets=[a, b]"])
    assert override.task.series_options().targets == ("a", "b")


@pytest.mark.parametrize("quantiles", ["0.1, 0.9", "0.5, 0.1", "0.1, 0.1, 0.5", "0, 0.5",
                                       "0.5, 1.0", [0.9, 0.5, 0.1]])
def test_quantiles_must_include_the_median_and_increase_inside_0_1(quantiles):
    assert "task.quantiles" in refused(quantiles=quantiles)


def test_quantiles_must_be_numbers():
    assert "expected numbers" in refused(quantiles="low, 0.5")


@pytest.mark.parametrize("quantiles,levels", [("", ()), ("0.5", (0.5,)),
                                              ("0.05, 0.5, 0.95", (0.05, 0.5, 0.95))])
def test_accepted_quantiles(quantiles, levels):
    assert task(quantiles=quantiles).task.quantile_levels() == levels


@pytest.mark.parametrize("given", [{"val_start": "2014-06-01"}, {"test_start": "2014-09-01"}])
def test_cut_offs_go_together(given):
    assert "task.val_start and task.test_start go together" in refused(**given)


def test_both_cut_offs_are_accepted():
    options = task(val_start="2014-06-01", test_start="2014-09-01").task.series_options()
    assert (options.val_start, options.test_start) == ("2014-06-01", "2014-09-01")


@pytest.mark.parametrize("key", ["input_len", "horizon", "stride"])
def test_lengths_must_be_positive(key):
    assert f"task.{key} must be > 0" in refused(**{key: 0})


@pytest.mark.parametrize("fractions", [(0.0, 0.2), (0.2, 1.0), (0.5, 0.5), (-0.1, 0.2)])
def test_fractions_leave_a_training_part(fractions):
    message = refused(val_fraction=fractions[0], test_fraction=fractions[1])
    assert "task.val_fraction" in message and "task.test_fraction" in message


def test_season_must_not_be_negative():
    assert "task.season must be >= 0" in refused(season=-1)


@pytest.mark.parametrize("key,value", [("normalize", "zscore"), ("missing", "ffill")])
def test_choices_are_checked(key, value):
    message = refused(**{key: value})
    assert f"task.{key}" in message and value in message


def test_curriculum_is_refused_for_forecasting():
    with pytest.raises(ConfigError, match="curriculum.schedule is 'linear'.*timeseries"):
        Config.from_dict({"task": BASE, "curriculum": {"schedule": "linear"}})


def test_series_options_carry_every_key():
    config = task(covariates="temp", series_id="station", input_len=72, horizon=12, stride=3,
                  val_fraction=0.1, test_fraction=0.2, normalize="minmax", missing="drop",
                  freq="1h", season=24, quantiles="0.1, 0.5, 0.9")
    assert config.task.series_options() == SeriesOptions(
        time_column="time", targets=("pm",), covariates=("temp",), series_id="station",
        input_len=72, horizon=12, stride=3, val_fraction=0.1, test_fraction=0.2,
        val_start="", test_start="", normalize="minmax", missing="drop", freq="1h",
        season=24, quantiles=(0.1, 0.5, 0.9))


def test_defaults_of_the_series_options():
    options = task().task.series_options()
    assert options == SeriesOptions(time_column="time", targets=("pm",))
    assert (options.input_len, options.horizon, options.normalize, options.missing) == (
        48, 24, "standard", "interpolate")
