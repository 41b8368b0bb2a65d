"""Run a sweep on Ray Tune: the driver side of `rnn-orch tune`.

    rnn-orch tune configs/sweeps/adding_stability.yaml            # laptop: local Ray
    rnn-orch tune configs/sweeps/adding_stability.yaml --resume   # after an interruption
    ray job submit --working-dir . -- rnn-orch tune ...           # cluster

The driver opens the sweep's MLflow parent run, turns the sweep file into Tune's search
space, searcher and scheduler, and runs `orchestrator.trial.run_trial` for every trial.
At the end it ranks the trials, writes the table and plots to the parent run, marks
trials a scheduler stopped early, and registers the best trial's model.

A tracking server that is away at the end loses nothing: the trials' results stay in the
sweep's storage, and `rnn-orch tune SWEEP --resume`, once the server is back, sends what
the trials kept (their spools) and records the end.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.search import BasicVariantGenerator

from orchestrator import checkpoints, driver, sweep_report, tracking
from orchestrator.config import Config
from orchestrator.spool import Spool, spool_directory
from orchestrator.sweep_file import Draw, Sweep, SweepError
from orchestrator.sweep_report import TrialRow
from orchestrator.trial import SweepContext, run_trial

TRAINABLE_CPU = 0.01  # the trainable only waits on its Train run; the workers hold CPUs
STOPPED_TAG = "rnn_orch.stopped_early"
ERROR_TAG = "rnn_orch.error"


@dataclass(frozen=True)
class SweepOutcome:
    rows: list[TrialRow]  # ranked, best first
    parent_run_id: str
    experiment_id: str
    registered: str | None  # "name version N" of the registered model
    path: str  # the Tune experiment directory
    summary: Path
    tracking_uri: str
    recorded: bool  # False: the tracking server was away at the end; --resume records it


def run(sweep: Sweep, environ: dict[str, str], resume: bool = False,
        verbose: bool = False) -> SweepOutcome:
    """Run (or resume) `sweep`. Raises SweepError when there is nothing to resume or a
    sweep of that name already ran, KeyboardInterrupt when interrupted (the sweep can be
    resumed), TrainingFailed when no trial completed."""
    base = driver.resolve(sweep.base, environ)
    storage = f"{base.run.storage_path}/sweeps"
    path = f"{storage}/{sweep.name}"
    _check_resumable(path, resume, sweep)
    driver.start_ray(verbose)
    driver.check_storage(base)
    tracking.set_verbosity(verbose)
    tracking.fail_fast_http()
    uri = base.tracking.uri
    parent_run_id, experiment_id, _ = tracking.open_run(
        uri, base.tracking.experiment, f"sweep-{sweep.name}", sweep_params(sweep),
        sweep.path.read_text(), tags={"rnn_orch.kind": "sweep", **driver.ray_job_tags()},
    )
    context = SweepContext(
        name=sweep.name, base=base.to_dict(), parent_run_id=parent_run_id,
        storage_path=f"{path}/train", pbt_interval=sweep.scheduler.perturbation_interval,
        mutated=tuple(sweep.scheduler.mutations),
    )
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context),
                                    {"CPU": TRAINABLE_CPU})
    if resume:
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={key: to_tune(draw, sweep.algorithm) for key, draw in sweep.space.items()},
            tune_config=tune_config(sweep, base),
            run_config=tune.RunConfig(name=sweep.name, storage_path=storage,
                                      verbose=2 if verbose else 1),
        )
    results, interrupted = fit_noting_interruption(tuner)
    rows = sweep_report.ranked([trial_row(result, sweep) for result in results], sweep.mode)
    summary = sweep_report.write_report(rows, sweep, Path(results.experiment_path) / "report")
    try:
        registered = record_end(results, rows, sweep, context, uri, interrupted, summary.parent)
    except Exception as error:
        if not tracking.server_lost(uri, error):
            raise
        registered, recorded = None, False
    else:
        recorded = True
    if interrupted:
        raise KeyboardInterrupt
    if not any(row.status == "completed" for row in rows):
        raise driver.TrainingFailed(f"no trial of sweep {sweep.name} completed; see "
                                    f"{summary} and the trials' errors in {path}.")
    return SweepOutcome(rows, parent_run_id, experiment_id, registered,
                        results.experiment_path, summary, uri, recorded)


def record_end(results: tune.ResultGrid, rows: list[TrialRow], sweep: Sweep,
               context: SweepContext, uri: str, interrupted: bool, report_dir: Path
               ) -> str | None:
    """Everything the sweep's end sends to MLflow: what each trial kept while its tracking
    server was away, the trials' models and statuses, the parent run's best figures and
    status. Returns what `record_best` registered. Run again by a resume, it sends only
    what is still missing: a closed trial run is left as it is."""
    for row in rows:
        Spool(spool_directory(context.storage_path, f"{context.name}-{row.trial}")).send()
    close_trials(results, {row.trial: row for row in rows}, uri, context.parent_run_id,
                 interrupted)
    if interrupted:
        tracking.finish_run(uri, context.parent_run_id, "KILLED")
        return None
    registered = record_best(rows, sweep, uri, context.parent_run_id, report_dir)
    completed = any(row.status == "completed" for row in rows)
    tracking.finish_run(uri, context.parent_run_id, "FINISHED" if completed else "FAILED")
    return registered


def fit_noting_interruption(tuner: tune.Tuner) -> tuple[tune.ResultGrid, bool]:
    """Run the sweep; also say whether Ctrl-C stopped it.

    On Ctrl-C Tune stops gracefully, saves the sweep's state for `--resume`, and returns
    as if it had finished, with the interrupted trials marked TERMINATED. What tells
    the two apart is Tune's own SIGINT handler: it stays installed after a normal end,
    and puts back the handler it replaced when a Ctrl-C arrives.
    """
    before = signal.getsignal(signal.SIGINT)
    results = tuner.fit()
    interrupted = signal.getsignal(signal.SIGINT) is before
    signal.signal(signal.SIGINT, before)
    return results, interrupted


def _check_resumable(path: str, resume: bool, sweep: Sweep) -> None:
    """Never start a sweep over one that already ran: its trials and records stay."""
    exists = tune.Tuner.can_restore(path)
    if resume and not exists:
        raise SweepError(f"nothing to resume: no sweep named {sweep.name!r} at {path}; "
                         "run it without --resume first.")
    if not resume and exists:
        raise SweepError(f"a sweep named {sweep.name!r} already ran at {path}; continue it "
                         f"with `rnn-orch tune {sweep.path} --resume`, or give the new one "
                         "another name: in the sweep file.")


def sweep_params(sweep: Sweep) -> dict[str, str]:
    """The parent run's params: how each key is searched, and the search settings."""
    params = {f"space.{key}": f"{d.kind}{list(d.values)}" for key, d in sweep.space.items()}
    params |= {f"mutations.{key}": f"{d.kind}{list(d.values)}"
               for key, d in sweep.scheduler.mutations.items()}
    params |= {"search.algorithm": sweep.algorithm, "search.num_samples": sweep.num_samples,
               "metric": sweep.metric, "mode": sweep.mode, "scheduler": sweep.scheduler.name}
    return params


