"""A trained forecaster: recent history in, forecasts in the table's units out.

The same object answers `rnn-orch predict`, the model served by `mlflow models serve`
and the test-split plot, so all three read a table exactly the way training did: the
layout (`pipelines.timeseries.ForecastLayout`) that travels with the weights says which
columns, which time grid, how missing values are treated and how each series was
normalized.

    forecaster = Forecaster.load("runs/my-run/checkpoint_00001000")   # or a model's files
    forecasts = forecaster.forecast(table)     # pyarrow table of recent history

For every series of the table, the forecast starts one step after its last row:

    station  time                 pm      pm_q0.1  pm_q0.9     (quantile columns only
    A        2014-12-31 00:00:00  103.2   61.0     170.4        when trained with
    A        2014-12-31 01:00:00  ...                            task.quantiles)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from models import ModelSpec, SequenceModel, build_model
from orchestrator.forecasting import ForecastObjective
from pipelines.errors import DataError
from pipelines.timeseries import ForecastLayout, fit_normalization, grid_series
from pipelines.windows import LAYOUT_FILE

WEIGHTS_FILE = "forecaster.pt"  # spec and weights only: loads with weights_only=True


class Forecaster:
    def __init__(self, model: SequenceModel, layout: ForecastLayout):
        self.model = model.eval()
        self.layout = layout

    @classmethod
    def load(cls, directory: str | Path) -> Forecaster:
        """From the files `save` wrote, or from a training checkpoint directory."""
        from orchestrator import checkpoints

        directory = Path(directory)
        layout_file = directory / LAYOUT_FILE
        if not layout_file.is_file():
            raise DataError(f"{directory} holds no {LAYOUT_FILE}: it is not a forecaster "
                            "(expected a checkpoint or model of a task.name=timeseries run).")
        layout = ForecastLayout.from_json(layout_file.read_text())
        if (directory / WEIGHTS_FILE).is_file():
            state = checkpoints.load_weights_only(directory / WEIGHTS_FILE)
            model = build_model(ModelSpec(**state["spec"]))
            model.load_state_dict(state["model"])
        else:
            model = checkpoints.load_model(directory)
        return cls(model, layout)

    def save(self, directory: str | Path) -> None:
        """The weights, the model's spec and the layout: all a forecaster needs."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({"spec": asdict(self.model.spec), "model": self.model.state_dict()},
                   directory / WEIGHTS_FILE)
        (directory / LAYOUT_FILE).write_text(self.layout.to_json())

    @torch.no_grad()
    def forecast(self, table: pa.Table, source: str = "the table") -> pa.Table:
        """Forecasts of every series in `table` (columns as in training, time parsed,
        values numeric: see `pipelines.tables.coerce_columns`), from its last input_len
        steps; series the training table did not have are normalized by their own
        history."""
        layout = self.layout
        all_series, freq, _ = grid_series(table, layout.options(), source, layout.freq)
        inputs, rows = [], []
        for series in all_series:
            history = series.values[-layout.input_len:]
            where = f"series {series.name!r}" if layout.series_id else "the series"
            if len(history) < layout.input_len or np.isnan(history).any():
                raise DataError(f"{source}: {where} has {len(history)} complete recent steps; "
                                f"expected the last {layout.input_len} steps (task.input_len) "
                                "without gaps or missing values.")
            offset, scale = self._normalization(series.name, history)
            inputs.append((history - offset) / scale)
            rows.append((series, offset, scale))
        batch = torch.from_numpy(np.stack(inputs).astype(np.float32))
        outputs = self.model(batch).reshape(len(batch), layout.horizon, len(layout.targets), -1)
        return self._table(outputs.numpy(), rows, freq)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict[str, torch.Tensor]],
                 prefix: str = "test") -> dict[str, float]:
        """`<prefix>_mae`, `_rmse`, `_mase` (and `_coverage`) of the model and of the naive
        forecasters over prepared windows (`pipelines.windows.Windows.in_order`)."""
        objective = ForecastObjective(self.layout)
        sums = torch.zeros(objective.sums_width, dtype=torch.float64)
        for batch in batches:
            sums += objective.validation_sums(self.model(batch["inputs"], batch["lengths"]),
                                              batch)
        return objective.summarize(sums, prefix)

    def _normalization(self, name: str, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if name in self.layout.series:
            offset, scale = self.layout.arrays()
            index = self.layout.series.index(name)
            return offset[index], scale[index]
        return fit_normalization(history, self.layout.normalize)

    def _table(self, outputs: np.ndarray, rows: list, freq: int) -> pa.Table:
        layout = self.layout
        targets = len(layout.targets)
        columns: dict[str, list] = {name: [] for name in self._column_names()}
        steps = np.arange(1, layout.horizon + 1)
        for forecast, (series, offset, scale) in zip(outputs, rows, strict=True):
            values = forecast * scale[:targets, None] + offset[:targets, None]  # (H, T, Q)
            last = series.start + (len(series.values) - 1) * freq
            if layout.series_id:
                columns[layout.series_id] += [series.name] * layout.horizon
            columns[layout.time_column] += list(last + steps * freq)
            median = layout.quantiles.index(0.5) if layout.quantiles else 0
            for k, target in enumerate(layout.targets):
                columns[target] += list(values[:, k, median])
                for q, level in enumerate(layout.quantiles):
                    if level != 0.5:
                        columns[f"{target}_q{level:g}"] += list(values[:, k, q])
        times = pa.array(np.asarray(columns.pop(layout.time_column), np.int64))
        if layout.time_kind == "timestamp":
            times = times.cast(pa.timestamp("ns"))
        return pa.table({name: times if name == layout.time_column else columns[name]
                         for name in self._column_names()})

    def _column_names(self) -> list[str]:
        layout = self.layout
        names = [*([layout.series_id] if layout.series_id else []), layout.time_column]
        for target in layout.targets:
            names.append(target)
            names += [f"{target}_q{level:g}" for level in layout.quantiles if level != 0.5]
        return names
