"""Run one experiment on Ray Train: the driver side of `rnn-orch train`.

    rnn-orch train configs/adding.yaml                     # laptop: starts a local Ray
    ray job submit --working-dir . -- rnn-orch train ...   # cluster: joins it

The driver checks the data, opens the MLflow run, starts `TorchTrainer` with the worker
loop of `orchestrator.worker`, shows progress, and afterwards logs the final model and
the best checkpoint to MLflow. Starting a run again under the same `run.name` resumes it
from its latest checkpoint, in the same MLflow run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import ray
import ray.data
import ray.train
import torch
from ray.train.torch import TorchTrainer

from models import build_model
from orchestrator import (
    allocator,
    checkpoints,
    classification,
    objectives,
    shared_storage,
    tracking,
)
from orchestrator.config import Config, load_config
from orchestrator.forecast_plot import plot_test_forecasts
from orchestrator.forecaster import Forecaster
from orchestrator.language_model import TextObjective
from orchestrator.progress import ProgressPrinter, board_on_this_node
from orchestrator.spool import SPOOL_DIR, Spool, spool_directory
from orchestrator.training_step import Place
from orchestrator.transfer import Freezer, TransferPlan, load_source
from orchestrator.transfer import plan as transfer_plan
from orchestrator.worker import model_spec, train_loop_per_worker, validate
from pipelines.errors import DataError
from pipelines.labelled_sequences import read_classes
from pipelines.parquet import (
    TaskInfo,
    arrow_bytes,
    channel_statistics,
    difficulty_quantiles,
    read_task_info,
)
from pipelines.ray_datasets import read_split
from pipelines.synthetic import make_task
from pipelines.tables import filesystem_of, parquet_shards, read_table
from pipelines.text import (
    DESCRIPTION_FILE,
    EVAL_STREAMS,
    TextLayout,
    chunks_per_epoch,
    encode_corpus,
    in_chunks,
    read_description,
)
from pipelines.text import read_share as read_text_share
from pipelines.text import write_prepared as write_prepared_text
from pipelines.timeseries import ForecastLayout, SeriesOptions, merge_layouts, prepare
from pipelines.windows import (
    Windows,
    discard_prepared,
    read_layout,
    read_share,
    write_layout,
    write_prepared,
)

PREPARED_DIR = "prepared_data"  # inside the run's directory, beside its checkpoints
TRANSFER_REPORT = "transfer_report.md"  # in the MLflow run: what init.from gave the model
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"  # read by Ray Train's controller
HEALTH_CHECK_INTERVAL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # how often it polls its workers


class TrainingFailed(RuntimeError):
    """Training itself failed (not the input); the message is the worker's error."""


@dataclass(frozen=True)
class Outcome:
    run_name: str
    run_id: str
    experiment_id: str
    resumed: bool
    final: dict[str, float]  # metrics that came with the last checkpoint
    baseline: float | None
    run_path: str  # where Ray keeps the run's checkpoints
    best_checkpoint: str | None
    seconds: float
    model_uri: str  # the logged model (runs:/...)


def resolve(config: Config, environ: dict[str, str]) -> Config:
    """Fill in what a config may leave open: the run name, absolute paths (Ray's workers
    and read tasks do not run in the driver's working directory), the MLflow URI.

    The resolved config is what gets saved with the run, so a resume sees the same values.
    """
    run_name = config.run.name or time.strftime(
        f"{config.task.name}-{config.model.cell}-%Y%m%d-%H%M%S"
    )
    return dataclasses.replace(
        config,
        task=dataclasses.replace(config.task, path=_absolute(config.task.path)),
        run=dataclasses.replace(config.run, name=run_name,
                                storage_path=_absolute(config.run.storage_path)),
        tracking=dataclasses.replace(
            config.tracking, uri=tracking.resolve_uri(config.tracking.uri, environ)
        ),
    )


def _absolute(path: str) -> str:
    """A local path made absolute; URIs (s3://, gs://) and "" stay as they are."""
    return str(Path(path).resolve()) if path and "://" not in path else path


