"""The forecasting objective: loss, and validation in original units next to the naive
forecasters, for `task.name=timeseries`.

The head gives horizon x targets x quantiles numbers per window, all from one forward
pass. With `task.quantiles` the loss is the pinball (quantile) loss and the 0.5 quantile
is the point forecast; without, it is the mean squared error. Both are taken on
normalized values, so targets of different scales weigh alike.

Every reported error is in the table's units: predictions and targets are put back
through each series' normalization first. Three naive forecasters are scored on exactly
the same windows, so a run shows whether the network beat the obvious answers:

    persistence       the last value of the history, for every step of the horizon
    seasonal_naive    the value one season earlier (task.season)
    mean              the series' mean over its training split

    MAE = mean |y - y_hat|    RMSE = sqrt(mean (y - y_hat)^2)
    MASE = mean(|y - y_hat| / s_k), s_k = in-sample MAE of the seasonal-naive forecast on
           the training split, per target k (1.0 means "as good as seasonal naive in
           sample"; below 1 is better)
"""

from __future__ import annotations

import torch

from pipelines.timeseries import ForecastLayout

FORECASTERS = ("model", "persistence", "seasonal_naive", "mean")


class ForecastObjective:
    """`objectives.Objective` for forecasting windows (see `pipelines.windows`)."""

    sums_width = 3 + 3 * len(FORECASTERS)

    def __init__(self, layout: ForecastLayout):
        self.layout = layout
        targets = len(layout.targets)
        offset, scale = layout.arrays()
        self._offset = torch.from_numpy(offset[:, :targets])  # (series, targets)
        self._scale = torch.from_numpy(scale[:, :targets])
        self._train_mean = torch.tensor(layout.train_mean, dtype=torch.float32)
        self._mase_scale = torch.tensor(layout.mase_scale, dtype=torch.float32)
        self._quantiles = torch.tensor(layout.quantiles or (0.5,), dtype=torch.float32)
        self._median = (layout.quantiles.index(0.5) if layout.quantiles else 0)

    def shaped(self, outputs: torch.Tensor) -> torch.Tensor:
        """Head outputs (B, horizon*targets*quantiles) as (B, horizon, targets, quantiles)."""
        layout = self.layout
        return outputs.reshape(len(outputs), layout.horizon, len(layout.targets), -1)

    def loss(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        forecast, targets = self.shaped(outputs), batch["targets"]
        if not self.layout.quantiles:
            return torch.nn.functional.mse_loss(forecast[..., 0], targets)
        return pinball(forecast, targets, self._quantiles.to(forecast.device)).mean()

    def validation_sums(self, outputs: torch.Tensor,
                        batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[loss sum, count, then (|e|, e^2, |e|/s) for each forecaster, covered]."""
        forecast, targets = self.shaped(outputs.float()), batch["targets"]
        device = forecast.device
        if self.layout.quantiles:
            losses = pinball(forecast, targets, self._quantiles.to(device)).mean(-1)
        else:
            losses = (forecast[..., 0] - targets).square()
        series = batch["series"].to(device)
        offset, scale = self._offset.to(device)[series], self._scale.to(device)[series]

        def original(normalized: torch.Tensor) -> torch.Tensor:  # (B, H, T) values
            return normalized * scale[:, None] + offset[:, None]

        actual = original(targets)
        guesses = {
            "model": original(forecast[..., self._median]),
            "persistence": original(batch["inputs"][:, -1:, :targets.shape[-1]]
                                    .expand_as(targets)),
            "seasonal_naive": original(batch["seasonal"]),
            "mean": self._train_mean.to(device)[series][:, None].expand_as(targets),
        }
        sums = [losses.sum(), torch.tensor(float(targets.numel()), device=device)]
        mase_scale = self._mase_scale.to(device)
        for name in FORECASTERS:  # in float64: sums over a whole split stay exact
            error = guesses[name].double() - actual.double()
            sums += [error.abs().sum(), error.square().sum(), (error.abs() / mase_scale).sum()]
        if self.layout.quantiles:
            low, high = original(forecast[..., 0]), original(forecast[..., -1])
            sums.append(((actual >= low) & (actual <= high)).sum())
        else:
            sums.append(torch.zeros((), device=device))
        return torch.stack([value.double() for value in sums])

    def summarize(self, sums: torch.Tensor, prefix: str = "val") -> dict[str, float]:
        """`<prefix>_loss`, `_mae`, `_rmse`, `_mase`, the same for each naive forecaster
        (`<prefix>_mae_persistence`, ...), and `_coverage` with quantiles."""
        values = sums.tolist()
        count = max(values[1], 1.0)
        figures = {f"{prefix}_loss": values[0] / count}
        for index, name in enumerate(FORECASTERS):
            absolute, square, scaled = values[2 + 3 * index: 5 + 3 * index]
            suffix = "" if name == "model" else f"_{name}"
            figures[f"{prefix}_mae{suffix}"] = absolute / count
            figures[f"{prefix}_rmse{suffix}"] = (square / count) ** 0.5
            figures[f"{prefix}_mase{suffix}"] = scaled / count
        if self.layout.quantiles:
            figures[f"{prefix}_coverage"] = values[-1] / count
        return figures


def pinball(forecast: torch.Tensor, targets: torch.Tensor,
            quantiles: torch.Tensor) -> torch.Tensor:
    """Quantile loss of (..., Q) forecasts against (...) targets: q*r for r = y - y_q >= 0,
    (q - 1)*r below; its minimiser is the q-quantile of y."""
    residual = targets.unsqueeze(-1) - forecast
    return torch.maximum(quantiles * residual, (quantiles - 1) * residual)
