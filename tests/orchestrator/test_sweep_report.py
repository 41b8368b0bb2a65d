"""The ranked table and plots of a finished sweep, and the sweep file turned into Tune's
search space (no Ray cluster needed)."""

from __future__ import annotations

import math
import random

from ray import tune

from orchestrator.sweep import pbt_mutation, to_tune
from orchestrator.sweep_file import Draw
from orchestrator.sweep_report import TrialRow, markdown_table, ranked, status_of, write_report
from tests.orchestrator.test_sweep_file import GOOD, write


def row(trial, score, status="completed", cell="lstm"):
    return TrialRow(trial=trial, status=status, values={"model.cell": cell}, step=100,
                    score=score, curve=((50, score * 2), (100, score)))


def test_ranked_puts_the_best_first_and_unscored_trials_last():
    rows = [row("a", 0.3), row("b", math.nan, "error"), row("c", 0.1)]
    assert [r.trial for r in ranked(rows, "min")] == ["c", "a", "b"]
    assert [r.trial for r in ranked(rows, "max")] == ["a", "c", "b"]


def test_status_tells_completed_from_stopped_and_failed():
    assert status_of(False, 200, 200) == "completed"
    assert status_of(False, 50, 200) == "stopped early"
    assert status_of(True, 200, 200) == "error"


def test_report_writes_the_table_and_plots(tmp_path):
    from orchestrator.sweep_file import load_sweep

    sweep = load_sweep(write(tmp_path, GOOD))
    rows = ranked([row("t1", 0.2, cell="gru"), row("t0", 0.05, "stopped early")], "min")
    summary = write_report(rows, sweep, tmp_path / "report")
    table = summary.read_text()
    assert table.index("| 1 | t0 | stopped early |") < table.index("| 2 | t1 | completed |")
    header = markdown_table(rows, sweep).splitlines()[0]
    assert all(key in header for key in sweep.searched_keys())
    plots = tmp_path / "report" / "plots"
    assert (plots / "val_loss_by_key.png").stat().st_size > 1000
    assert (plots / "learning_curves.png").stat().st_size > 1000


def test_draws_become_tune_domains():
    assert to_tune(Draw("grid", ("a", "b")), "random") == {"grid_search": ["a", "b"]}
    assert to_tune(Draw("choice", ("a", "b")), "grid") == {"grid_search": ["a", "b"]}
    assert isinstance(to_tune(Draw("choice", ("a", "b")), "random"), tune.search.sample.Categorical)
    ints = to_tune(Draw("int", (8, 32)), "random")
    assert (ints.lower, ints.upper) == (8, 33)  # the sweep file's high end is included
    logs = to_tune(Draw("loguniform", (1e-4, 1e-2)), "random")
    assert (logs.lower, logs.upper) == (1e-4, 1e-2)
    assert all(1e-4 <= logs.sample() <= 1e-2 for _ in range(20))


def test_optuna_searcher_suggests_values_inside_the_space(tmp_path):
    from orchestrator.sweep import tune_config
    from orchestrator.sweep_file import load_sweep

    sweep = load_sweep(write(tmp_path, """
        base: base.yaml
        space:
          optim.lr: {loguniform: [1e-4, 1e-2]}
          model.cell: {choice: [lstm, gru]}
          model.hidden_size: {int: [8, 32]}
        search: {algorithm: optuna, num_samples: 4, max_concurrent_trials: 1}
        metric: val_loss
        mode: min
        """))
    searcher = tune_config(sweep, sweep.base).search_alg
    space = {key: to_tune(draw, sweep.algorithm) for key, draw in sweep.space.items()}
    assert searcher.set_search_properties("val_loss", "min", space)
    for trial in range(4):
        values = searcher.suggest(f"t{trial}")
        assert 1e-4 <= values["optim.lr"] <= 1e-2
        assert values["model.cell"] in ("lstm", "gru")
        assert 8 <= values["model.hidden_size"] <= 32


def test_random_search_draws_the_same_trials_for_the_same_seed(tmp_path):
    from ray.tune.experiment import Experiment

    from orchestrator.sweep import tune_config
    from orchestrator.sweep_file import load_sweep

    def draws(seed: int) -> list[dict]:
        sweep = load_sweep(write(tmp_path, f"""
            base: base.yaml
            fixed: {{seed: {seed}}}
            space:
              optim.lr: {{loguniform: [1e-4, 1e-2]}}
              model.cell: {{grid: [lstm, gru]}}
            search: {{algorithm: random, num_samples: 3, max_concurrent_trials: 6}}
            metric: val_loss
            mode: min
            """))
        generator = tune_config(sweep, sweep.base).search_alg
        space = {key: to_tune(draw, sweep.algorithm) for key, draw in sweep.space.items()}
        generator.add_configurations(
            [Experiment("draws", lambda config: None, config=space, num_samples=3)])
        return [generator.next_trial().config for _ in range(6)]

    first = draws(0)
    assert len({trial["optim.lr"] for trial in first}) == 6
    assert draws(0) == first
    assert draws(1) != first


def test_pbt_moves_listed_values_within_the_list():
    from ray.tune.schedulers.pbt import _explore

    mutations = {"clip.threshold": pbt_mutation(Draw("choice", (0.5, 1.0, 2.0))),
                 "optim.lr": pbt_mutation(Draw("loguniform", (1e-4, 1e-2)))}
    for seed in range(20):
        random.seed(seed)
        config, _ = _explore({"clip.threshold": 1.0, "optim.lr": 1e-3}, mutations,
                             resample_probability=0.25, perturbation_factors=(1.2, 0.8),
                             custom_explore_fn=None)
        assert config["clip.threshold"] in (0.5, 1.0, 2.0)