def task_info(config: Config, layout: ForecastLayout | None = None,
              text: TextLayout | None = None) -> TaskInfo:
    """The task's shape (input/output sizes, kind, baseline), checking user data up front.
    A language model's baseline is the unigram model's validation loss; Parquet data with
    `task.normalize_channels` brings its training split's channel statistics."""
    if layout:
        return TaskInfo("regression", len(layout.features), layout.output_size)
    if text:
        return TaskInfo("per_step", text.vocab.size, text.vocab.size,
                        text.references["val_bpc_unigram"] * math.log(2))
    if config.task.name == "parquet":
        root = Path(config.task.path)
        info = read_task_info(root / "train", config.task.num_classes or None)
        read_task_info(root / "val", config.task.num_classes or None)
        if config.task.normalize_channels:
            mean, std = channel_statistics(root / "train")
            info = dataclasses.replace(info, input_mean=mean, input_std=std)
        return info
    return TaskInfo.of(make_task(config.task.name, config.task.seq_len))


def data_difficulty(config: Config) -> list[int]:
    """For a curriculum on Parquet data: the percentiles of the rows' difficulty (empty
    otherwise), checked against curriculum.start."""
    if config.task.name != "parquet" or config.curriculum.schedule == "none":
        return []
    split = Path(config.task.path) / "train"
    quantiles = difficulty_quantiles(split, config.curriculum.difficulty)
    if config.curriculum.start > quantiles[-1]:
        raise DataError(
            f"curriculum.start ({config.curriculum.start}) is above the hardest row of "
            f"{split} (difficulty {quantiles[-1]} by {config.curriculum.difficulty}); "
            "expected a start at or below it."
        )
    return quantiles


def train(config: Config, verbose: bool = False, stream=sys.stdout) -> Outcome:
    """Train `config` (already `resolve`d). Raises DataError for bad data, TrainingFailed
    when the workers fail (the MLflow run is then marked FAILED, with everything it had),
    KeyboardInterrupt on Ctrl-C (the run is marked KILLED and can be resumed)."""
    started = time.monotonic()
    tracking.set_verbosity(verbose)
    tracking.fail_fast_http()
    forecast = prepare_forecast(config) if config.task.name == "timeseries" else None
    text = prepare_text(config) if config.task.name == "text" else None
    info = task_info(config, forecast and ForecastLayout.from_json(forecast["layout"]),
                     text and TextLayout.from_json(text["layout"]))
    quantiles = data_difficulty(config)
    transfer = plan_transfer(config, info)
    start_ray(verbose)
    check_storage(config)
    ray.data.DataContext.get_current().enable_progress_bars = verbose
    uri = config.tracking.uri
    run_id, experiment_id, resumed = tracking.open_run(
        uri, config.tracking.experiment, config.run.name, config.flat(), config.to_yaml(),
        tags={**ray_job_tags(),
              **(tracking.lineage(uri, transfer.origin) if transfer else {})},
    )
    if transfer and not resumed:
        print(transfer.report(), file=stream, flush=True)
        tracking.log_text(uri, run_id, transfer.report(), TRANSFER_REPORT)
    if text and not resumed:
        tracking.record(uri, run_id, metrics=TextLayout.from_json(text["layout"]).references)
    sequences = classifier_data(config, info)
    if sequences and not resumed:
        tracking.record(uri, run_id, metrics=sequences["majority"])
    board = board_on_this_node()
    loop_config = make_loop_config(config, info, quantiles, run_id, board, forecast=forecast,
                                   init_weights=transfer.weights if transfer else None,
                                   text=text)
    try:
        with ProgressPrinter(board, config.train.steps, stream):
            result = make_trainer(config, loop_config, verbose).fit()
    except ray.train.TrainingFailedError as exc:
        close_run(uri, run_id, "FAILED", stream)
        raise failure(exc) from None
    except (KeyboardInterrupt, SystemExit):
        # On Ctrl-C Ray Train aborts its controller, then exits from its signal handler.
        close_run(uri, run_id, "KILLED", stream)
        raise KeyboardInterrupt from None
    best = result.get_best_checkpoint("val_loss", "min") or result.checkpoint
    ending = {"tracking_uri": uri, "run_id": run_id, "forecast": forecast, "text": text,
              "sequences": sequences,
              "final": checkpoint_uri(config, result.checkpoint),
              "best": checkpoint_uri(config, best)}
    try:
        tested, model_uri = end_run(ending)
    except Exception as error:
        if not tracking.server_lost(uri, error):
            raise
        run_dir = f"{config.run.storage_path}/{config.run.name}"
        Spool(spool_directory(config.run.storage_path, config.run.name)).keep_ending(ending)
        print(f"rnn-orch: MLflow at {uri} cannot be reached, so the model is not logged "
              f"yet; the run's checkpoints are in {run_dir}. When the server is back, "
              f"`rnn-orch sync {run_dir}` sends what was kept, logs the model and marks the "
              "run FINISHED.", file=stream, flush=True)
        tested, model_uri = {}, ""
    return Outcome(
        run_name=config.run.name, run_id=run_id,
        experiment_id=experiment_id, resumed=resumed,
        final={**(result.metrics or {}), **tested}, baseline=info.baseline,
        run_path=str(result.path),
        best_checkpoint=ending["best"], seconds=time.monotonic() - started, model_uri=model_uri,
    )


