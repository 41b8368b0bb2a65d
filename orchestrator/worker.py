"""The training loop that runs on every Ray Train worker.

It reads like a recipe:

    restore -> build -> for each step: level -> batch -> forward -> loss -> backward
                                       -> (diagnose) -> clip -> guard
                                       -> step (or skip, or roll back)
                                       -> record -> (validate -> curriculum -> checkpoint)

Everything here is plain PyTorch except the lines marked `# [ray]`. The driver
(`orchestrator.driver`) starts it with `TorchTrainer(train_loop_per_worker, ...)`.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ray.train  # [ray]
import ray.train.torch  # [ray]
import torch
import torch.distributed as dist

from models import ModelSpec, build_model
from models.custom_cells import CustomRecurrent
from models.process_group import distributed
from orchestrator import checkpoints, objectives
from orchestrator.clipping import Clipper
from orchestrator.config import Config
from orchestrator.curriculum import Curriculum, Plan
from orchestrator.diagnostics import Diagnostics
from orchestrator.forecasting import ForecastObjective
from orchestrator.guard import DivergenceGuard, Verdict
from orchestrator.language_model import CarriedState, TextObjective, sample
from orchestrator.metric_logger import MetricLogger
from orchestrator.optimizers import build_optimizer
from orchestrator.precision import Precision
from orchestrator.progress import ProgressPoster
from orchestrator.training_step import (
    Place,
    clip_gradients,
    forward_backward,
    judge,
    predict,
    read_figures,
    to_device,
    unwrap,
)
from orchestrator.transfer import Freezer, param_groups
from pipelines.parquet import TaskInfo
from pipelines.ray_datasets import PaddingCollate, WindowCollate
from pipelines.sources import ShardBatches, SyntheticBatches, resized
from pipelines.synthetic import make_task, rng_for
from pipelines.text import DESCRIPTION_FILE, TextBatches, TextLayout, Vocabulary, bits
from pipelines.timeseries import ForecastLayout
from pipelines.windows import LAYOUT_FILE, WindowBatches

CLIP_RATE_WINDOW = 100  # clip_rate = fraction of the last 100 steps that were clipped
SAMPLES = 3  # a language model's text samples at each checkpoint
SAMPLE_LENGTH = 300
PRIME_LENGTH = 40


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point. `loop_config` holds plain values: the resolved config, the
    task's shape, the difficulty percentiles of Parquet data (for a curriculum), the
    prepared forecasting data or text (or None), the MLflow run to write to, and the
    progress board (or None)."""
    config = Config.from_dict(loop_config["config"])
    info = TaskInfo(**loop_config["task"])
    forecast, text = loop_config.get("forecast"), loop_config.get("text")
    layout = ForecastLayout.from_json(forecast["layout"]) if forecast else None
    objective = (ForecastObjective(layout) if layout else TextObjective() if text
                 else objectives.of(info.kind, info.output_size))
    context = ray.train.get_context()  # [ray]
    place = Place(context.get_world_rank(), context.get_world_size(),
                  ray.train.torch.get_device())  # [ray]
    spec = model_spec(config, info)

    state, own = restored_state(loop_config.get("init_checkpoint"))
    model, optimizer = build_model_and_optimizer(config, spec, state, place,
                                                 loop_config.get("init_weights"))
    freezer = Freezer(unwrap(model), config.init.patterns(), config.init.unfreeze_every)
    restore_rng(config.seed, state, place)
    curriculum = make_curriculum(config, state, loop_config["difficulty_quantiles"])
    clipper = make_clipper(config, state)
    if state and not own and loop_config.get("init_copied", True):
        adopt_hyperparameters(config, optimizer, clipper)
    guard = make_guard(config, state)
    precision = make_precision(config, state, place)
    batches = make_batches(config, info, place, forecast, layout, text, state,
                           loop_config["train_bytes"])
    carried = make_carried_state(text, state, place)
    recorder = Recorder(loop_config, place, optimizer) if place.rank == 0 else None
    diagnostics = make_diagnostics(config, objective, state, place)

    step = state["step"] if state else 0
    snapshot = take_snapshot(step, model, optimizer) if guard else None
    level = curriculum.level
    if recorder:
        recorder.started(step, place.world, resumed=own,
                         time_loop=time_loop(model, place, precision))
    while step < config.train.steps:
        step += 1
        level, previous = curriculum.at_step(step), level
        if guard and level != previous:
            guard.forget_losses()
        batch = batches.train_batch(step, curriculum)
        figures = forward_backward(model, optimizer, batch, precision, objective, place,
                                   carried)
        if freezer.active:
            freezer.drop_gradients(unwrap(model), step)
        if diagnostics and diagnostics.due(step):  # rank 0 only; before clipping
            recorder.diagnostics(step, diagnostics.measure(step, unwrap(model), batch))
        figures = read_figures(figures | clip_gradients(model, clipper) | precision.figures())
        verdict = judge(guard, precision, figures)
        if verdict and verdict.cause:
            action = recover(verdict, model, optimizer, clipper, snapshot, config)
            precision.skip()
            if recorder:
                recorder.incident(step, verdict.cause, action, guard)
        else:
            precision.step(optimizer)
            if guard and step % config.guard.snapshot_every == 0:
                snapshot = take_snapshot(step, model, optimizer)
        figures["curriculum_level"] = float(level)
        if recorder:
            recorder.step(step, figures)
        if step % config.train.eval_every == 0 or step == config.train.steps:
            checkpointing = step % config.train.checkpoint_every == 0 or step == config.train.steps
            reporting = checkpointing or loop_config["report_validations"]  # see `report`
            validation = validate(model, batches.validation_batches(), objective, place,
                                  carries_state=carried is not None)
            validation |= advance_curriculum(curriculum, model, batches, objective, place)
            if recorder:
                recorder.validation(step, validation, send_now=reporting)
            parts = None
            if checkpointing:
                if diagnostics and diagnostics.steps:
                    recorder.diagnostic_files(diagnostics)
                parts = {"curriculum": curriculum.state_dict(), "clip": clipper.state_dict(),
                         "guard": guard.state_dict() if guard else {},
                         "precision": precision.state_dict(),
                         "diagnostics": diagnostics.state_dict() if diagnostics else {},
                         "carried": gather_carried(carried, place),
                         "data": batches.position() if isinstance(batches, ShardBatches)
                         else {}}
                if recorder and text:
                    recorder.samples(step, unwrap(model), batches.vocab,
                                     batches.prime(PRIME_LENGTH), config.seed)
            if reporting:
                report(step, {**figures, **validation}, model, optimizer, spec, parts, config,
                       place, checkpoint_files(forecast, text))
            if recorder:
                recorder.reported()
    if recorder:
        recorder.close()


