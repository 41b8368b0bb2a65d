"""Data for rnn-orch: synthetic tasks, Parquet datasets, padding into the batch format.

`pipelines.ray_datasets` (Ray Data) is not imported here, so `import pipelines` stays
free of Ray.
"""

from __future__ import annotations

from pipelines.collate import IGNORE_INDEX, KINDS, pad_batch, pad_rows, to_torch
from pipelines.errors import DataError
from pipelines.parquet import TaskInfo, read_task_info, write_dataset
from pipelines.synthetic import (
    TASK_NAMES,
    AddingProblem,
    CopyMemory,
    SyntheticTask,
    make_task,
    rng_for,
    validation_set,
)

__all__ = [
    "IGNORE_INDEX", "KINDS", "TASK_NAMES", "AddingProblem", "CopyMemory", "DataError",
    "SyntheticTask", "TaskInfo", "make_task", "pad_batch", "pad_rows", "read_task_info",
    "rng_for", "to_torch", "validation_set", "write_dataset",
]
