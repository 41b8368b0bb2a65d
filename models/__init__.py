"""torch modules for rnn-orch: recurrent cells by name, initialisation, heads, the model.

Imports neither ray nor mlflow, so models build and test anywhere torch does.
"""

from __future__ import annotations

from models.cells import CELL_NAMES, UnknownCellError
from models.heads import HEAD_NAMES
from models.sequence_model import ModelSpec, SequenceModel, build_model

__all__ = [
    "CELL_NAMES",
    "HEAD_NAMES",
    "ModelSpec",
    "SequenceModel",
    "UnknownCellError",
    "build_model",
]