def plan_transfer(config: Config, info: TaskInfo) -> TransferPlan | None:
    """Check the `init.*` keys against the model this run builds: which weights of
    `init.from` it takes (None without a source), and that every `init.freeze` pattern
    names parameters. Raises TransferError (exit 2) before anything is recorded."""
    if not config.init.from_ and not config.init.patterns():
        return None  # nothing to check: no model is built at start-up
    spec = model_spec(config, info)
    model = build_model(spec)
    Freezer(model, config.init.patterns(), config.init.unfreeze_every)
    if not config.init.from_:
        return None
    shapes = {name: param.shape for name, param in model.named_parameters()}
    source = load_source(config.init.from_, config.tracking.uri)
    return transfer_plan(config.init.from_, source, spec, shapes)


def make_loop_config(config: Config, info: TaskInfo, quantiles: list[int], run_id: str,
                     board=None, init_checkpoint: ray.train.Checkpoint | None = None,
                     forecast: dict | None = None,
                     init_weights: dict | None = None, text: dict | None = None,
                     report_validations: bool = False) -> dict:
    """What every worker's loop receives, as plain values (see `train_loop_per_worker`).
    The driver reads the Parquet footers for `train_bytes` once, not every worker.
    `report_validations`: report every validation to Ray, not only those with a
    checkpoint (for a sweep's scheduler; `worker.report` says what a report costs)."""
    train_bytes = (arrow_bytes(Path(config.task.path) / "train")
                   if config.task.name == "parquet" else 0)
    return {"config": config.to_dict(), "task": dataclasses.asdict(info),
            "difficulty_quantiles": quantiles, "run_id": run_id, "train_bytes": train_bytes,
            "tracking_uri": config.tracking.uri, "board": board,
            "spool_dir": spool_directory(config.run.storage_path, config.run.name),
            "init_checkpoint": init_checkpoint, "forecast": forecast, "text": text,
            "init_weights": init_weights, "report_validations": report_validations}


def ray_job_tags() -> dict[str, str]:
    """The Ray job this driver is, as run tags: `ray.job_id` always, and under `ray job
    submit` also `ray.submission_id`, the id that `ray job status`, `ray job logs` and the
    dashboard know the job by. The job supervisor hands it to the driver in the job
    config's metadata (the RAY_JOB_CONFIG_JSON_ENV_VAR variable)."""
    tags = {"ray.job_id": ray.get_runtime_context().get_job_id()}
    job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    submission_id = job_config.get("metadata", {}).get("job_submission_id")
    if submission_id:
        tags["ray.submission_id"] = submission_id
    return tags


