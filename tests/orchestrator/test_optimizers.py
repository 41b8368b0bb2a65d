from __future__ import annotations

import pytest
import torch

from orchestrator.config import OPTIMIZERS
from orchestrator.optimizers import build_optimizer

EXPECTED = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
            "rmsprop": torch.optim.RMSprop}


def test_every_config_choice_has_an_optimizer():
    assert set(OPTIMIZERS) == set(EXPECTED)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_builds_the_named_optimizer_with_the_given_values(name):
    params = [torch.nn.Parameter(torch.ones(3))]
    optimizer = build_optimizer(name, params, lr=0.05, weight_decay=0.01, momentum=0.5)
    assert type(optimizer) is EXPECTED[name]
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (0.05, 0.01)
    if name in ("sgd", "rmsprop"):
        assert group["momentum"] == 0.5


def test_unknown_optimizer_names_the_key():
    with pytest.raises(ValueError, match="optim.name"):
        build_optimizer("adamm", [torch.nn.Parameter(torch.ones(1))], 0.1, 0.0, 0.0)
