"""One experiment = one config: frozen dataclasses loaded from YAML, validated on load.

Every key that varies between experiments lives here, with its default and its meaning
(the meaning is what `rnn-orch train --help` prints). The loop and the driver receive a
`Config` and never read globals or environment variables themselves; the only outside
value, the MLflow tracking URI, is resolved once by the CLI.

    seed: 0
    task:    {name: adding, seq_len: 100}
    model:   {cell: lstm, hidden_size: 128}
    train:   {steps: 2000, batch_size: 64}
    ...

Overrides use dotted keys: `model.cell=gru train.steps=500`. An unknown key, a value of
the wrong type or outside the accepted set raises `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models import CELL_NAMES
from orchestrator.clipping import POLICIES as CLIP_POLICIES
from orchestrator.curriculum import PROGRESS_DRIVEN, SCHEDULES
from orchestrator.precision import PRECISIONS
from pipelines.synthetic import TASK_NAMES
from pipelines.text import VOCABULARIES
from pipelines.timeseries import MISSING_POLICIES, NORMALIZATIONS, SeriesOptions


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and what is accepted."""


def _key(default: Any, help: str, choices: tuple[str, ...] = (), list: bool = False,
         name: str = "") -> Any:
    """A config field: its default, the sentence `--help` shows, and its accepted values.
    A `list` key is text that a YAML list may also give (joined with commas). `name` is
    the key's name in YAML when it cannot be the field's (`init.from`: `from` is a Python
    keyword)."""
    return field(default=default, metadata={"help": help, "choices": choices, "list": list,
                                            "name": name})


def _name(f: dataclasses.Field) -> str:
    """A field's key in YAML, overrides and MLflow params."""
    return f.metadata.get("name") or f.name


OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