def to_tune(draw: Draw, algorithm: str):
    """A Tune search-space object; `int` includes its high end (Tune's randint does not).
    A grid search lists every choice."""
    if draw.kind == "grid" or (draw.kind == "choice" and algorithm == "grid"):
        return tune.grid_search(list(draw.values))
    if draw.kind == "choice":
        return tune.choice(list(draw.values))
    low, high = draw.values
    return {"uniform": tune.uniform, "loguniform": tune.loguniform}.get(
        draw.kind, lambda lo, hi: tune.randint(lo, hi + 1))(low, high)


def tune_config(sweep: Sweep, base: Config) -> tune.TuneConfig:
    """Search seeded by the base config's `seed`, so a sweep file run again draws the same
    trials (two sweeps that differ only in their scheduler then compare like for like).
    Random and grid search use Tune's own generator, which limits concurrency itself:
    Tune ignores `max_concurrent_trials` for a generator it was handed."""
    concurrent = sweep.max_concurrent_trials or concurrent_trials(base)
    if sweep.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg, limit = OptunaSearch(seed=base.seed), concurrent
    else:
        search_alg = BasicVariantGenerator(max_concurrent=concurrent, random_state=base.seed)
        limit = None
    return tune.TuneConfig(
        metric=sweep.metric, mode=sweep.mode, search_alg=search_alg,
        scheduler=scheduler(sweep), num_samples=sweep.num_samples,
        max_concurrent_trials=limit,
        trial_name_creator=lambda trial: trial.trial_id,
        trial_dirname_creator=lambda trial: trial.trial_id,
    )


