"""The test-split picture of a forecaster: forecasts against what happened.

Consecutive windows of the first series' test split, one horizon apart, so the
forecasts tile the stretch without overlapping; the shaded band is the interval between
the lowest and the highest quantile when the model forecasts quantiles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from orchestrator.forecaster import Forecaster
from pipelines.timeseries import Stretch, window_offsets

MAX_WINDOWS = 8
FILE = "test_forecast.png"


@torch.no_grad()
def plot_test_forecasts(forecaster: Forecaster, stretch: Stretch, out_dir: str | Path) -> Path:
    """Draw up to MAX_WINDOWS forecasts over `stretch` (normalized values of one series'
    test split) in the table's units; returns the PNG's path."""
    from matplotlib.figure import Figure  # loaded only by runs that draw

    layout = forecaster.layout
    context, horizon, targets = layout.context, layout.horizon, len(layout.targets)
    offset, scale = (array[stretch.series, :targets] for array in layout.arrays())
    starts = window_offsets(len(stretch.values), context, horizon, horizon)[:MAX_WINDOWS]
    history = np.stack([stretch.values[s + context - layout.input_len:s + context]
                        for s in starts])
    outputs = forecaster.model(torch.from_numpy(history)).numpy()
    forecast = outputs.reshape(len(starts), horizon, targets, -1) * scale[:, None] \
        + offset[:, None]
    actual = stretch.values[:, :targets] * scale + offset
    end = starts[-1] + context + horizon
    figure = Figure(figsize=(10, 3 * targets), layout="tight")
    axes = figure.subplots(targets, 1, squeeze=False)
    median = layout.quantiles.index(0.5) if layout.quantiles else 0
    for k, (axis, name) in enumerate(zip(axes[:, 0], layout.targets, strict=True)):
        axis.plot(np.arange(end), actual[:end, k], color="black", lw=1, label="actual")
        for i, start in enumerate(starts):
            steps = np.arange(start + context, start + context + horizon)
            axis.plot(steps, forecast[i, :, k, median], color="tab:blue", lw=1.5,
                      label="forecast" if i == 0 else None)
            if layout.quantiles:
                axis.fill_between(steps, forecast[i, :, k, 0], forecast[i, :, k, -1],
                                  color="tab:blue", alpha=0.2,
                                  label=(f"{layout.quantiles[0]:g}-{layout.quantiles[-1]:g} "
                                         "quantiles") if i == 0 else None)
        axis.set_ylabel(name)
        axis.legend(loc="upper left", fontsize=8)
    series = layout.series[stretch.series] or "the series"
    axes[0, 0].set_title(f"Test split of {series}: forecasts of {horizon} steps")
    axes[-1, 0].set_xlabel("step within the test stretch")
    path = Path(out_dir) / FILE
    figure.savefig(path, dpi=110)
    return path
