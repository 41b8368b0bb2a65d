"""Everything MLflow but the training loop's own logging (`orchestrator.metric_logger`,
`orchestrator.spool`).

The driver opens the run before training and passes its id into the loop, so rank 0 of
any worker group (the first, or one restarted after a failure) writes to the same run.
Ray Train V2 has no MLflow callback, so the loop logs itself (`MetricLogger`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

DEFAULT_URI = "sqlite:///mlflow.db"
RUN_NAME_TAG = "rnn_orch.run_name"
MODEL_URI_TAG = "rnn_orch.model_uri"
PARENT_TAG = "mlflow.parentRunId"  # what makes MLflow's UI nest a trial under its sweep
TRIAL_TAG = "rnn_orch.trial_id"
LINEAGE_PREFIX = "rnn_orch.init."  # a fine-tuned run's source: from, registered_model, ...
WEIGHTS_FILE = "weights.pt"  # in a logged model's extra_files: loads weights-only


# A request to a server that is gone fails within seconds instead of after MLflow's
# default of seven retries over two minutes: what is not sent is kept and sent later.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def fail_fast_http() -> None:
    """Bound MLflow's HTTP retries in this process (unless the user set them): a lost
    tracking server must not hold up training or the end of a run."""
    for name, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def set_verbosity(verbose: bool) -> None:
    """Without --verbose, MLflow's own info lines (database migrations, the pickle notice
    for the model we log on purpose) stay out of the user's progress output."""
    logging.getLogger("mlflow").setLevel(logging.INFO if verbose else logging.ERROR)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "true" if verbose else "false"


def resolve_uri(configured: str, environ: dict[str, str]) -> str:
    """`tracking.uri`, else $MLFLOW_TRACKING_URI, else a SQLite file in the working directory.

    A relative SQLite path is made absolute: Ray workers do not share the driver's
    working directory, and they must write to the same file.
    """
    uri = configured or environ.get("MLFLOW_TRACKING_URI", "") or DEFAULT_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def ui_command(uri: str, experiment_id: str, run_id: str) -> str:
    """The command that opens the MLflow UI on this store, and the page of the run."""
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return (f"mlflow ui --backend-store-uri {uri}   then open "
            f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}")


def open_run(uri: str, experiment: str, run_name: str, params: dict, config_yaml: str,
             tags: dict[str, str]) -> tuple[str, str, bool]:
    """Find the run named `run_name` in `experiment`, or create it.
    Returns (run_id, experiment_id, resumed).

    A run started again under the same name (a resume) keeps its MLflow run: params are
    immutable there, so they are logged only when the run is created.
    """
    client = MlflowClient(uri)
    experiment_id = _experiment_id(client, experiment)
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'", max_results=1
    )
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return run_id, experiment_id, True
    run = client.create_run(
        experiment_id, run_name=run_name, tags={RUN_NAME_TAG: run_name, **_git_tags(), **tags}
    )
    run_id = run.info.run_id
    client.log_batch(run_id, params=[
        Param(key, str(value)) for key, value in params.items()
    ])
    client.log_text(run_id, config_yaml, "config.yaml")
    return run_id, experiment_id, False


def server_lost(uri: str, error: BaseException) -> bool:
    """Whether `error` means the tracking server has gone away: an MLflow or HTTP failure
    while the server at `uri` does not answer its health check. A SQLite or file store is
    never lost; its errors are real ones."""
    import requests
    from mlflow.exceptions import MlflowException

    if not uri.startswith(("http://", "https://")) or not isinstance(
            error, (MlflowException, requests.RequestException, OSError)):
        return False
    try:
        return requests.get(f"{uri.rstrip('/')}/health", timeout=5).status_code != 200
    except requests.RequestException:
        return True


def finish_run(uri: str, run_id: str, status: str) -> None:
    """Mark the run FINISHED, FAILED or KILLED."""
    MlflowClient(uri).set_terminated(run_id, status=status)