def prepare_forecast(config: Config) -> dict:
    """A forecasting run's data, prepared once into the run's directory (`directory`)
    and described by its layout (`layout`, JSON). A resume finds it there and reuses it,
    normalization included, without reading the table again.

    A table in one file is prepared here, in the driver's memory. A directory of Parquet
    shards with a series id, each shard holding whole series, is prepared shard by shard
    in Ray tasks, so no process ever holds more than one shard: a table larger than one
    machine's memory is prepared by the cluster.
    """
    directory = f"{config.run.storage_path}/{config.run.name}/{PREPARED_DIR}"
    layout = read_layout(directory)
    if layout is None:
        discard_prepared(directory)  # an earlier attempt's files, if it stopped half-way
        options = config.task.series_options()
        shards = parquet_shards(config.task.path) if options.series_id else []
        try:
            if len(shards) > 1 and (options.series or options.skip_series):
                raise DataError(f"{config.task.path} is a directory of {len(shards)} Parquet "
                                "shards, prepared one by one; task.series and task."
                                "skip_series pick series from one table. Write the series "
                                "to train on as their own shards and point task.path at them.")
            if len(shards) > 1:
                start_ray(verbose=False)
                work = ray.remote(prepare_table).options(num_cpus=1)
                tasks = [work.remote(shard, options, directory, f"shard{i:05d}")
                         for i, shard in enumerate(shards)]
                layout = merge_layouts(_results(tasks), config.task.path)
            else:
                layout = prepare_table(config.task.path, options, directory)
        except DataError:
            discard_prepared(directory)
            raise
        write_layout(directory, layout)
    return {"directory": directory, "layout": layout.to_json()}


def prepare_text(config: Config) -> dict:
    """A language model's text, read, split, encoded and stored once into the run's
    directory (`directory`) with its layout (`layout`, JSON: vocabulary, files, references).
    A resume finds it there and reuses it, vocabulary included. Text too short for the
    workers' streams is refused before anything is written."""
    directory = f"{config.run.storage_path}/{config.run.name}/{PREPARED_DIR}"
    layout = read_description(directory)
    if layout is None:
        discard_prepared(directory)  # an earlier attempt's files, if it stopped half-way
        t = config.task
        layout, tokens = encode_corpus(t.path, t.vocab, t.val_fraction, t.test_fraction)
        chunks_per_epoch(layout.tokens["train"] // config.scaling.num_workers,
                         config.train.batch_size, t.bptt)
        write_prepared_text(directory, layout, tokens)
    return {"directory": directory, "layout": layout.to_json()}


def prepare_table(path: str, options: SeriesOptions, directory: str,
                  prefix: str = "part") -> ForecastLayout:
    """Read, prepare and store the table (or shard) at `path`; returns its layout."""
    table = read_table(path, time_column=options.time_column,
                       value_columns=[*options.targets, *options.covariates],
                       id_column=options.series_id)
    layout, stretches = prepare(table, options, path)
    del table
    write_prepared(directory, layout, stretches, prefix)
    return layout


def _results(tasks: list) -> list:
    """The tasks' results; bad data in a task raises its own DataError, not Ray's."""
    try:
        return ray.get(tasks)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, DataError):
            raise DataError(str(error.cause)) from None
        raise


def make_trainer(config: Config, loop_config: dict, verbose: bool,
                 callbacks: list | None = None) -> TorchTrainer:
    """The Ray Train run: its name and storage make a restart a resume; checkpoints are
    ranked by val_loss (the latest is always kept too); the workers keep the memory they
    free (`orchestrator.allocator`). A sweep's trial adds Tune's report callback."""
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=scaling_config(config),
        run_config=ray.train.RunConfig(
            name=config.run.name,
            storage_path=config.run.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=config.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=config.train.keep_checkpoints,
                checkpoint_score_attribute="val_loss",
                checkpoint_score_order="min",
            ),
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
            callbacks=callbacks,
            worker_runtime_env=allocator.worker_runtime_env(),
        ),
        datasets=parquet_datasets(config) if config.task.name == "parquet" else None,
        dataset_config=ordered_training_data(),
    )


