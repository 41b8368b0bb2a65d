"""The sweep file: what it accepts, and the one-sentence errors for what it does not."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from orchestrator.sweep_file import SweepError, load_sweep

BASE = """
task: {name: adding, seq_len: 20}
model: {cell: lstm, hidden_size: 16}
train: {steps: 200, eval_every: 50, checkpoint_every: 50}
"""

GOOD = """
base: base.yaml
fixed: {train.steps: 100}
space:
  model.cell: {choice: [rnn_tanh, lstm]}
  clip.threshold: {loguniform: [0.1, 10]}
  model.hidden_size: {int: [8, 32]}
  clip.policy: {grid: [norm, autoclip]}
search: {algorithm: random, num_samples: 3}
metric: val_loss
mode: min
scheduler: {name: asha, grace_period: 50, reduction_factor: 3}
register_model: best-adding
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "base.yaml").write_text(BASE)
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_good_sweep_file_loads(tmp_path):
    sweep = load_sweep(write(tmp_path, GOOD))
    assert sweep.name == "sweep"  # the file's stem when no name is given
    assert sweep.base.train.steps == 100  # fixed applied over the base
    assert sweep.space["clip.threshold"].values == (0.1, 10)
    assert sweep.space["model.cell"].values == ("rnn_tanh", "lstm")
    assert (sweep.algorithm, sweep.num_samples, sweep.metric, sweep.mode) == (
        "random", 3, "val_loss", "min")
    assert sweep.scheduler.name == "asha" and sweep.scheduler.grace_period == 50
    assert sweep.register_model == "best-adding"
    assert sweep.max_steps() == 100


def test_pbt_mutations_are_searched_keys(tmp_path):
    sweep = load_sweep(write(tmp_path, """
        base: base.yaml
        space: {optim.lr: {choice: [0.001, 0.01]}}
        metric: val_loss
        mode: min
        scheduler:
          name: pbt
          perturbation_interval: 50
          mutations: {optim.lr: {loguniform: [1e-4, 1e-1]}, clip.threshold: {choice: [1, 2]}}
        """))
    assert sweep.searched_keys() == ("optim.lr", "clip.threshold")
    assert sweep.scheduler.mutations["optim.lr"].values == (1e-4, 1e-1)  # 1e-4 read as a number


@pytest.mark.parametrize("change, named", [
    ({"space": "  modle.cell: {choice: [lstm]}"}, "modle.cell"),
    ({"space": "  model.cell: {choice: []}"}, "model.cell: choice needs a non-empty list"),
    ({"space": "  optim.lr: {uniform: [0.1, 0.01]}"}, "optim.lr: the range [0.1, 0.01] is empty"),
    ({"space": "  optim.lr: {loguniform: [0, 0.01]}"}, "loguniform needs low > 0"),
    ({"space": "  model.cell: {choice: [lstm, tanh_rnn]}"}, "space.model.cell: value 'tanh_rnn'"),
    ({"space": "  model.hidden_size: {int: [0, 8]}"}, "model.hidden_size must be > 0"),
    ({"space": "  optim.lr: {normal: [0, 1]}"}, "unknown draw 'normal'"),
    ({"space": "  optim.lr: 0.01"}, "optim.lr must be one of"),
    ({"metric": None}, "'metric' is missing"),
    ({"metric": "val_los"}, "did you mean 'val_loss'"),
    ({"scheduler": "{name: asha, grace: 10}"}, "unknown key 'grace' in scheduler"),
    ({"scheduler": "{name: pbt, mutations: {optim.lr: {choice: [0.1]}}}"},
     "perturbation_interval is missing"),
    ({"scheduler": "{name: pbt, perturbation_interval: 10, mutations: "
                   "{model.hidden_size: {choice: [8]}}}"}, "may only mutate keys"),
    ({"search": "{algorithm: grid}", "space": "  optim.lr: {uniform: [0.001, 0.01]}"},
     "algorithm=grid needs listed values"),
    ({"search": "{algorithm: optuna}", "space": "  model.cell: {grid: [lstm, gru]}"},
     "optuna cannot enumerate a grid"),
    ({"search": "{num_samples: 0}"}, "search.num_samples must be an integer >= 1"),
    ({"base": "missing.yaml"}, "missing.yaml does not exist"),
    ({"fixed": "{train.stepz: 5}"}, "fixed: unknown config key 'train.stepz'"),
    ({"fixed": "{scaling.min_workers: 1}"}, "scaling.min_workers=1 makes the run elastic"),
    ({"space": "  scaling.min_workers: {choice: [0, 1]}"},
     "scaling.min_workers cannot be searched"),
    ({"extra": "1"}, "unknown key 'extra'"),
])
def test_bad_sweep_files_are_refused_naming_the_problem(tmp_path, change, named):
    sections = {"base": "base.yaml", "metric": "val_loss", "mode": "min",
                "space": "  model.cell: {choice: [lstm, gru]}"}
    sections.update(change)
    lines = []
    for key, value in sections.items():
        if value is None:
            continue
        lines.append(f"{key}:\n{value}" if key == "space" else f"{key}: {value}")
    with pytest.raises(SweepError) as caught:
        load_sweep(write(tmp_path, "\n".join(lines) + "\n"))
    message = str(caught.value)
    assert named in message
    assert "sweep" in message and "\n" not in message.strip()


def test_a_missing_sweep_file_is_named(tmp_path):
    with pytest.raises(SweepError, match="nope.yaml does not exist"):
        load_sweep(tmp_path / "nope.yaml")


def test_every_sweep_in_configs_loads():
    """The sweeps the project ships stay valid as config keys change."""
    root = Path(__file__).resolve().parents[2] / "configs" / "sweeps"
    files = sorted(root.glob("*.yaml"))
    assert files, "configs/sweeps/ holds at least one sweep"
    for path in files:
        assert load_sweep(path).space