@dataclass(frozen=True)
class TaskConfig:
    name: str = _key("adding", "what to learn", ("parquet", "timeseries", "text", *TASK_NAMES))
    seq_len: int = _key(100, "sequence length T of a synthetic task (the distance to remember)")
    val_size: int = _key(1000, "rows in the fixed validation set of a synthetic task")
    path: str = _key("", "parquet task: directory with train/ and val/ Parquet files; "
                         "timeseries: a CSV or Parquet file or a directory of Parquet files; "
                         "text: a text file, a directory of them or a glob (local, s3:// or "
                         "gs://)")
    num_classes: int = _key(
        0, "parquet task: number of classes, when the files do not carry rnn-orch metadata"
    )
    shuffle_rows: int = _key(1024, "parquet task: rows each worker shuffles in memory, "
                                   "with a new seed every epoch (0 = the files' order)")
    keep_rows_mb: int = _key(256, "parquet task: a worker whose share of the training rows "
                                  "takes at most this many MiB (as Arrow) reads it once "
                                  "and cuts every epoch from memory, shuffled whole; "
                                  "0 = every epoch is a pass of Ray Data")
    bucket_batches: int = _key(1, "parquet task: length bucketing: the rows of this many "
                                  "batches are sorted by length together, cut into "
                                  "batches and taken in a shuffled order (1 = none)")
    normalize_channels: bool = _key(False, "parquet task: scale each input channel to mean "
                                           "0 and std 1 with the training split's statistics "
                                           "(one pass over it at the start; kept in the model)")
    time_column: str = _key("", "timeseries: the column of timestamps (or integer steps)")
    targets: str = _key("", "timeseries: the columns to forecast (a list, or a, b)",
                       list=True)
    covariates: str = _key("", "timeseries: more input columns, only read from the past",
                          list=True)
    series_id: str = _key("", "timeseries: the column naming the series of a many-series "
                              "table (empty = one series)")
    series: str = _key("", "timeseries: train on only these series (values of "
                           "task.series_id); empty = all", list=True)
    skip_series: str = _key("", "timeseries: leave these series out (values of "
                                "task.series_id), e.g. one kept apart to fine-tune on", list=True)
    input_len: int = _key(48, "timeseries: look-back steps the model reads")
    horizon: int = _key(24, "timeseries: steps forecast at once")
    stride: int = _key(1, "timeseries: steps between the starts of two training windows")
    eval_stride: int = _key(
        1, "timeseries: steps between the starts of two validation or test windows (1 "
        "scores every window; the horizon scores non-overlapping ones, far cheaper on a "
        "long table)")
    val_fraction: float = _key(0.15, "timeseries, text: the share of each series (of the "
                                     "text), after the training part, that validates")
    test_fraction: float = _key(0.15, "timeseries, text: the share at the end of each "
                                      "series (of the text) that tests")
    val_start: str = _key("", "timeseries: the time validation starts (with test_start, "
                              "instead of the fractions)")
    test_start: str = _key("", "timeseries: the time the test split starts")
    normalize: str = _key("standard", "timeseries: per-series normalization, fitted on the "
                                      "training split", NORMALIZATIONS)
    missing: str = _key("interpolate", "timeseries: a gap in time or a missing value: "
                                       "interpolate linearly, drop the windows that touch "
                                       "it, or refuse the table", MISSING_POLICIES)
    freq: str = _key("", "timeseries: the time step (1h, 15min, 1d); empty = the most "
                         "common step between rows")
    season: int = _key(0, "timeseries: steps in a season, for the seasonal-naive forecast "
                          "and MASE (0 = from freq: a day below daily, a week for daily)")
    vocab: str = _key("bytes", "text: the symbols a language model reads and predicts: "
                               "bytes (any file), or the characters of the training text "
                               "(UTF-8)", VOCABULARIES)
    bptt: int = _key(100, "text: steps of truncated backpropagation through time; the "
                          "hidden state is carried across chunks of this length")
    quantiles: str = _key("", "timeseries: quantiles to forecast with the pinball loss, "
                              "e.g. 0.1, 0.5, 0.9 (must include 0.5, the point forecast); "
                              "empty = a point forecast with the squared error", list=True)

    def __post_init__(self) -> None:
        _positive(self, "seq_len", "val_size")
        if self.name == "timeseries":
            self._check_timeseries()
        if self.name == "text":
            self._check_text()
        if self.name == "parquet" and not self.path:
            raise ConfigError(
                "task.path is empty but task.name is 'parquet': set task.path to a directory "
                "holding train/ and val/ Parquet files (see `rnn-orch data make --help`)."
            )
        _positive(self, "bucket_batches")
        if self.normalize_channels and self.name != "parquet":
            raise ConfigError(f"task.normalize_channels is for task.name=parquet (labelled "
                              f"sequences, rows of features); task.name is {self.name!r}"
                              + (": use task.normalize for a timeseries." if
                                 self.name == "timeseries" else "."))
        for key in ("num_classes", "shuffle_rows", "keep_rows_mb"):
            if getattr(self, key) < 0:
                raise ConfigError(f"task.{key} must be >= 0, got {getattr(self, key)}.")

    def _check_timeseries(self) -> None:
        for key in ("path", "time_column", "targets"):
            if not getattr(self, key):
                raise ConfigError(f"task.{key} is empty but task.name is 'timeseries': name "
                                  f"{_TIMESERIES_NEEDS[key]}.")
        _positive(self, "input_len", "horizon", "stride", "eval_stride")
        self._check_fractions()
        if bool(self.val_start) != bool(self.test_start):
            raise ConfigError("task.val_start and task.test_start go together: give both "
                              "cut-off times, or neither (then the fractions split).")
        if (self.series or self.skip_series) and not self.series_id:
            raise ConfigError("task.series and task.skip_series pick series by their id: set "
                              "task.series_id to the column that holds it.")
        if self.season < 0:
            raise ConfigError(f"task.season must be >= 0 (0 = from task.freq), got "
                              f"{self.season}.")
        quantiles = self.quantile_levels()
        if quantiles and (0.5 not in quantiles or list(quantiles) != sorted(set(quantiles))
                          or not all(0 < q < 1 for q in quantiles)):
            raise ConfigError(f"task.quantiles is {self.quantiles!r}; expected increasing "
                              "levels in (0, 1) that include 0.5, such as 0.1, 0.5, 0.9.")

    def _check_text(self) -> None:
        if not self.path:
            raise ConfigError("task.path is empty but task.name is 'text': name a text file, "
                              "a directory of text files or a glob (e.g. data/python_stdlib, "
                              "from `rnn-orch data fetch python_stdlib`).")
        _positive(self, "bptt")
        self._check_fractions()

    def _check_fractions(self) -> None:
        fractions = (self.val_fraction, self.test_fraction)
        if not (all(0 < f < 1 for f in fractions) and sum(fractions) < 1):
            raise ConfigError(f"task.val_fraction ({self.val_fraction}) and task."
                              f"test_fraction ({self.test_fraction}) must each be in (0, 1), "
                              "leaving a training part before them (their sum below 1).")

    def quantile_levels(self) -> tuple[float, ...]:
        try:
            return tuple(float(q) for q in _items(self.quantiles))
        except ValueError:
            raise ConfigError(f"task.quantiles is {self.quantiles!r}; expected numbers such "
                              "as 0.1, 0.5, 0.9.") from None

    def series_options(self) -> SeriesOptions:
        """The timeseries keys, as the data side takes them."""
        return SeriesOptions(
            time_column=self.time_column, targets=_items(self.targets),
            covariates=_items(self.covariates), series_id=self.series_id,
            series=_items(self.series), skip_series=_items(self.skip_series),
            input_len=self.input_len, horizon=self.horizon, stride=self.stride,
            eval_stride=self.eval_stride,
            val_fraction=self.val_fraction, test_fraction=self.test_fraction,
            val_start=self.val_start, test_start=self.test_start, normalize=self.normalize,
            missing=self.missing, freq=self.freq, season=self.season,
            quantiles=self.quantile_levels())