def model_spec(config: Config, info: TaskInfo) -> ModelSpec:
    """The model for the task; a language model embeds its vocabulary (the task's input
    size) into model.embedding_size features."""
    m = config.model
    text = config.task.name == "text"
    return ModelSpec(
        cell=m.cell, input_size=m.embedding_size if text else info.input_size,
        hidden_size=m.hidden_size, num_layers=m.num_layers, dropout=m.dropout,
        head=info.kind, output_size=info.output_size, input_dropout=m.input_dropout,
        output_dropout=m.output_dropout, variational=m.variational, weight_drop=m.weight_drop,
        vocab_size=info.input_size if text else 0,
        input_mean=tuple(info.input_mean), input_std=tuple(info.input_std),
    )


def restored_state(init_checkpoint: ray.train.Checkpoint | None,
                   ) -> tuple[dict[str, Any] | None, bool]:
    """The state to start from, and whether it is this run's own.

    A resume or a restart continues the run's own latest checkpoint exactly, learning
    rate and clip threshold included (the guard may have lowered them). Otherwise an
    `init_checkpoint` (population-based training) gives the weights, optimizer moments,
    step and curriculum. When it is a copy of a better trial (`init_copied` in the loop
    config), the config's hyperparameters win over the saved ones: they are what the copy
    was given to explore; a trial's next interval from its own checkpoint keeps them, as a
    resume does.
    """
    own = ray.train.get_checkpoint()  # [ray]
    checkpoint = own or init_checkpoint
    if checkpoint is None:
        return None, False
    with checkpoint.as_directory() as directory:  # [ray] local, or fetched from storage
        return checkpoints.load(directory), own is not None