def ordered_training_data() -> ray.train.DataConfig:
    """Ray Train's data ingest with the training split read in order: each worker's shard
    then holds the same rows in the same order every epoch and at every restart, so its
    seeded shuffles repeat and a resumed run continues mid-epoch exactly
    (sources.ShardBatches)."""
    ordered = ray.data.ExecutionOptions(preserve_order=True)
    return ray.train.DataConfig(execution_options={"train": ordered})


def checkpoint_uri(config: Config, checkpoint: ray.train.Checkpoint) -> str:
    """Where a checkpoint of this run lives, as a path or URI that any process can open."""
    return f"{config.run.storage_path}/{config.run.name}/{Path(checkpoint.path).name}"


def end_run(ending: dict) -> tuple[dict[str, float], str]:
    """Log the final model (`log_final_model`) and mark the run FINISHED. `ending` says
    which run and checkpoints, as plain values: `rnn-orch sync` finishes a run with it
    when the tracking server was away at the end of training."""
    tested, model_uri = log_final_model(
        ray.train.Checkpoint(ending["final"]), ray.train.Checkpoint(ending["best"]),
        ending["tracking_uri"], ending["run_id"], ending["forecast"], ending["text"],
        ending["sequences"])
    tracking.finish_run(ending["tracking_uri"], ending["run_id"], "FINISHED")
    return tested, model_uri


def close_run(uri: str, run_id: str, status: str, stream) -> None:
    """Mark a run that stopped early FAILED or KILLED, unless the server is away."""
    try:
        tracking.finish_run(uri, run_id, status)
    except Exception as error:
        if not tracking.server_lost(uri, error):
            raise
        print(f"rnn-orch: MLflow at {uri} cannot be reached; the run stays RUNNING there.",
              file=stream, flush=True)


def sync(run_dir: str, uri: str = "") -> tuple[int, str]:
    """`rnn-orch sync RUN_DIR`: send what a run kept while its tracking server was away
    (to `uri` if given, else the server it was kept for), and finish the run if its end
    was kept too. Returns how many entries were sent and the logged model's URI ("" when
    the run's end was not kept)."""
    tracking.fail_fast_http()
    spool = _spool_of(run_dir)
    sent = spool.send(uri)
    ending = spool.ending()
    if ending is None:
        return sent, ""
    _, model_uri = end_run({"text": None, "sequences": None, **ending,
                            "tracking_uri": uri or ending["tracking_uri"]})
    spool.drop_ending()
    return sent, model_uri


def kept_for(run_dir: str) -> str:
    """The tracking URI that the oldest thing kept in `run_dir` was meant for ("" if none)."""
    return _spool_of(run_dir).tracking_uri()


def _spool_of(run_dir: str) -> Spool:
    filesystem, root = filesystem_of(run_dir)
    if filesystem.get_file_info(root).type != pafs.FileType.Directory:
        raise DataError(f"{run_dir}: no such run directory; expected <run.storage_path>/"
                        "<run.name>, the directory `rnn-orch train` names at its end.")
    return Spool(f"{run_dir.rstrip('/')}/{SPOOL_DIR}")


