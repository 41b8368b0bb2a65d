"""One trial of a sweep: a Ray Tune function trainable that trains with Ray Train.

    Tuner(run_trial) -> run_trial(params) -> TorchTrainer(train_loop_per_worker).fit()

With FIFO or ASHA a trial is one `fit()`: Ray Train's reports (one per validation; a
run outside a sweep reports only its checkpoints) reach Tune through
`TuneReportCallback`, and ASHA can stop the trial at any of them.

Population-based training needs more. Tune can only hand a trial the weights of a
better one if that trial reported a checkpoint to Tune itself, which Train inside Tune
never does. So under PBT a trial trains one perturbation interval per `fit()`, then
reports the Train checkpoint to Tune with `ray.tune.report`. When PBT has a trial copy
a better one, Tune restarts the trial with new values and the other trial's checkpoint
(`ray.tune.get_checkpoint()`); the next `fit()` starts from those weights.

Each trial writes to its own MLflow run under the sweep's parent run; a trial that starts
while the tracking server is away trains all the same, and its run is created once the
server is back (`open_trial_run`). A trial's Train
run is named from the trial id (never a timestamp), so a restarted trial resumes; under
PBT a restarted trial resumes from its last checkpoint reported to Tune instead.
"""

from __future__ import annotations

import json
import logging
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from orchestrator import checkpoints, driver, tracking
from orchestrator.config import Config, with_values
from orchestrator.metric_logger import MetricLogger
from orchestrator.spool import Spool, spool_directory

log = logging.getLogger(__name__)

ORIGIN_FILE = "origin.json"  # in a checkpoint reported to Tune: which trial made it, when


@dataclass(frozen=True)
class SweepContext:
    """What every trial of one sweep shares, as plain values."""

    name: str
    base: dict[str, Any]  # the resolved experiment config
    parent_run_id: str
    storage_path: str  # where the trials' Train runs keep their checkpoints
    pbt_interval: int  # steps per fit() under PBT; 0 = the whole run in one fit()
    mutated: tuple[str, ...]  # keys PBT perturbs: logged as metrics, params are immutable


def run_trial(params: dict[str, Any], context: SweepContext) -> None:
    """The trainable: `params` are this trial's values of the searched keys.

    It only trains. A scheduler may stop it at any report, the last one included, so the
    sweep driver, not the trial, logs each completed trial's model and closes its run.
    """
    tracking.fail_fast_http()  # this process's own: Ray started it before the sweep set it
    trial_id = tune.get_context().get_trial_id()
    config = trial_config(context, params, trial_id)
    info = driver.task_info(config)
    transfer = driver.plan_transfer(config, info)
    run_id = open_trial_run(config, {
        tracking.PARENT_TAG: context.parent_run_id, tracking.TRIAL_TAG: trial_id,
        **(tracking.lineage(config.tracking.uri, transfer.origin) if transfer else {})})
    loop_config = driver.make_loop_config(config, info, driver.data_difficulty(config), run_id,
                                          init_weights=transfer.weights if transfer else None,
                                          report_validations=not context.pbt_interval)
    try:
        if context.pbt_interval:
            train_in_intervals(config, loop_config, context, trial_id)
        else:
            driver.make_trainer(config, loop_config, verbose=False,
                                callbacks=[TuneReportCallback()]).fit()
    except ray.train.TrainingFailedError as exc:
        raise driver.failure(exc) from None


def open_trial_run(config: Config, tags: dict[str, str]) -> str:
    """The trial's MLflow run id; "" when the tracking server is away, with the run kept in
    the trial's spool to be created once the server is back (`Spool.keep_opening`): a
    trial never fails or waits for want of a server."""
    uri = config.tracking.uri
    arguments = (uri, config.tracking.experiment, config.run.name, config.flat(),
                 config.to_yaml(), tags)
    try:
        run_id, _, _ = tracking.open_run(*arguments)
    except Exception as error:
        if not tracking.server_lost(uri, error):
            raise
        spool = Spool(spool_directory(config.run.storage_path, config.run.name))
        spool.keep_opening(*arguments)
        log.warning("MLflow at %s cannot be reached (%s). Trial %s trains all the same; its "
                    "run is created when the server is back, with what it kept in %s.",
                    uri, tracking.first_line(error)[:200], config.run.name, spool.directory)
        return ""
    return run_id


def trial_config(context: SweepContext, params: dict[str, Any], trial_id: str) -> Config:
    base = Config.from_dict(context.base)
    values = {key: plain(value) for key, value in params.items()}
    return with_values(base, {**values, "run.name": f"{context.name}-{trial_id}",
                              "run.storage_path": context.storage_path})


def plain(value: Any) -> Any:
    """Tune may draw numpy scalars; the config accepts Python's own numbers."""
    return value.item() if hasattr(value, "item") else value


def train_in_intervals(config: Config, loop_config: dict, context: SweepContext,
                       trial_id: str) -> None:
    """Train to the end one perturbation interval at a time, reporting each interval's
    checkpoint to Tune; start from the checkpoint Tune hands back (this trial's own after
    a restart, a better trial's after an exploit)."""
    logger = MetricLogger(config.tracking.uri, loop_config["run_id"], loop_config["spool_dir"])
    init = tune.get_checkpoint()
    origin = read_origin(init) if init else None
    step = origin["step"] if origin else 0
    if origin and origin["trial"] != trial_id:
        with init.as_directory() as directory:
            weights = checkpoints.weights_digest(directory)
        logger.tag(f"pbt.exploit.{step:08d}",
                   f"copied trial {origin['trial']} at step {step} (weights {weights})")
        logger.log(step, {"pbt_exploit": 1.0})
    logger.log(step, {f"pbt.{key}": float(config.flat()[key]) for key in context.mutated})
    logger.flush()
    source = f"{origin['trial']}-{step}" if origin else "start"
    copied = bool(origin) and origin["trial"] != trial_id
    while step < config.train.steps:  # a trial restarted at its last step has no work left
        end = min((step // context.pbt_interval + 1) * context.pbt_interval, config.train.steps)
        # A new Train run for each interval, never resumed by name: a trial that Tune
        # pauses, copies into or restarts begins again from the checkpoint Tune hands it,
        # and an abandoned attempt at the same interval must not be taken for progress.
        leg = with_values(config, {
            "train.steps": end,
            "run.name": f"{config.run.name}-from-{source}-{uuid.uuid4().hex[:8]}",
        })
        result = driver.make_trainer(
            leg, {**loop_config, "config": leg.to_dict(), "init_checkpoint": init,
                  "init_copied": copied},
            verbose=False,
        ).fit()
        step, init, source, copied = end, result.checkpoint, f"{trial_id}-{end}", False
        report_to_tune(result, trial_id, end, done=end >= config.train.steps)


def report_to_tune(result: ray.train.Result, trial_id: str, step: int, done: bool) -> None:
    """Hand Tune the interval's checkpoint, marked with the trial and step that made it.

    The last report says `done`: Tune then ends the trial without asking PBT, which would
    otherwise copy weights into a trial that has no steps left to train them.
    """
    with tempfile.TemporaryDirectory() as directory:
        result.checkpoint.to_directory(directory)
        (Path(directory) / ORIGIN_FILE).write_text(json.dumps({"trial": trial_id, "step": step}))
        tune.report({**result.metrics, "done": done},
                    checkpoint=tune.Checkpoint.from_directory(directory))


def read_origin(checkpoint: tune.Checkpoint) -> dict[str, Any]:
    with checkpoint.as_directory() as directory:
        return json.loads((Path(directory) / ORIGIN_FILE).read_text())
