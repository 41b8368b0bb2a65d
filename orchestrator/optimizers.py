"""The optimizer named by `optim.name`, built from plain values."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def build_optimizer(name: str, parameters: Iterable[torch.nn.Parameter] | list[dict], lr: float,
                    weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """`parameters` may be parameter groups (dicts with their own `lr`); `lr` is the
    default of those that have none."""
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr, momentum=momentum,
                                   weight_decay=weight_decay)
    raise ValueError(f"optim.name {name!r} is not one of: adam, adamw, sgd, rmsprop.")
