"""The one exception type for bad user data.

It subclasses ValueError so callers that already handle bad values keep working, and is
its own type so the CLI can tell "your dataset is wrong" apart from a bug in rnn-orch.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad user data: the message names the file and column and what was expected."""