def adopt_hyperparameters(config: Config, optimizer: torch.optim.Optimizer,
                          clipper: Clipper) -> None:
    """Put the config's learning rates (`optim.lr / init.lr_decay**depth` for the layer
    groups, top first), weight decay, momentum (for the optimizers that have one) and clip
    threshold over the restored ones."""
    for depth, group in enumerate(optimizer.param_groups):
        group["lr_scale"] = config.init.lr_decay ** -depth
        group["lr"] = config.optim.lr * group["lr_scale"]
        group["weight_decay"] = config.optim.weight_decay
        if "momentum" in group:
            group["momentum"] = config.optim.momentum
    clipper.threshold = config.clip.threshold


def build_model_and_optimizer(config: Config, spec: ModelSpec, state: dict | None,
                              place: Place, init_weights: dict[str, torch.Tensor] | None = None,
                              ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model, from a checkpoint's `state`, else with the `init.from` weights the
    driver matched (`init_weights`, the rest freshly initialised); the optimizer with one
    parameter group per layer (see `orchestrator.transfer`)."""
    torch.manual_seed(config.seed)  # same initial weights everywhere; DDP broadcasts anyway
    model = build_model(spec)
    if state:
        model.load_state_dict(state["model"])
    elif init_weights:
        model.load_state_dict(init_weights, strict=False)
    o = config.optim
    groups = param_groups(model, o.lr, config.init.lr_decay)
    model = ray.train.torch.prepare_model(model)  # [ray] device + DistributedDataParallel
    optimizer = build_optimizer(o.name, groups, o.lr, o.weight_decay, o.momentum)
    if state:
        optimizer.load_state_dict(state["optimizer"])
    return model, optimizer


def restore_rng(seed: int, state: dict | None, place: Place) -> None:
    """Put back this rank's RNG (dropout) state, or derive a fresh one from (seed, rank, step).

    Data needs no RNG state: batches are a function of (seed, rank, step).
    """
    if state and len(state["rng_states"]) == place.world:
        saved = state["rng_states"][place.rank]
        torch.set_rng_state(saved["torch"])
        if "cuda" in saved and place.device.type == "cuda":
            torch.cuda.set_rng_state(saved["cuda"], place.device)
        return
    step = state["step"] if state else 0
    torch.manual_seed(int(rng_for(seed, place.rank, step).integers(2**62)))


def make_curriculum(config: Config, state: dict | None,
                    quantiles: list[int]) -> Curriculum:
    """The run's curriculum, at the level its checkpoint left it at. Its target is the
    task's length, or for data the hardest row (the last of the difficulty `quantiles`)."""
    keys = dataclasses.asdict(config.curriculum)
    del keys["difficulty"]  # where difficulty comes from is the data source's business
    target = quantiles[-1] if quantiles else config.task.seq_len
    curriculum = Curriculum(Plan(target=target, quantiles=tuple(quantiles), **keys))
    if state:
        curriculum.load_state_dict(state["parts"]["curriculum"])
    return curriculum


def make_clipper(config: Config, state: dict | None) -> Clipper:
    """The clipping policy, with the gradient-norm history its checkpoint kept."""
    clipper = Clipper(config.clip.policy, config.clip.threshold)
    if state:
        clipper.load_state_dict(state["parts"]["clip"])
    return clipper


def make_guard(config: Config, state: dict | None) -> DivergenceGuard | None:
    """The divergence guard (None when guard.enabled is false: then it costs nothing)."""
    g = config.guard
    if not g.enabled:
        return None
    guard = DivergenceGuard(g.spike_factor, g.window, g.patience, g.max_rollbacks)
    if state and state["parts"]["guard"]:
        guard.load_state_dict(state["parts"]["guard"])
    return guard


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The last good state, in memory, that the guard rolls back to."""

    step: int
    model: dict[str, Any]
    optimizer: dict[str, Any]


def take_snapshot(step: int, model: torch.nn.Module,
                  optimizer: torch.optim.Optimizer) -> Snapshot:
    return Snapshot(step, copy.deepcopy(unwrap(model).state_dict()),
                    copy.deepcopy(optimizer.state_dict()))


def recover(verdict: Verdict, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            clipper: Clipper, snapshot: Snapshot, config: Config) -> str:
    """Skip the bad step; on a rollback verdict also restore the snapshot, lower the
    learning rate and tighten the clip threshold. Returns what was done, for the record.

    Every rank gets the same verdict from the same figures, so every rank rolls back to
    the same snapshot, and the replicas stay identical.
    """
    optimizer.zero_grad(set_to_none=True)
    if not verdict.rollback:
        return "step skipped"
    rates = [group["lr"] for group in optimizer.param_groups]
    unwrap(model).load_state_dict(snapshot.model)
    optimizer.load_state_dict(snapshot.optimizer)
    g = config.guard
    for group, rate in zip(optimizer.param_groups, rates, strict=True):
        group["lr"] = rate * g.lr_factor
    clipper.threshold *= g.clip_factor
    return (f"rolled back to step {snapshot.step}, lr x{g.lr_factor:g} "
            f"(now {rates[0] * g.lr_factor:.3g}), clip.threshold x{g.clip_factor:g}")


def make_precision(config: Config, state: dict | None, place: Place) -> Precision:
    """The run's precision, with the loss scale its checkpoint kept (fp16)."""
    precision = Precision(config.train.precision, place.device)
    if state:  # checkpoints from before train.precision existed have no "precision" part
        precision.load_state_dict(state["parts"].get("precision", {}))
    return precision


def make_diagnostics(config: Config, objective: objectives.Objective, state: dict | None,
                     place: Place) -> Diagnostics | None:
    """Rank 0's gradient diagnostics, with the heatmap rows its checkpoint kept. None on
    other ranks and when diagnostics.every is 0: then they cost nothing."""
    d = config.diagnostics
    if not d.every or place.rank != 0:
        return None
    diagnostics = Diagnostics(d.every, d.rows, config.model.cell, objective)
    if state and state["parts"].get("diagnostics"):
        diagnostics.load_state_dict(state["parts"]["diagnostics"])
    return diagnostics


def make_batches(config: Config, info: TaskInfo, place: Place, forecast: dict | None,
                 layout: ForecastLayout | None, text: dict | None, state: dict | None,
                 train_bytes: int):
    """This rank's batches; a Parquet stream continues from the position its checkpoint
    kept (the other sources derive their position from the step). `train_bytes`: what a
    Parquet training split takes as Arrow (`driver.make_loop_config`), against
    task.keep_rows_mb for this many workers."""
    if text:
        return TextBatches(text["directory"], TextLayout.from_json(text["layout"]),
                           config.train.batch_size, config.task.bptt, place.rank, place.world)
    if layout:
        return WindowBatches(forecast["directory"], layout, config.train.batch_size,
                             config.seed, place.rank, place.world)
    if config.task.name == "parquet":
        t = config.task
        return ShardBatches(
            ray.train.get_dataset_shard("train"),  # [ray]
            ray.train.get_dataset_shard("val"),  # [ray]
            config.train.batch_size,
            PaddingCollate(info.kind),
            WindowCollate(info.kind, config.train.batch_size, t.bucket_batches),
            t.shuffle_rows,
            config.seed,
            place.rank,
            position=data_position(state, place),
            keep_rows=train_bytes <= t.keep_rows_mb * 2**20 * place.world,
        )
    task = make_task(config.task.name, config.task.seq_len)
    return SyntheticBatches(task, config.seed, place.rank, place.world,
                            config.train.batch_size, config.task.val_size)


def data_position(state: dict | None, place: Place) -> dict[str, int] | None:
    """Where this rank's Parquet stream stood at the checkpoint, for a worker group of
    this size (`resized` when an elastic run changed it; the checkpoint keeps every
    rank's RNG state, one per worker)."""
    position = state["parts"].get("data") if state else None
    if position and len(state["rng_states"]) != place.world:
        return resized(position, len(state["rng_states"]), place.world)
    return position


def make_carried_state(text: dict | None, state: dict | None,
                       place: Place) -> CarriedState | None:
    """A language model's state carried between chunks, as its checkpoint left it on
    this rank (None for other tasks)."""
    if not text:
        return None
    carried = CarriedState()
    saved = state["parts"].get("carried", []) if state else []
    if len(saved) == place.world:
        carried.load(saved[place.rank], place.device)
    return carried


def checkpoint_files(forecast: dict | None, text: dict | None) -> dict[str, str]:
    """What a checkpoint keeps beside the weights to read data as the model was trained
    on it: a forecaster's layout, a language model's vocabulary."""
    if forecast:
        return {LAYOUT_FILE: forecast["layout"]}
    return {DESCRIPTION_FILE: text["layout"]} if text else {}


def advance_curriculum(curriculum: Curriculum, model: torch.nn.Module, batches,
                       objective: objectives.Objective, place: Place) -> dict[str, float]:
    """At a validation: feed a progress-driven schedule the loss at its current level
    (`val_loss_level`), then share rank 0's level with every rank.

    Every rank decides from the same inputs (the step, all-reduced losses), so the levels
    should already agree: `curriculum_level_spread`, the largest difference between the
    ranks' own decisions, is logged as the check; the broadcast makes sure they train on.
    """
    figures = {}
    if curriculum.uses_level_validation:
        level_figures = validate(model, batches.validation_batches(curriculum.level),
                                 objective, place)
        figures["val_loss_level"] = level_figures["val_loss"]
        curriculum.after_validation(figures["val_loss_level"])
    level = torch.tensor(float(curriculum.level), device=place.device)
    figures["curriculum_level_spread"] = spread_over_ranks(level)
    curriculum.level = int(from_rank0(level))
    return figures


@torch.no_grad()
def validate(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]],
             objective: objectives.Objective, place: Place,
             carries_state: bool = False, prefix: str = "val") -> dict[str, float]:
    """Validation over a whole set: each rank sums over its slice, then one all-reduce.
    A language model reads its slice in order, carrying its state from chunk to chunk.
    The figures are named `<prefix>_loss`, ...

    The unwrapped module is used: ranks may hold slices of different sizes, and a DDP
    forward could wait for collectives the other ranks never start.
    """
    module = unwrap(model)
    module.eval()
    carried = CarriedState() if carries_state else None
    sums = torch.zeros(objective.sums_width, dtype=torch.float64, device=place.device)
    for batch in batches:
        batch = to_device(batch, place.device)
        sums += objective.validation_sums(predict(module, batch, carried), batch)
    if distributed():
        dist.all_reduce(sums)
    return objective.summarize(sums, prefix)


