"""The forecaster as an MLflow pyfunc model, so `mlflow models serve -m <model uri>`
answers a REST request of recent history with forecasts in the table's units.

    curl -X POST http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \
         -d '{"dataframe_split": {"columns": ["time", "pm", ...], "data": [[...], ...]}}'

The request holds the last task.input_len (or more) rows of each series, with the
columns of the training table; the answer is one row per series and forecast step (see
`orchestrator.forecaster`), times as ISO 8601 text. The weights are read with
`torch.load(weights_only=True)`: serving a model never unpickles code from its files.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd
import pyarrow as pa

from orchestrator.forecaster import Forecaster
from pipelines.tables import coerce_columns

ARTIFACT = "forecaster"


class ForecasterModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.forecaster = Forecaster.load(context.artifacts[ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        layout = self.forecaster.layout
        table = coerce_columns(
            pa.Table.from_pandas(model_input, preserve_index=False), "the request",
            time_column=layout.time_column, value_columns=list(layout.features),
            id_column=layout.series_id)
        forecasts = self.forecaster.forecast(table, "the request").to_pandas()
        if layout.time_kind == "timestamp":
            forecasts[layout.time_column] = forecasts[layout.time_column].dt.strftime(
                "%Y-%m-%d %H:%M:%S")
        return forecasts
