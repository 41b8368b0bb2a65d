"""Whether a training step shares its work with other ranks."""

from __future__ import annotations

import torch.distributed as dist


def distributed() -> bool:
    """Whether other ranks share the step. A process group of one (a single Ray Train
    worker has one) shares nothing: its collectives would return what they are given, at
    the cost of a round trip every step."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