def log_final_model(final: ray.train.Checkpoint, best: ray.train.Checkpoint, uri: str,
                    run_id: str, forecast: dict | None = None, text: dict | None = None,
                    sequences: dict | None = None) -> tuple[dict[str, float], str]:
    """Log the model of the last checkpoint and the files of the best one; returns the
    test figures of a forecaster or a language model and the logged model's URI.

    A forecaster is chosen by validation: the best checkpoint's model is the one scored
    on the test split (`test_*`, next to the naive forecasters), drawn, and logged as a
    servable pyfunc model. A language model is scored on the test text the same way
    (`test_bpc`, next to `bpc_unigram` and `bpc_xz`) and logged with its vocabulary. A
    sequence classifier with a test split is scored on it the same way (`test_accuracy`,
    `test_macro_f1`, the confusion matrix), its last model logged as for other tasks."""
    with final.as_directory() as final_dir, best.as_directory() as best_dir:
        if text is not None:
            tested = test_language_model(best_dir, text)
            tracking.record(uri, run_id, metrics=tested)
            model_uri = tracking.log_model(uri, run_id, checkpoints.load_model(best_dir),
                                           best_dir, files=[f"{best_dir}/{DESCRIPTION_FILE}"])
            return {**tested, **TextLayout.from_json(text["layout"]).references}, model_uri
        if forecast is None:
            tested = test_classifier(best_dir, sequences, uri, run_id) if sequences else {}
            model_uri = tracking.log_model(uri, run_id, checkpoints.load_model(final_dir),
                                           best_dir)
            return tested, model_uri
        forecaster = Forecaster.load(best_dir)
        layout = forecaster.layout
        test = read_share(forecast["directory"], "test", 0, 1, layout)
        tested = {**forecaster.evaluate(Windows(test, layout, "test").in_order()),
                  "test_checkpoint_step": float(checkpoints.load(best_dir)["step"])}
        tracking.record(uri, run_id, metrics=tested)
        with tempfile.TemporaryDirectory() as plots:
            plot_test_forecasts(forecaster, test[0], plots)
            model_uri = tracking.log_forecaster(uri, run_id, forecaster, best_dir, plots)
    return tested, model_uri


def classifier_data(config: Config, info: TaskInfo) -> dict | None:
    """For a Parquet task of one class per sequence: its test split ("" when it has none),
    class names and majority-class figures, as plain values the end of the run needs
    (they travel in the kept ending when the tracking server is away); None for other
    tasks."""
    if config.task.name != "parquet" or info.kind != "sequence":
        return None
    root = Path(config.task.path)
    names = read_classes(root / "train") or [str(i) for i in range(info.output_size)]
    return {"test_dir": str(root / "test") if (root / "test").is_dir() else "",
            "classes": names,
            "majority": classification.majority_figures(root, info.output_size)}


def test_classifier(checkpoint_dir: str, sequences: dict, uri: str,
                    run_id: str) -> dict[str, float]:
    """The checkpoint's test figures and confusion matrix (none without a test split),
    returned with the majority-class figures beside them."""
    if not sequences["test_dir"]:
        return {}
    model, step = model_and_step(checkpoint_dir)
    objective = objectives.of("sequence", len(sequences["classes"]))
    sums = classification.test_sums(model, Path(sequences["test_dir"]), objective)
    tested = {**objective.summarize(sums, "test"), "test_checkpoint_step": step}
    with tempfile.TemporaryDirectory() as directory:
        plots = Path(directory) / "plots"
        plots.mkdir()
        classification.plot_confusion(objective.confusion(sums), sequences["classes"], plots)
        tracking.record(uri, run_id, metrics=tested, artifacts=directory)
    return {**tested, **sequences["majority"]}


def test_language_model(checkpoint_dir: str, text: dict) -> dict[str, float]:
    """The test figures of the checkpoint's model: the whole test text, read in order with
    its state carried, on this process's CPU, in chunks of the run's task.bptt."""
    model, step = model_and_step(checkpoint_dir)
    bptt = load_config(Path(checkpoint_dir) / checkpoints.CONFIG_FILE).task.bptt
    batches = in_chunks(read_text_share(text["directory"], "test", 0, 1), EVAL_STREAMS, bptt)
    tested = validate(model, batches, TextObjective(), Place(0, 1, torch.device("cpu")),
                      carries_state=True, prefix="test")
    return {**tested, "test_checkpoint_step": step}


def model_and_step(checkpoint_dir: str) -> tuple[torch.nn.Module, float]:
    """A checkpoint's model, on the CPU, and the step it was saved at (one read)."""
    state = checkpoints.load(checkpoint_dir)
    return checkpoints.model_from(state), float(state["step"])