def report(step: int, figures: dict[str, float], model: torch.nn.Module,
           optimizer: torch.optim.Optimizer, spec: ModelSpec, parts: dict[str, dict] | None,
           config: Config, place: Place, files: dict[str, str]) -> None:
    """Report a validation to Ray, with a checkpoint when `parts` (the loop helpers' states)
    are given. Every rank reports (it is a barrier); rank 0 alone writes the checkpoint.

    A report waits until Ray Train's controller has taken the one before, and the
    controller takes one each time it polls the workers (every 2 s on a cluster): a run
    that reported every validation could train no faster than one validation per poll.
    So the loop reports at checkpoints, and at the validations between them only where
    somebody reads them (a sweep's scheduler, `loop_config["report_validations"]`); Ray
    Train keeps no report without a checkpoint anyway.
    """
    metrics = {key: figures[key] for key in figures if key not in ("clipped", "tokens")}
    rng_states = gather_rng_states(place) if parts is not None else []
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if place.rank == 0 and parts is not None:
            checkpoints.save(directory, model=unwrap(model), optimizer=optimizer, step=step,
                             spec=spec, rng_states=rng_states, parts=parts,
                             config_yaml=config.to_yaml(), files=files)
            checkpoint = ray.train.Checkpoint.from_directory(directory)  # [ray]
        ray.train.report(  # [ray]
            {**metrics, "step": step}, checkpoint=checkpoint,
            checkpoint_dir_name=f"checkpoint_{step:08d}",
        )