def scheduler(sweep: Sweep):
    """ASHA and PBT count time in training steps, the unit the sweep file uses.

    PBT runs synchronously: every trial reaches the interval's end before any is copied,
    so each exploit compares trials at the same step, and a trial that reported first
    still has a checkpoint to be copied from.
    """
    s = sweep.scheduler
    if s.name == "asha":
        return ASHAScheduler(time_attr="step", max_t=sweep.max_steps(),
                             grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    if s.name == "pbt":
        return PopulationBasedTraining(
            time_attr="step", perturbation_interval=s.perturbation_interval,
            quantile_fraction=s.quantile_fraction, synch=True,
            hyperparam_mutations={key: pbt_mutation(d) for key, d in s.mutations.items()},
        )
    return FIFOScheduler()


def pbt_mutation(draw: Draw):
    """What PBT perturbs a key with. Listed values go as a plain list, so an explore step
    moves to a neighbouring value (or redraws one); a range goes as a Tune domain, which
    PBT multiplies by 0.8 or 1.2 (or redraws from). Handed a `tune.choice`, PBT would
    multiply the value too, leaving the list."""
    return list(draw.values) if draw.kind in ("choice", "grid") else to_tune(draw, "random")


def concurrent_trials(base: Config) -> int:
    """How many trials fit at once: each holds its workers' CPUs (and GPUs) plus the
    trainable's sliver, and a trial's workers start only when all of them fit."""
    resources = ray.cluster_resources()
    workers = base.scaling.num_workers
    cpus = workers * driver.scaling_config(base).resources_per_worker["CPU"] + TRAINABLE_CPU
    fits = math.floor(resources.get("CPU", 1.0) / cpus + 1e-9)
    if base.scaling.use_gpu:
        fits = min(fits, math.floor(resources.get("GPU", 0.0) / workers))
    return max(fits, 1)


def trial_row(result, sweep: Sweep) -> TrialRow:
    trial = Path(result.path).name
    metrics = result.metrics or {}
    values = {key: (result.config or {}).get(key) for key in sweep.searched_keys()}
    steps = values.get("train.steps") or sweep.base.train.steps
    step = int(metrics.get("step", 0))
    frame = result.metrics_dataframe
    curve = ()
    if frame is not None and sweep.metric in frame and "step" in frame:
        curve = tuple((int(s), float(m)) for s, m in zip(frame["step"], frame[sweep.metric],
                                                          strict=True) if not math.isnan(m))
    return TrialRow(trial=trial, status=sweep_report.status_of(result.error is not None, step,
                                                               steps),
                    values=values, step=step, score=float(metrics.get(sweep.metric, math.nan)),
                    curve=curve)


def close_trials(results, rows: dict[str, TrialRow], uri: str, parent_run_id: str,
                 interrupted: bool) -> None:
    """Log each completed trial's model and close every trial's MLflow run.

    The driver does it, not the trial: a scheduler may stop a trial at any report, its
    last included, and a stopped trial cannot log anything. After a Ctrl-C the trials
    that did not complete are KILLED (a resume reopens them); runs closed by an earlier
    part of a resumed sweep are left as they are.
    """
    children = tracking.child_runs(uri, parent_run_id)
    for result in results:
        row = rows[Path(result.path).name]
        child = children.get(row.trial)
        if child is None or child["status"] != "RUNNING":
            continue
        if row.status == "completed":
            checkpoint = result.checkpoint or ray.train.Checkpoint(
                result.metrics[CHECKPOINT_PATH_KEY])
            with checkpoint.as_directory() as directory:
                tracking.log_model(uri, child["run_id"], checkpoints.load_model(directory),
                                   directory)
            tracking.finish_run(uri, child["run_id"], "FINISHED")
        elif interrupted:
            tracking.finish_run(uri, child["run_id"], "KILLED")
        elif row.status == "stopped early":
            tracking.record(uri, child["run_id"], tags={STOPPED_TAG: "true"})
            tracking.finish_run(uri, child["run_id"], "KILLED")
        else:
            tracking.record(uri, child["run_id"], tags={ERROR_TAG: str(result.error)[:4000]})
            tracking.finish_run(uri, child["run_id"], "FAILED")


def record_best(rows: list[TrialRow], sweep: Sweep, uri: str, parent_run_id: str,
                report_dir: Path) -> str | None:
    """The parent run gets the best completed trial's figures, the table and the plots;
    the registry gets its model when the sweep file names one."""
    children = tracking.child_runs(uri, parent_run_id)
    best = next((row for row in rows if row.status == "completed"
                 and children.get(row.trial, {}).get("model_uri")), None)
    tags = {}
    registered = None
    if best is not None:
        tags = {"best.trial": best.trial, "best.run_id": children[best.trial]["run_id"],
                **{f"best.{key}": str(value) for key, value in best.values.items()}}
        if sweep.register_model:
            version = tracking.register_model(uri, children[best.trial]["model_uri"],
                                              sweep.register_model)
            registered = f"{sweep.register_model} version {version}"
            tags["best.registered_model"] = registered
    metrics = {f"best_{sweep.metric}": best.score} if best else {}
    metrics["trials"] = len(rows)
    metrics["trials_completed"] = sum(row.status == "completed" for row in rows)
    metrics["trials_stopped_early"] = sum(row.status == "stopped early" for row in rows)
    tracking.record(uri, parent_run_id, metrics=metrics, tags=tags, artifacts=str(report_dir))
    return registered


def summary(outcome: SweepOutcome, sweep: Sweep) -> str:
    """What the CLI prints at the end: the top of the table and where everything is."""
    lines = [f"Sweep {sweep.name}: {len(outcome.rows)} trials, best {sweep.metric} first", "",
             sweep_report.markdown_table(outcome.rows[:sweep_report.TOP_ROWS], sweep)]
    if outcome.registered:
        lines.append(f"  registered: {outcome.registered}")
    lines += [f"  summary:    {outcome.summary}",
              f"  trials:     {outcome.path}",
              "  MLflow:     "
              + tracking.ui_command(outcome.tracking_uri, outcome.experiment_id,
                                    outcome.parent_run_id)]
    if not outcome.recorded:
        lines.append(f"  not recorded: MLflow at {outcome.tracking_uri} cannot be reached; "
                     "the trials' results are kept. Once it is back, record the sweep's end "
                     f"with: rnn-orch tune {sweep.path} --resume")
    return "\n".join(lines)