def log_model(uri: str, run_id: str, model, checkpoint_dir: str | None,
              files: list[str] = ()) -> str:
    """Log the final model with MLflow's PyTorch flavour, and the best checkpoint's files.
    Returns the model's URI, also kept as the run's `rnn_orch.model_uri` tag. `files` go
    with the model as extra files (a language model's vocabulary, `text.json`).

    The `models` package travels with the model (`code_paths`), so
    `mlflow.pytorch.load_model` works where rnn-orch is not installed. That loader
    unpickles, which can run code, so the model also carries `extra_files/weights.pt`
    (spec and state dict only): what `model_weights` reads.
    """
    import tempfile

    import torch

    import models

    mlflow.set_tracking_uri(uri)
    model = model.cpu().eval()
    with tempfile.TemporaryDirectory() as directory, mlflow.start_run(run_id=run_id):
        weights = Path(directory) / WEIGHTS_FILE
        torch.save({"spec": dataclasses.asdict(model.spec), "model": model.state_dict()},
                   weights)
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            code_paths=[str(Path(models.__file__).parent)],
            serialization_format="pickle",
            pip_requirements=["torch", "numpy"],
            extra_files=[str(weights), *files],
        )
        if checkpoint_dir:
            mlflow.log_artifacts(checkpoint_dir, "best_checkpoint")
        mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
    return info.model_uri


def model_weights(model_uri: str, uri: str = "") -> dict:
    """`{"spec": ..., "model": state dict}` of a logged model, read with
    `torch.load(weights_only=True)`: a model `log_model` logged (its
    `extra_files/weights.pt`) or a forecaster `log_forecaster` logged (its
    `artifacts/forecaster/forecaster.pt`). `model_uri` is runs:/<run id>/model,
    models:/<name>/<version>, models:/<name>@<alias> or models:/<model id>; the store is
    `uri`, else $MLFLOW_TRACKING_URI, else ./mlflow.db.

    The pickled model beside those files is never read: anyone who can write to the
    store could have put code in it. A model without a weights-only file is refused.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        return _weights_in(_download_model(model_uri, uri, directory), model_uri)


def language_model(model_uri: str, uri: str = "") -> tuple[dict, str]:
    """The weights (as `model_weights`) and the text layout (`text.json`: vocabulary,
    corpus files) of a language model that `rnn-orch train` logged."""
    import tempfile

    from pipelines.errors import DataError
    from pipelines.text import DESCRIPTION_FILE

    with tempfile.TemporaryDirectory() as directory:
        local = _download_model(model_uri, uri, directory)
        layout = local / "extra_files" / DESCRIPTION_FILE
        if not layout.is_file():
            raise DataError(f"{model_uri} is not a language model (it has no extra_files/"
                            f"{DESCRIPTION_FILE}); expected the model of a task.name=text run.")
        return _weights_in(local, model_uri), layout.read_text()


def _weights_in(local: Path, model_uri: str) -> dict:
    """The weights-only file of a model downloaded to `local`."""
    from orchestrator import checkpoints, forecaster
    from orchestrator.serving import ARTIFACT
    from pipelines.errors import DataError

    candidates = (Path("extra_files") / WEIGHTS_FILE,
                  Path("artifacts") / ARTIFACT / forecaster.WEIGHTS_FILE)
    for relative in candidates:
        if (local / relative).is_file():
            return checkpoints.load_weights_only(local / relative, f"{model_uri} ({relative})")
    raise DataError(
        f"{model_uri} holds no weights-only file ({' or '.join(map(str, candidates))}): "
        "it was logged by an older rnn-orch or by something else. rnn-orch does not read "
        "a model's pickled files, because unpickling can run code from them; load it with "
        "mlflow.pytorch.load_model only if you trust where it came from.")


def log_forecaster(uri: str, run_id: str, forecaster, checkpoint_dir: str | None,
                   plots_dir: str | None) -> str:
    """Log a forecaster (`orchestrator.forecaster.Forecaster`) as a pyfunc model that
    `mlflow models serve` answers forecast requests with (`orchestrator.serving`), the
    best checkpoint's files and the forecast plots. Returns the model's URI, also kept as
    the run's `rnn_orch.model_uri` tag.

    `models`, `pipelines` and `orchestrator` travel with the model (`code_paths`); only
    the forecaster's modules are imported when it loads, none of Ray.
    """
    import tempfile

    import models
    import orchestrator
    import pipelines
    from orchestrator.serving import ARTIFACT, ForecasterModel

    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory() as directory, mlflow.start_run(run_id=run_id):
        files = Path(directory) / ARTIFACT  # the folder's name is kept in the model
        forecaster.save(files)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=ForecasterModel(), artifacts={ARTIFACT: str(files)},
            code_paths=[str(Path(package.__file__).parent)
                        for package in (models, pipelines, orchestrator)],
            pip_requirements=["torch", "numpy", "pyarrow", "pandas"],
        )
        if checkpoint_dir:
            mlflow.log_artifacts(checkpoint_dir, "best_checkpoint")
        if plots_dir:
            mlflow.log_artifacts(plots_dir, "plots")
        mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
    return info.model_uri


def forecaster_files(model_uri: str) -> str:
    """The local directory of a logged forecaster's files (runs:/..., models:/...),
    downloaded from the store named by $MLFLOW_TRACKING_URI (default: ./mlflow.db)."""
    import tempfile

    from orchestrator.serving import ARTIFACT
    from pipelines.errors import DataError

    files = _download_model(model_uri, "", tempfile.mkdtemp()) / "artifacts" / ARTIFACT
    if not files.is_dir():
        raise DataError(f"{model_uri} is not a forecaster; expected the model of a "
                        "task.name=timeseries run.")
    return str(files)


def _download_model(model_uri: str, uri: str, directory: str) -> Path:
    """The whole logged model, downloaded into `directory` (a path below models:/<model
    id> does not resolve in MLflow 3, so the model is fetched whole)."""
    from mlflow.exceptions import MlflowException

    from pipelines.errors import DataError

    mlflow.set_tracking_uri(resolve_uri(uri, dict(os.environ)))
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri,
                                                        dst_path=directory))
    except (MlflowException, OSError) as error:
        raise DataError(f"{model_uri}: no model found there ({first_line(error)}); "
                        "expected a model rnn-orch logged, e.g. runs:/<run id>/model or "
                        "models:/<name>/<version>.") from None


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def child_runs(uri: str, parent_run_id: str) -> dict[str, dict]:
    """The runs under a sweep's parent run, by trial id: run id, status, model URI."""
    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
    return {run.data.tags.get(TRIAL_TAG, run.info.run_id): {
        "run_id": run.info.run_id, "status": run.info.status,
        "model_uri": run.data.tags.get(MODEL_URI_TAG)} for run in runs}