def time_loop(model: torch.nn.Module, place: Place, precision: Precision) -> str | None:
    """How a normalized cell's layers step through time in this run: ``compiled`` (the
    CPU kernels of ``models.compiled_loops``) or ``python``; None for torch's fused
    cells, whose time loop is torch's own."""
    rnn = getattr(unwrap(model), "rnn", None)
    if not isinstance(rnn, CustomRecurrent):
        return None
    with precision.autocast():
        return rnn.time_loop(torch.empty(0, device=place.device))


class Recorder:
    """Rank 0's per-step bookkeeping: derived figures, MLflow metrics, the progress line."""

    def __init__(self, loop_config: dict[str, Any], place: Place,
                 optimizer: torch.optim.Optimizer):
        board = loop_config.get("board")
        self._progress = ProgressPoster(board) if board is not None else None
        self._logger = MetricLogger(loop_config["tracking_uri"], loop_config["run_id"],
                                    loop_config["spool_dir"],
                                    notify=self._progress.note if self._progress else None)
        self._optimizer = optimizer
        self._clipped = deque(maxlen=CLIP_RATE_WINDOW)
        self._last_time = time.perf_counter()
        self._logged_through = 0  # steps up to this one are in MLflow already (`resumed`)
        self._language_model = loop_config.get("text") is not None  # also logs train_bpc

    def step(self, step: int, figures: dict[str, float]) -> None:
        now = time.perf_counter()
        self._clipped.append(figures["clipped"])
        metrics = {
            "train_loss": figures["train_loss"],
            "grad_norm": figures["grad_norm"],
            "grad_norm_clipped": figures["grad_norm_clipped"],
            "clip_rate": sum(self._clipped) / len(self._clipped),
            "lr": self._optimizer.param_groups[0]["lr"],
            "tokens_per_s": figures["tokens"] / max(now - self._last_time, 1e-9),
            "curriculum_level": figures["curriculum_level"],
            "padding_efficiency": figures["padding_efficiency"],
        }
        for optional in ("clip_threshold", "loss_scale"):
            if optional in figures:
                metrics[optional] = figures[optional]
        if self._language_model:
            metrics["train_bpc"] = bits(figures["train_loss"])
        self._last_time = now
        self._log(step, metrics)
        if self._progress:
            self._progress.post({"step": step, **metrics})

    def diagnostics(self, step: int, figures: dict[str, float]) -> None:
        self._log(step, figures)

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        if step > self._logged_through:
            self._logger.log(step, metrics)

    def diagnostic_files(self, diagnostics: Diagnostics) -> None:
        """Redraw the gradient-through-time heatmap and its matrix; upload both under
        `diagnostics/`, replacing the previous drawing."""
        with tempfile.TemporaryDirectory() as directory:
            diagnostics.save(Path(directory))
            self._logger.log_artifacts(directory, "diagnostics")

    def samples(self, step: int, model: torch.nn.Module, vocab: Vocabulary, prime: str,
                seed: int) -> None:
        """A few samples of the model's text after `prime`, as `samples/step_<step>.txt`.
        Drawn with their own generator, seeded by the step, so training's random streams
        are untouched."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        drawn = [sample(model, vocab, prime, SAMPLE_LENGTH, 1.0, generator)
                 for _ in range(SAMPLES)]
        with tempfile.TemporaryDirectory() as directory:
            (Path(directory) / f"step_{step:08d}.txt").write_text("".join(
                f"--- sample {number}, temperature 1, primed with the start of the "
                f"validation text ---\n{prime}{drawing}\n\n"
                for number, drawing in enumerate(drawn, 1)))
            self._logger.log_artifacts(directory, "samples")

    def started(self, step: int, workers: int, resumed: bool, time_loop: str | None) -> None:
        """Every attempt logs its worker count (`workers`: an elastic run's resizes show
        as its changes); a resume or a restart also logs the step it restarted at; a
        normalized cell tags how it steps through time (`model.time_loop`).

        The attempt that stopped had logged steps past its last checkpoint. They are
        trained again but not logged again, so MLflow keeps one value per step."""
        if time_loop:
            self._logger.tag("model.time_loop", time_loop)
        figures = {"workers": float(workers)}
        if resumed:
            self._logged_through = self._logger.last_step("train_loss")
            figures["resumed_from_step"] = step
        self._logger.log(step, figures)

    def incident(self, step: int, cause: str, action: str, guard: DivergenceGuard) -> None:
        """A bad step: counts as metrics, the story as a tag, a line on the console."""
        self._log(step, {"guard_skipped_steps": guard.skipped,
                         "guard_rollbacks": guard.rollbacks})
        self._logger.tag(f"guard.incident.{step:08d}", f"{cause}: {action}")
        if self._progress:
            self._progress.note(f"step {step}: {cause}: {action}")

    def validation(self, step: int, figures: dict[str, float], send_now: bool) -> None:
        """The learning rate of each layer (`lr/<layer>`) goes with the figures. `send_now`
        before a report: a sweep's scheduler may stop the trial right after it, and a
        resumed run logs from its checkpoint's step on, so what came before must be in
        MLflow. Otherwise the figures go with the next batch, and training does not wait
        for the store."""
        rates = {f"lr/{group['layer']}": group["lr"] for group in self._optimizer.param_groups}
        self._log(step, {**figures, **rates})
        if send_now:
            self._logger.flush()
        if self._progress:
            self._progress.post({"step": step, "val_step": step, **figures}, force=True)

    def reported(self) -> None:
        """Validation, the checkpoint and the report are not training: the next step's
        `tokens_per_s` counts from here."""
        self._last_time = time.perf_counter()

    def close(self) -> None:
        self._logger.flush()


def gather_carried(carried: CarriedState | None, place: Place) -> list:
    """Every rank's carried state, for rank 0's checkpoint (empty for other tasks)."""
    if carried is None:
        return []
    return gather_from_ranks(carried.to_cpu(), place)


def gather_from_ranks(value: Any, place: Place) -> list:
    if not distributed():
        return [value]
    values: list[Any] = [None] * place.world
    dist.all_gather_object(values, value)
    return values


def gather_rng_states(place: Place) -> list[dict[str, torch.Tensor]]:
    state = {"torch": torch.get_rng_state()}
    if place.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(place.device)
    return gather_from_ranks(state, place)


def spread_over_ranks(value: torch.Tensor) -> float:
    """max - min of a scalar over the ranks."""
    if not distributed():
        return 0.0
    high, low = value.clone(), -value.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MAX)
    return (high + low).item()


def from_rank0(value: torch.Tensor) -> float:
    if distributed():
        value = value.clone()
        dist.broadcast(value, src=0)
    return value.item()


