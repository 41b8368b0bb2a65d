"""A sweep file: which experiment to vary, over which keys, searched and scheduled how.

    # rnn-orch tune configs/sweeps/adding_stability.yaml
    base: ../adding.yaml            # the experiment, relative to this file
    fixed: {train.steps: 1500}      # changes every trial shares
    space:                          # dotted config key -> how its values are drawn
      model.cell: {choice: [rnn_tanh, lstm, gru]}
      clip.threshold: {loguniform: [0.1, 10]}
      model.hidden_size: {int: [32, 128]}
      clip.policy: {grid: [norm, autoclip]}
    search: {algorithm: random, num_samples: 2}
    metric: val_loss
    mode: min
    scheduler: {name: asha, grace_period: 300}

Everything is checked here, before Ray starts: an unknown key, an empty choice, a range
whose low is above its high, a value the key does not accept, a scheduler without its
metric. Each error is one sentence naming the file and the key. Nothing here imports
Ray: the sweep driver turns a `Sweep` into Tune's objects.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import (
    Config,
    ConfigError,
    key_names,
    load_config,
    read_yaml_mapping,
    with_values,
)

DRAWS = ("choice", "grid", "uniform", "loguniform", "int")
ALGORITHMS = ("random", "grid", "optuna")
SCHEDULERS = ("fifo", "asha", "pbt")
METRICS = ("val_loss", "val_accuracy", "train_loss")
# PBT changes these while a trial runs; the others (model shape, task) would not fit the
# weights being copied between trials.
MUTABLE_PREFIXES = ("optim.lr", "optim.weight_decay", "optim.momentum", "clip.", "curriculum.",
                    "guard.", "init.freeze", "init.unfreeze_every", "init.lr_decay")
TOP_KEYS = ("name", "base", "fixed", "space", "search", "metric", "mode", "scheduler",
            "register_model")


@dataclass(frozen=True)
class Draw:
    """How one key's values are drawn: `choice`/`grid` list the values, the ranges give
    (low, high); `int` includes both ends."""

    kind: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Scheduler:
    name: str = "fifo"
    grace_period: int = 0  # asha: steps every trial runs before it can be stopped
    reduction_factor: float = 2.0  # asha: keep 1/reduction_factor of trials at each rung
    perturbation_interval: int = 0  # pbt: steps between exploit/explore rounds
    quantile_fraction: float = 0.25  # pbt: the bottom fraction copies the top fraction
    mutations: dict[str, Draw] = field(default_factory=dict)  # pbt: keys it perturbs


@dataclass(frozen=True)
class Sweep:
    path: Path
    name: str
    base: Config  # the experiment with `fixed` applied
    space: dict[str, Draw]
    algorithm: str
    num_samples: int
    max_concurrent_trials: int  # 0 = as many as the cluster's CPUs/GPUs hold
    metric: str
    mode: str
    scheduler: Scheduler
    register_model: str  # MLflow registry name for the best trial's model; "" = none

    def searched_keys(self) -> tuple[str, ...]:
        """Keys that differ between trials: the space, then what PBT mutates."""
        return tuple(dict.fromkeys([*self.space, *self.scheduler.mutations]))

    def max_steps(self) -> int:
        """The longest a trial can run, in steps (ASHA's horizon)."""
        steps = self.space.get("train.steps")
        return max(steps.values) if steps else self.base.train.steps


class SweepError(ConfigError):
    """A sweep file is wrong; the message names the file and the key."""


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    data = read_yaml_mapping(path, "sweep file", "keys (base, space, ...)", SweepError)
    where = f"sweep file {path}"
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise SweepError(f"{where}: unknown key '{unknown[0]}'{_hint(unknown[0], TOP_KEYS)}; "
                         f"valid keys: {', '.join(TOP_KEYS)}.")
    base = _base_config(path, data, where)
    space = _draws(data.get("space"), "space", base, where, required=True)
    search = _mapping(data.get("search", {}), "search", where)
    _only_keys(search, ("algorithm", "num_samples", "max_concurrent_trials"), "search", where)
    algorithm = _choice(search.get("algorithm", "random"), ALGORITHMS, "search.algorithm", where)
    num_samples = _count(search.get("num_samples", 1), "search.num_samples", where, minimum=1)
    concurrency = _count(search.get("max_concurrent_trials", 0), "search.max_concurrent_trials",
                         where, minimum=0)
    if "metric" not in data:
        raise SweepError(f"{where}: 'metric' is missing: trials are ranked, stopped and copied "
                         f"by it; expected one of {', '.join(METRICS)}, e.g. metric: val_loss.")
    metric = _choice(data["metric"], METRICS, "metric", where)
    if "mode" not in data:
        raise SweepError(f"{where}: 'mode' is missing: say whether {metric} is better low or "
                         "high (mode: min or mode: max).")
    mode = _choice(data["mode"], ("min", "max"), "mode", where)
    scheduler = _scheduler(data.get("scheduler", {}), base, where)
    _check_combination(space, algorithm, scheduler, where)
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name:
        raise SweepError(f"{where}: name must be a non-empty text without '/', got {name!r}.")
    register = data.get("register_model", "")
    if not isinstance(register, str):
        raise SweepError(f"{where}: register_model must be a text (a registry name), "
                         f"got {register!r}.")
    return Sweep(path=path, name=name, base=base, space=space, algorithm=algorithm,
                 num_samples=num_samples, max_concurrent_trials=concurrency, metric=metric,
                 mode=mode, scheduler=scheduler, register_model=register)


def _base_config(path: Path, data: dict, where: str) -> Config:
    if "base" not in data:
        raise SweepError(f"{where}: 'base' is missing: name the experiment config to vary, "
                         "relative to the sweep file (e.g. base: ../adding.yaml).")
    base_path = (path.parent / str(data["base"])).resolve()
    fixed = _mapping(data.get("fixed", {}), "fixed", where)
    _known_keys(fixed, "fixed", where)
    try:
        base = with_values(load_config(base_path), fixed)
    except ConfigError as exc:
        raise SweepError(f"{where}: base or fixed: {exc}") from None
    if base.task.name in ("timeseries", "text"):
        raise SweepError(f"{where}: base: task.name={base.task.name} cannot be swept yet "
                         "(each trial would prepare the data again, and a trial logs neither "
                         "the test figures nor the files a forecaster or a language model "
                         "needs); train it with `rnn-orch train`.")
    if base.scaling.elastic:
        raise SweepError(f"{where}: base or fixed: scaling.min_workers="
                         f"{base.scaling.min_workers} makes the run elastic, but Tune reserves "
                         "each trial's workers before it starts, a fixed number; set "
                         "scaling.min_workers: 0.")
    return base


def _draws(raw: Any, section: str, base: Config, where: str, required: bool) -> dict[str, Draw]:
    draws = _mapping(raw if raw is not None else {}, section, where)
    if required and not draws:
        raise SweepError(f"{where}: '{section}' is empty: give at least one key to search, "
                         "e.g. model.cell: {choice: [lstm, gru]}.")
    _known_keys(draws, section, where)
    if "scaling.min_workers" in draws:
        raise SweepError(f"{where}: {section}: scaling.min_workers cannot be searched: Tune "
                         "reserves each trial's workers before it starts, a fixed number.")
    parsed = {key: _draw(key, spec, f"{section}.{key}", where) for key, spec in draws.items()}
    for key, draw in parsed.items():
        for value in draw.values:  # every listed value, or both ends of a range
            try:
                with_values(base, {key: value})
            except ConfigError as exc:
                raise SweepError(f"{where}: {section}.{key}: value {value!r} is not "
                                 f"accepted: {exc}") from None
    return parsed


def _draw(key: str, spec: Any, label: str, where: str) -> Draw:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SweepError(f"{where}: {label} must be one of {{{': ..., '.join(DRAWS)}: ...}}, "
                         f"e.g. {{choice: [a, b]}} or {{loguniform: [1e-4, 1e-2]}}; got {spec!r}.")
    (kind, args), = spec.items()
    if kind not in DRAWS:
        raise SweepError(f"{where}: {label}: unknown draw '{kind}'{_hint(kind, DRAWS)}; "
                         f"expected one of {', '.join(DRAWS)}.")
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise SweepError(f"{where}: {label}: {kind} needs a non-empty list of values, "
                             f"got {args!r}.")
        return Draw(kind, tuple(args))
    numbers = isinstance(args, list) and len(args) == 2 and all(
        isinstance(_number(a), int | float) and not isinstance(a, bool) for a in args)
    if not numbers:
        raise SweepError(f"{where}: {label}: {kind} needs [low, high], two numbers, "
                         f"got {args!r}.")
    low, high = (_number(a) for a in args)
    if kind == "int" and not all(isinstance(v, int) for v in (low, high)):
        raise SweepError(f"{where}: {label}: int needs whole numbers, got {args!r}.")
    if low > high or (kind != "int" and low == high):
        raise SweepError(f"{where}: {label}: the range [{low}, {high}] is empty: low must be "
                         "below high.")
    if kind == "loguniform" and low <= 0:
        raise SweepError(f"{where}: {label}: loguniform needs low > 0, got {low}.")
    return Draw(kind, (low, high))


def _number(value: Any) -> Any:
    """YAML reads `1e-3` (no dot) as text; take it as the number it means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _scheduler(raw: Any, base: Config, where: str) -> Scheduler:
    spec = _mapping(raw, "scheduler", where)
    name = _choice(spec.get("name", "fifo"), SCHEDULERS, "scheduler.name", where)
    allowed = {"fifo": ("name",), "asha": ("name", "grace_period", "reduction_factor"),
               "pbt": ("name", "perturbation_interval", "quantile_fraction", "mutations")}[name]
    _only_keys(spec, allowed, f"scheduler (name: {name})", where)
    if name == "asha":
        grace = _count(spec.get("grace_period", base.train.eval_every), "scheduler.grace_period",
                       where, minimum=1)
        factor = _number(spec.get("reduction_factor", 2))
        if not isinstance(factor, int | float) or factor <= 1:
            raise SweepError(f"{where}: scheduler.reduction_factor must be a number > 1, "
                             f"got {factor!r}.")
        return Scheduler(name, grace_period=grace, reduction_factor=float(factor))
    if name == "pbt":
        if "perturbation_interval" not in spec:
            raise SweepError(f"{where}: scheduler.perturbation_interval is missing: PBT needs "
                             "the steps between two exploit/explore rounds.")
        interval = _count(spec["perturbation_interval"], "scheduler.perturbation_interval",
                          where, minimum=1)
        fraction = _number(spec.get("quantile_fraction", 0.25))
        if not isinstance(fraction, int | float) or not 0 < fraction <= 0.5:
            raise SweepError(f"{where}: scheduler.quantile_fraction must be in (0, 0.5], "
                             f"got {fraction!r}.")
        mutations = _draws(spec.get("mutations"), "scheduler.mutations", base, where,
                           required=True)
        for key in mutations:
            if not key.startswith(MUTABLE_PREFIXES):
                raise SweepError(
                    f"{where}: scheduler.mutations.{key}: PBT copies weights between trials, "
                    f"so it may only mutate keys that leave the model's shape alone "
                    f"({', '.join(p + '*' if p.endswith('.') else p for p in MUTABLE_PREFIXES)})."
                )
        return Scheduler(name, perturbation_interval=interval, quantile_fraction=float(fraction),
                         mutations=mutations)
    return Scheduler(name)


def _check_combination(space: dict[str, Draw], algorithm: str, scheduler: Scheduler,
                       where: str) -> None:
    if algorithm == "grid":
        ranged = [key for key, draw in space.items() if draw.kind not in ("choice", "grid")]
        if ranged:
            raise SweepError(f"{where}: search.algorithm=grid needs listed values, but "
                             f"space.{ranged[0]} is a range; use choice/grid or algorithm: "
                             "random.")
    if algorithm == "optuna":
        grids = [key for key, draw in space.items() if draw.kind == "grid"]
        if grids:
            raise SweepError(f"{where}: search.algorithm=optuna cannot enumerate a grid "
                             f"(space.{grids[0]}); use choice instead.")
        if scheduler.name == "pbt":
            raise SweepError(f"{where}: scheduler.name=pbt chooses the values itself; use "
                             "search.algorithm random or grid with it.")


def _mapping(value: Any, label: str, where: str) -> dict:
    if not isinstance(value, dict):
        raise SweepError(f"{where}: {label} must be a mapping, got {value!r}.")
    return value


def _only_keys(spec: dict, allowed: tuple[str, ...], label: str, where: str) -> None:
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise SweepError(f"{where}: unknown key '{unknown[0]}' in {label}"
                         f"{_hint(unknown[0], allowed)}; valid keys: {', '.join(allowed)}.")


def _known_keys(spec: dict, label: str, where: str) -> None:
    keys = key_names()
    for key in spec:
        if key not in keys:
            raise SweepError(f"{where}: {label}: unknown config key '{key}'{_hint(key, keys)}; "
                             "see `rnn-orch train --help` for every key.")


def _choice(value: Any, accepted: tuple[str, ...], label: str, where: str) -> str:
    if value not in accepted:
        raise SweepError(f"{where}: {label} is {value!r}{_hint(str(value), accepted)}; "
                         f"expected one of {', '.join(accepted)}.")
    return value


def _count(value: Any, label: str, where: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SweepError(f"{where}: {label} must be an integer >= {minimum}, got {value!r}.")
    return value


def _hint(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