def start_ray(verbose: bool) -> None:
    """Join the cluster named by RAY_ADDRESS (as under `ray job submit`) or start a local one.

    Without --verbose, worker and controller logs stay in Ray's log files; the user sees
    the progress line instead.

    A local Ray is one machine, which no cloud drains: Ray Train's preemption watcher (an
    extra actor process per run, which watches for node drains) is turned off there, and
    its controller polls its few workers every 0.5 s instead of 2 s, so it notices a
    started worker group and a finished run sooner. Both save seconds of every run on a
    laptop (benchmarks/startup.py). A cluster keeps Ray's defaults; a value the user set
    wins either way.
    """
    if ray.is_initialized():
        return
    if not os.environ.get("RAY_ADDRESS"):  # inherited by the local Ray's processes
        os.environ.setdefault(PREEMPTION_WATCHER, "0")
        os.environ.setdefault(HEALTH_CHECK_INTERVAL, "0.5")
    ray.init(log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR)


def check_storage(config: Config) -> None:
    """Refuse storage that only this node reaches when the run trains on others
    (`orchestrator.shared_storage`): when the cluster has more than one node, when this
    node offers no CPU or GPU (a head that trains nothing, its workers still to come), or
    when the run is elastic (it grows onto nodes that join later)."""
    alive = [node for node in ray.nodes() if node["Alive"]]
    here = ray.get_runtime_context().get_node_id()
    offered = next((node["Resources"] for node in alive if node["NodeID"] == here), {})
    multi_node = (len(alive) > 1 or not (offered.get("CPU") or offered.get("GPU"))
                  or config.scaling.elastic)
    mounts = Path("/proc/mounts")
    shared_storage.check(config.run.storage_path, config.tracking.uri, multi_node,
                         mounts.read_text() if mounts.exists() else "")


def scaling_config(config: Config) -> ray.train.ScalingConfig:
    """Workers from the config; CPUs per worker sized so Ray Data tasks still find a CPU.

    On a 2-CPU laptop two workers of one CPU each leave nothing for Ray Data's read tasks
    and training deadlocks; by default each worker takes an equal share of all CPUs but
    one. An elastic run hands Ray Train its (min, max) range: Ray Train starts the group
    at the size the cluster has room for and restarts it from the latest checkpoint at a
    larger size when room appears, or at a smaller one after a failure.
    """
    s = config.scaling
    cpus = s.cpus_per_worker
    if not cpus:
        total = ray.cluster_resources().get("CPU", 1.0)
        cpus = 1.0 if s.use_gpu else min(1.0, max(total - 1.0, 1.0) / s.num_workers)
    workers = (s.min_workers, s.num_workers) if s.elastic else s.num_workers
    return ray.train.ScalingConfig(num_workers=workers, use_gpu=s.use_gpu,
                                   resources_per_worker={"CPU": cpus},
                                   elastic_resize_monitor_interval_s=s.resize_every_s)


def parquet_datasets(config: Config) -> dict[str, ray.data.Dataset]:
    root = Path(config.task.path)
    difficulty = config.curriculum.difficulty
    return {"train": read_split(root / "train", difficulty),
            "val": read_split(root / "val", difficulty)}


def failure(exc: ray.train.TrainingFailedError) -> Exception:
    """One paragraph from a worker-group failure: the first worker error, by rank.

    A DataError raised inside a worker stays a DataError (bad input, exit code 2).
    """
    causes = getattr(exc, "worker_failures", {}) or {}
    for _, error in sorted(causes.items()):
        cause = getattr(error, "cause", None) or error
        if isinstance(cause, DataError):
            return DataError(str(cause))
        return TrainingFailed(f"training failed on a worker: {type(cause).__name__}: "
                              f"{_headline(cause)} (rerun with --verbose for the full log).")
    return TrainingFailed(f"training failed: {_headline(exc)}")


def _headline(error: BaseException) -> str:
    """The first line of an error's message: what went wrong, before any advice."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""
