"""The forecasting objective (orchestrator.forecasting): losses, validation sums in
original units, the naive forecasters, and the figures summarize() makes of them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from orchestrator.forecasting import ForecastObjective, pinball
from pipelines.timeseries import ForecastLayout, SeriesOptions, prepare
from pipelines.windows import Windows


def layout_of(quantiles=(), offset=((100.0, 0.0), (-50.0, 0.0)), scale=((10.0, 1.0), (4.0, 1.0)),
              train_mean=((101.0, 0.0), (-48.0, 0.0)), mase_scale=(2.0, 0.5), horizon=3):
    """Two series, two targets, non-trivial normalization."""
    return ForecastLayout(
        time_column="t", series_id="id", targets=("y1", "y2"), covariates=(), input_len=4,
        horizon=horizon, stride=1, season=2, freq=1, time_kind="index", normalize="standard",
        missing="interpolate", quantiles=tuple(quantiles), series=("a", "b"),
        offset=offset, scale=scale, train_mean=train_mean, mase_scale=mase_scale)


def random_batch(rng, rows=6, horizon=3, input_len=4):
    return {
        "inputs": torch.tensor(rng.normal(size=(rows, input_len, 2)), dtype=torch.float32),
        "targets": torch.tensor(rng.normal(size=(rows, horizon, 2)), dtype=torch.float32),
        "seasonal": torch.tensor(rng.normal(size=(rows, horizon, 2)), dtype=torch.float32),
        "lengths": torch.full((rows,), input_len),
        "series": torch.tensor(rng.integers(0, 2, rows)),
    }


# --- baselines on a hand-made series ----------------------------------------------------

def periodic(season=4, n=100):
    """y = 100 + 10 * (i % 4): a pure seasonal series, prepared with standard normalization."""
    y = 100.0 + 10.0 * (np.arange(n) % season)
    table = pa.table({"t": pa.array(np.arange(n)), "y": y})
    options = SeriesOptions(time_column="t", targets=("y",), input_len=6, horizon=2,
                            season=season, val_fraction=0.2, test_fraction=0.2)
    layout, stretches = prepare(table, options, "memory")
    return y, layout, stretches


def test_baselines_on_a_periodic_series():
    y, layout, stretches = periodic()
    assert layout.offset[0][0] == pytest.approx(y[:60].mean())  # 115, not the identity
    objective = ForecastObjective(layout)
    sums = sum(objective.validation_sums(torch.zeros(len(b["targets"]), 2), b)
               for b in Windows(stretches["val"], layout, "val").in_order())
    figures = objective.summarize(sums)
    # val: test = 80, val = 60; targets start at 60..78, horizon 2
    starts = np.arange(60, 79)
    actual = y[starts[:, None] + np.arange(2)]
    persistence = np.abs(y[starts - 1][:, None] - actual)
    assert figures["val_mae_seasonal_naive"] == pytest.approx(0.0, abs=1e-4)
    assert figures["val_rmse_seasonal_naive"] == pytest.approx(0.0, abs=1e-4)
    assert figures["val_mae_persistence"] == pytest.approx(persistence.mean(), rel=1e-5)
    assert figures["val_rmse_persistence"] == pytest.approx(
        np.sqrt((persistence ** 2).mean()), rel=1e-5)
    # by hand: a last value 130 before 100, 110 (30, 20); otherwise one step up then two
    # (10, 20): over starts 60..78 (5 of 19 start a season) -> (5 * 50 + 14 * 30) / 38
    assert figures["val_mae_persistence"] == pytest.approx((5 * 50 + 14 * 30) / 38, rel=1e-5)
    mean = np.abs(115.0 - actual)  # the training mean: 15, 5, 5, 15 over a season
    assert figures["val_mae_mean"] == pytest.approx(mean.mean(), rel=1e-5)
    # a zero (normalized) forecast is the training mean in original units
    assert figures["val_mae"] == pytest.approx(figures["val_mae_mean"], rel=1e-5)
    # flat seasonal differences in train: MASE's scale falls back to 1, so MASE = MAE
    assert layout.mase_scale == (1.0,)
    assert figures["val_mase_persistence"] == pytest.approx(figures["val_mae_persistence"])


# --- metric arithmetic ------------------------------------------------------------------

def test_mae_rmse_mase_match_numpy_in_original_units():
    rng = np.random.default_rng(0)
    layout = layout_of()
    objective = ForecastObjective(layout)
    batch = random_batch(rng)
    outputs = torch.tensor(rng.normal(size=(6, 3 * 2)), dtype=torch.float32)
    figures = objective.summarize(objective.validation_sums(outputs, batch))

    series = batch["series"].numpy()
    offset = np.array(layout.offset)[series][:, None, :]
    scale = np.array(layout.scale)[series][:, None, :]

    def original(normalized):
        return normalized * scale + offset

    actual = original(batch["targets"].numpy())
    guesses = {
        "": original(outputs.numpy().reshape(6, 3, 2)),
        "_persistence": original(np.repeat(batch["inputs"].numpy()[:, -1:, :], 3, axis=1)),
        "_seasonal_naive": original(batch["seasonal"].numpy()),
        "_mean": np.broadcast_to(np.array(layout.train_mean)[series][:, None, :], (6, 3, 2)),
    }
    for suffix, guess in guesses.items():
        error = guess - actual
        assert figures[f"val_mae{suffix}"] == pytest.approx(np.abs(error).mean(), rel=1e-5)
        assert figures[f"val_rmse{suffix}"] == pytest.approx(
            np.sqrt((error ** 2).mean()), rel=1e-5)
        assert figures[f"val_mase{suffix}"] == pytest.approx(
            (np.abs(error) / np.array([2.0, 0.5])).mean(), rel=1e-5)
    normalized = outputs.numpy().reshape(6, 3, 2) - batch["targets"].numpy()
    assert figures["val_loss"] == pytest.approx((normalized ** 2).mean(), rel=1e-5)
    assert "val_coverage" not in figures


def test_errors_are_in_original_units():
    layout = layout_of(offset=((1000.0, 0.0), (1000.0, 0.0)), scale=((50.0, 1.0), (50.0, 1.0)))
    objective = ForecastObjective(layout)
    rows = 2
    batch = {"inputs": torch.zeros(rows, 4, 2), "targets": torch.zeros(rows, 3, 2),
             "seasonal": torch.zeros(rows, 3, 2), "series": torch.tensor([0, 1])}
    outputs = torch.full((rows, 3, 2), 0.1).reshape(rows, -1)  # 0.1 normalized = 5 units
    figures = objective.summarize(objective.validation_sums(outputs, batch))
    assert figures["val_mae"] == pytest.approx(0.5 * 5.0 + 0.5 * 0.1)  # y1 x50, y2 x1
    assert figures["val_loss"] == pytest.approx(0.01)  # the loss stays normalized
    # the mean forecaster: y1 101 (a) and -48 (b) against 1000; y2 0 against 0
    assert figures["val_mae_mean"] == pytest.approx((899.0 + 1048.0) / 4)


def test_sums_of_two_halves_add_up_to_the_whole():
    rng = np.random.default_rng(1)
    objective = ForecastObjective(layout_of(quantiles=(0.1, 0.5, 0.9)))
    batch = random_batch(rng, rows=10)
    outputs = torch.tensor(rng.normal(size=(10, 3 * 2 * 3)), dtype=torch.float32)
    whole = objective.validation_sums(outputs, batch)
    halves = [objective.validation_sums(outputs[part], {k: v[part] for k, v in batch.items()})
              for part in (slice(0, 4), slice(4, 10))]
    assert whole.dtype == torch.float64 and len(whole) == ForecastObjective.sums_width
    # sums, not means: the parts add up to the whole (to float32 summation order)
    torch.testing.assert_close(halves[0] + halves[1], whole, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(halves[0], whole, rtol=1e-3)
    assert whole[1].item() == 10 * 3 * 2
    assert objective.summarize(halves[0] + halves[1]) == pytest.approx(objective.summarize(whole))


# --- pinball loss and coverage -----------------------------------------------------------

def test_pinball_against_a_hand_computation():
    quantiles = torch.tensor([0.1, 0.5, 0.9])
    targets = torch.tensor([1.0, 3.0])
    forecast = torch.tensor([[3.0, 3.0, 3.0], [1.0, 1.0, 1.0]])
    # y=1 under a forecast of 3: r=-2, loss (1-q)*2; y=3 over 1: r=2, loss q*2
    expected = torch.tensor([[1.8, 1.0, 0.2], [0.2, 1.0, 1.8]])
    torch.testing.assert_close(pinball(forecast, targets, quantiles), expected)
    assert pinball(torch.tensor([[2.0]]), torch.tensor([2.0]), torch.tensor([0.3])).item() == 0


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
def test_pinball_is_minimised_by_the_quantile(q):
    values = torch.arange(101.0)  # 0..100: the q-quantile is 100 q
    candidates = torch.arange(101.0)
    losses = torch.stack([pinball(c.expand(101, 1), values, torch.tensor([q])).mean()
                          for c in candidates])
    assert candidates[losses.argmin()].item() == pytest.approx(np.quantile(values.numpy(), q))


def test_quantile_loss_coverage_and_the_median_as_point_forecast():
    layout = layout_of(quantiles=(0.1, 0.5, 0.9), offset=((10.0, 0.0), (10.0, 0.0)),
                       scale=((2.0, 1.0), (2.0, 1.0)), horizon=1)
    objective = ForecastObjective(layout)
    rows = 5
    # y1 targets -2..2 (original 6..14); y2 all 0. Interval [low, high] = [-1, 1]
    targets = torch.stack([torch.arange(-2.0, 3.0), torch.zeros(rows)], -1)[:, None, :]
    forecast = torch.empty(rows, 1, 2, 3)
    forecast[..., 0], forecast[..., 1], forecast[..., 2] = -1.0, 0.25, 1.0
    batch = {"inputs": torch.zeros(rows, 4, 2), "targets": targets,
             "seasonal": torch.zeros(rows, 1, 2), "series": torch.zeros(rows, dtype=torch.int64)}
    outputs = forecast.reshape(rows, -1)
    figures = objective.summarize(objective.validation_sums(outputs, batch))
    assert figures["val_coverage"] == pytest.approx((3 + 5) / 10)  # y1: -1, 0, 1 inside
    model = np.abs(0.25 - targets.numpy()) * np.array([2.0, 1.0])  # the median, in units
    assert figures["val_mae"] == pytest.approx(model.mean(), rel=1e-6)
    loss = pinball(forecast, targets, torch.tensor([0.1, 0.5, 0.9]))
    assert objective.loss(outputs, batch).item() == pytest.approx(loss.mean().item())
    assert figures["val_loss"] == pytest.approx(loss.mean().item(), rel=1e-6)


def test_point_forecast_loss_is_the_squared_error():
    rng = np.random.default_rng(2)
    objective = ForecastObjective(layout_of())
    batch = random_batch(rng)
    outputs = torch.tensor(rng.normal(size=(6, 6)), dtype=torch.float32)
    expected = ((outputs.reshape(6, 3, 2) - batch["targets"]) ** 2).mean()
    assert objective.loss(outputs, batch).item() == pytest.approx(expected.item(), rel=1e-6)