def record(uri: str, run_id: str, metrics: dict[str, float] | None = None,
           tags: dict[str, str] | None = None, artifacts: str | None = None) -> None:
    """Write summary figures, tags and a directory of files (plots, tables) to a run."""
    client = MlflowClient(uri)
    now_ms = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now_ms, 0)
                                      for k, v in (metrics or {}).items()],
                     tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
    if artifacts:
        client.log_artifacts(run_id, artifacts)


def register_model(uri: str, model_uri: str, name: str, alias: str | None = None) -> str:
    """Register a logged model under `name` in the model registry (and point `alias` at
    it); returns its version. A fine-tuned model's version carries its run's lineage tags
    (`rnn_orch.init.*`), so the registry links it back to the model it started from."""
    mlflow.set_tracking_uri(uri)
    version = str(mlflow.register_model(model_uri, name).version)
    client = MlflowClient(uri)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    run_id = client.get_model_version(name, version).run_id
    if run_id:
        for key, value in client.get_run(run_id).data.tags.items():
            if key.startswith(LINEAGE_PREFIX):
                client.set_model_version_tag(name, version, key, value)
    return version


def lineage(uri: str, origin: str) -> dict[str, str]:
    """Tags that say where a fine-tuned run started from: the URI, and for a registered
    model its name and version; for MLflow models the run that made the source."""
    tags = {f"{LINEAGE_PREFIX}from": origin}
    client = MlflowClient(uri)
    if origin.startswith("models:/"):
        reference = origin.removeprefix("models:/")
        if "@" in reference:
            name, alias = reference.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = reference.rsplit("/", 1)
            version = client.get_model_version(name, number)
        tags |= {f"{LINEAGE_PREFIX}registered_model": f"{name}/{version.version}",
                 f"{LINEAGE_PREFIX}source_run_id": version.run_id or ""}
    elif origin.startswith("runs:/"):
        tags[f"{LINEAGE_PREFIX}source_run_id"] = origin.removeprefix("runs:/").split("/")[0]
    return tags


def log_text(uri: str, run_id: str, text: str, name: str) -> None:
    """A text file in the run's artifacts (a report, a table)."""
    MlflowClient(uri).log_text(run_id, text, name)


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name)
    return experiment.experiment_id


def _git_tags() -> dict[str, str]:
    """The commit the code came from, when the working directory is a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=os.getcwd(),
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit} if commit else {}