_TIMESERIES_NEEDS = {
    "path": "the table: a CSV or Parquet file, or a directory of Parquet files",
    "time_column": "the column that holds the time of each row",
    "targets": "the column(s) to forecast",
}


def _items(text: str) -> tuple[str, ...]:
    """`"a, b"` -> ("a", "b"): the value of a list key."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


@dataclass(frozen=True)
class ModelConfig:
    cell: str = _key("lstm", "recurrent cell", CELL_NAMES)
    hidden_size: int = _key(128, "units per recurrent layer")
    num_layers: int = _key(1, "stacked recurrent layers")
    dropout: float = _key(
        0.0, "dropout between stacked layers, a fresh mask every step as in torch "
        "(needs num_layers > 1)")
    input_dropout: float = _key(0.0, "dropout on the inputs to the recurrent stack")
    output_dropout: float = _key(0.0, "dropout on the top layer's outputs, before the head")
    variational: bool = _key(
        False, "input_dropout and output_dropout keep one mask per sequence for all its "
        "steps (Gal & Ghahramani 2016); model.dropout is unaffected")
    weight_drop: float = _key(
        0.0, "DropConnect on the recurrent weights weight_hh during training (AWD-LSTM)")
    embedding_size: int = _key(64, "text: features each symbol is embedded in")

    def __post_init__(self) -> None:
        _positive(self, "hidden_size", "num_layers", "embedding_size")
        for name in ("dropout", "input_dropout", "output_dropout", "weight_drop"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ConfigError(f"model.{name} is a rate: it must be in [0, 1), got {rate}.")


@dataclass(frozen=True)
class OptimConfig:
    name: str = _key("adam", "optimizer", OPTIMIZERS)
    lr: float = _key(1e-3, "learning rate")
    weight_decay: float = _key(
        0.0, "weight decay against overfitting: decoupled from the gradient for adamw, "
        "an L2 term added to the gradient for adam, sgd and rmsprop")
    momentum: float = _key(0.9, "momentum for sgd and rmsprop")

    def __post_init__(self) -> None:
        _positive(self, "lr")
        if self.weight_decay < 0 or self.momentum < 0:
            raise ConfigError("optim.weight_decay and optim.momentum must be >= 0.")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = _key(2000, "optimizer steps in the whole run")
    batch_size: int = _key(64, "sequences per step on each worker")
    eval_every: int = _key(100, "steps between validations")
    checkpoint_every: int = _key(500, "steps between checkpoints (a multiple of eval_every)")
    keep_checkpoints: int = _key(2, "best checkpoints kept by val_loss (the latest is kept too)")
    precision: str = _key(
        "fp32", "fp32; bf16: autocast (CPU or GPU); fp16: autocast with loss scaling, needs "
        "scaling.use_gpu", PRECISIONS)

    def __post_init__(self) -> None:
        _positive(self, "steps", "batch_size", "eval_every", "checkpoint_every",
                  "keep_checkpoints")
        if self.checkpoint_every % self.eval_every:
            raise ConfigError(
                f"train.checkpoint_every ({self.checkpoint_every}) must be a multiple of "
                f"train.eval_every ({self.eval_every}), so every checkpoint carries the "
                "val_loss it is ranked by."
            )


@dataclass(frozen=True)
class ClipConfig:
    policy: str = _key("norm", "gradient clipping policy", CLIP_POLICIES)
    threshold: float = _key(
        1.0, "norm: max global norm; value: max |gradient|; autoclip: percentile of the "
        "norms seen so far (10 recommended); agc: lambda, max ||G_i|| / ||W_i|| per unit")

    def __post_init__(self) -> None:
        if self.policy != "none":
            _positive(self, "threshold")
        if self.policy == "autoclip" and self.threshold > 100:
            raise ConfigError(f"clip.threshold is a percentile for clip.policy=autoclip: "
                              f"it must be in (0, 100], got {self.threshold}.")


@dataclass(frozen=True)
class GuardConfig:
    enabled: bool = _key(True, "skip bad steps and roll back when training diverges")
    spike_factor: float = _key(
        10.0, "a loss above this times the median of recent good losses is a spike")
    window: int = _key(100, "recent good losses the spike median is taken over")
    patience: int = _key(3, "bad steps in a row that trigger a rollback")
    max_rollbacks: int = _key(3, "rollbacks allowed before the run stops as diverged")
    lr_factor: float = _key(0.5, "learning rate multiplier at each rollback")
    clip_factor: float = _key(0.5, "clip.threshold multiplier at each rollback")
    snapshot_every: int = _key(100, "good steps between the in-memory states rolled back to")

    def __post_init__(self) -> None:
        _positive(self, "window", "patience", "snapshot_every")
        if self.spike_factor <= 1:
            raise ConfigError(f"guard.spike_factor must be > 1, got {self.spike_factor}.")
        if self.max_rollbacks < 0:
            raise ConfigError(f"guard.max_rollbacks must be >= 0, got {self.max_rollbacks}.")
        for name in ("lr_factor", "clip_factor"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"guard.{name} must be in (0, 1], got {getattr(self, name)}.")


@dataclass(frozen=True)
class CurriculumConfig:
    schedule: str = _key("none", "how difficulty (sequence length) grows", SCHEDULES)
    start: int = _key(10, "difficulty (length) the curriculum starts at")
    warmup_steps: int = _key(1000, "linear, root, competence: steps until the target")
    round_to: int = _key(10, "levels are multiples of this (fewer distinct shapes)")
    every: int = _key(500, "step: steps between two raises")
    increment: int = _key(10, "step, naive, combined: how much one raise adds")
    competence_start: float = _key(0.1, "competence: initial competence c0 in (0, 1]")
    power: int = _key(2, "competence: 1 = linear, 2 = square-root growth")
    threshold: float = _key(
        0.0, "naive, combined: raise when val_loss_level <= this (0 = patience only)")
    patience: int = _key(
        3, "naive, combined: raise after this many validations without improvement (0 = off)")
    mix_fraction: float = _key(0.25, "combined: share of every batch drawn from mixed")
    difficulty: str = _key(
        "length", "parquet task: integer column that orders rows by difficulty, or 'length'")

    def __post_init__(self) -> None:
        _positive(self, "start", "warmup_steps", "round_to", "every", "increment")
        if not 0.0 < self.competence_start <= 1.0:
            raise ConfigError("curriculum.competence_start must be in (0, 1], "
                              f"got {self.competence_start}.")
        if self.power not in (1, 2):
            raise ConfigError(f"curriculum.power must be 1 or 2, got {self.power}.")
        if not 0.0 <= self.mix_fraction <= 1.0:
            raise ConfigError(f"curriculum.mix_fraction must be in [0, 1], "
                              f"got {self.mix_fraction}.")
        if self.threshold < 0 or self.patience < 0:
            raise ConfigError("curriculum.threshold and curriculum.patience must be >= 0.")
        if self.schedule in PROGRESS_DRIVEN and not (self.threshold or self.patience):
            raise ConfigError(
                f"curriculum.schedule={self.schedule} raises the level on progress, but "
                "curriculum.threshold and curriculum.patience are both 0: set one of them."
            )


@dataclass(frozen=True)
class InitConfig:
    from_: str = _key(
        "", "start from a trained model: models:/name/version, models:/name@alias, "
        "runs:/<run id>/model, or a checkpoint directory; weights that match by name and "
        "shape are loaded, the rest is new (empty = from scratch)", name="from")
    freeze: str = _key(
        "", "parameter name patterns kept frozen all run (fnmatch, e.g. rnn.*_l0 or rnn.*)",
        list=True)
    unfreeze_every: int = _key(
        0, "gradual unfreezing (ULMFiT): the head trains alone first, then every this many "
        "steps the next recurrent layer down joins (0 = everything trains from the start)")
    lr_decay: float = _key(
        1.0, "discriminative learning rates: each layer below the head trains at the rate "
        "of the layer above divided by this (1 = one rate for all)")

    def patterns(self) -> tuple[str, ...]:
        return _items(self.freeze)

    def __post_init__(self) -> None:
        if self.unfreeze_every < 0:
            raise ConfigError(f"init.unfreeze_every must be >= 0 (0 = off), got "
                              f"{self.unfreeze_every}.")
        if self.lr_decay < 1:
            raise ConfigError(f"init.lr_decay must be >= 1 (1 = one rate for all layers), "
                              f"got {self.lr_decay}.")


@dataclass(frozen=True)
class DiagnosticsConfig:
    every: int = _key(
        0, "steps between gradient diagnostics on rank 0: per-layer and through-time gradient "
        "norms, gate saturation, the heatmap artifact (0 = off, at no cost)")
    rows: int = _key(8, "rows of the current batch the unrolled diagnostic pass runs on")

    def __post_init__(self) -> None:
        _positive(self, "rows")
        if self.every < 0:
            raise ConfigError(f"diagnostics.every must be >= 0 (0 = off), got {self.every}.")


@dataclass(frozen=True)
class ScalingConfig:
    num_workers: int = _key(2, "Ray Train workers, one model replica each (DDP when > 1)")
    min_workers: int = _key(
        0, "elastic training: start with as few as this many workers when the cluster has "
        "no room for num_workers, and grow to num_workers as room appears (0 = fixed)")
    resize_every_s: float = _key(
        60.0, "how often an elastic run looks for room to grow (seconds)")
    use_gpu: bool = _key(False, "one GPU per worker")
    cpus_per_worker: float = _key(
        0.0, "CPUs reserved per worker; 0 = share the cluster's CPUs, leaving one for data"
    )

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            # Ray Train's local mode (num_workers=0) keeps no checkpoints in Ray 2.60: a
            # run there could neither resume nor log its model.
            raise ConfigError(f"scaling.num_workers must be >= 1 (one Ray Train worker "
                              f"process per model replica), got {self.num_workers}.")
        if not 0 <= self.min_workers <= self.num_workers:
            raise ConfigError(
                f"scaling.min_workers must be between 0 (a fixed number of workers) and "
                f"scaling.num_workers={self.num_workers}, got {self.min_workers}.")
        _positive(self, "resize_every_s")
        if self.cpus_per_worker < 0:
            raise ConfigError("scaling.cpus_per_worker must be >= 0.")

    @property
    def elastic(self) -> bool:
        """Whether the worker group may run with fewer than num_workers workers."""
        return 0 < self.min_workers < self.num_workers

    def describe_workers(self) -> str:
        """The worker count as a user reads it: "2 workers", or "1-4 workers" elastic."""
        low = f"{self.min_workers}-" if self.elastic else ""
        return f"{low}{self.num_workers} workers"


@dataclass(frozen=True)
class RunConfig:
    name: str = _key("", "run name; starting a run with an existing name resumes it (empty = new)")
    storage_path: str = _key("runs", "where checkpoints go (local dir, or s3://, gs://, NFS)")
    max_failures: int = _key(0, "worker-group failures to recover from the latest checkpoint")

    def __post_init__(self) -> None:
        if self.max_failures < -1:
            raise ConfigError("run.max_failures must be >= -1 (-1 retries forever).")


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = _key("rnn-orch", "MLflow experiment name")
    uri: str = _key("", "MLflow tracking URI; empty = $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")


@dataclass(frozen=True)
class Config:
    seed: int = _key(0, "one seed; every rank derives its own from it")
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    init: InitConfig = field(default_factory=InitConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if self.train.precision == "fp16" and not self.scaling.use_gpu:
            raise ConfigError(
                "train.precision=fp16 needs scaling.use_gpu=true: float16 autocast with loss "
                "scaling is for GPUs; on CPUs use train.precision=bf16."
            )
        self._check_curriculum()

    def _check_curriculum(self) -> None:
        curriculum = self.curriculum
        if curriculum.schedule == "none":
            return
        if self.task.name in ("timeseries", "text"):
            raise ConfigError(
                f"curriculum.schedule is {curriculum.schedule!r}, but forecasting windows "
                "and chunks of text (task.name=timeseries or text) all have the same "
                "length; use curriculum.schedule=none.")
        if self.task.name == "parquet":
            return  # the data's difficulty range is checked against it when it is read
        if curriculum.difficulty != "length":
            raise ConfigError(
                f"curriculum.difficulty is {curriculum.difficulty!r}, but synthetic tasks "
                f"(task.name={self.task.name}) only know 'length'; a difficulty column is for "
                "task.name=parquet."
            )
        if self.task.name == "adding" and curriculum.start < 2:
            raise ConfigError(f"curriculum.start must be >= 2 for the adding task (one "
                              f"marker in each half), got {curriculum.start}.")
        if not curriculum.start <= self.task.seq_len:
            raise ConfigError(
                f"curriculum.start ({curriculum.start}) must be <= task.seq_len "
                f"({self.task.seq_len}), the target difficulty."
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        return _build(cls, data, prefix="")

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """`{"model.cell": "lstm", ...}`: the form MLflow params and overrides use."""
        return dict(_flatten(self.to_dict()))


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML file, apply `key=value` overrides, validate everything."""
    data = read_yaml_mapping(Path(path), "config file", "sections")
    for item in overrides:
        _set_dotted(data, *_parse_override(item))
    return Config.from_dict(data)


def read_yaml_mapping(path: Path, kind: str, holds: str,
                      error: type[ConfigError] = ConfigError) -> dict:
    """The mapping a YAML file holds; `error` names the file as a `kind` otherwise."""
    if not path.is_file():
        raise error(f"{kind} {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise error(f"{kind} {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{kind} {path} must hold a mapping of {holds}, not {data!r}.")
    return data


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    return with_values(config, dict(_parse_override(item) for item in overrides))


def with_values(config: Config, values: dict[str, Any]) -> Config:
    """`config` with dotted keys set to plain values (`{"model.cell": "gru"}`), validated."""
    data = config.to_dict()
    for key, value in values.items():
        _set_dotted(data, key, value)
    return Config.from_dict(data)


def key_names() -> tuple[str, ...]:
    """Every dotted config key, in `--help` order."""
    return tuple(key for key, _, _ in describe_keys())


def describe_keys() -> list[tuple[str, str, str]]:
    """(dotted key, default, meaning) for every key: the body of `--help`."""
    rows = []
    for section in dataclasses.fields(Config):
        if dataclasses.is_dataclass(section.default_factory):
            for f in dataclasses.fields(section.default_factory):
                rows.append((f"{section.name}.{_name(f)}", repr(f.default), _meaning(f)))
        else:
            rows.append((section.name, repr(section.default), _meaning(section)))
    return rows


def _meaning(f: dataclasses.Field) -> str:
    choices = f.metadata.get("choices")
    suffix = f" ({' | '.join(choices)})" if choices else ""
    return f.metadata["help"] + suffix


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like section.key=value.")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set_dotted(data: dict, key: str, value: Any) -> None:
    *sections, leaf = key.split(".")
    node = data
    for name in sections:
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {name} is not a section.")
    node[leaf] = value


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys, got {data!r}.")
    fields = {_name(f): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, fields, n=1)
        hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
        raise ConfigError(
            f"unknown key '{prefix}{name}' in {where}.{hint} "
            f"Valid keys there: {', '.join(prefix + f for f in fields)}."
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        kind = hints[fields[name].name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, value, f"{prefix}{name}.")
        else:
            values[fields[name].name] = _coerce(f"{prefix}{name}", value, kind, fields[name])
    return cls(**values)


def _as_dict(obj: Any) -> dict[str, Any]:
    """`dataclasses.asdict` with the YAML key names (see `_key`)."""
    return {_name(f): (_as_dict(value) if dataclasses.is_dataclass(value := getattr(obj, f.name))
                       else value)
            for f in dataclasses.fields(obj)}


def _coerce(key: str, value: Any, kind: type, f: dataclasses.Field) -> Any:
    """Check one value's type (ints may stand for floats) and its accepted set."""
    if isinstance(kind, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if kind is float and isinstance(value, str):
        value = _float_or_text(value)  # YAML 1.1 reads `1e-3` (no dot) as text
    if kind is str and isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)  # run.name=2024 means the text "2024"
    if kind is str and isinstance(value, list) and f.metadata.get("list"):
        value = ", ".join(str(item) for item in value)  # task.targets: [pm, temp]
    ok = (
        (kind is bool and isinstance(value, bool))
        or (kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (kind is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (kind is str and isinstance(value, str))
    )
    if kind is float and ok and not math.isfinite(value):
        ok = False
    if not ok:
        expected = {bool: "true or false", int: "an integer", float: "a finite number",
                    str: "a text"}[kind]
        raise ConfigError(f"{key} must be {expected}, got {value!r}.")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{key} is {value!r}, which is not one of: {', '.join(choices)}.{hint}")
    return float(value) if kind is float else value


def _float_or_text(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def _positive(section: Any, *names: str) -> None:
    prefix = _SECTION_NAMES[type(section)]
    for name in names:
        value = getattr(section, name)
        if value <= 0:
            raise ConfigError(f"{prefix}.{name} must be > 0, got {value}.")


def _flatten(data: dict, prefix: str = ""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


_SECTION_NAMES = {
    f.default_factory: f.name
    for f in dataclasses.fields(Config)
    if dataclasses.is_dataclass(f.default_factory)
}
