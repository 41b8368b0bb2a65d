from __future__ import annotations

import copy
import dataclasses
import math
import pickle
from fractions import Fraction

import numpy as np
import pytest

from orchestrator.config import Config, ConfigError
from orchestrator.curriculum import (
    PROGRESS_DRIVEN,
    SCHEDULES,
    Curriculum,
    Plan,
    competence,
    linear_level,
    root_level,
    step_level,
)
from orchestrator.worker import make_curriculum
from pipelines.synthetic import rng_for

STEP_DRIVEN = ("none", "linear", "root", "step", "competence", "mixed")

# (start, target, warmup_steps, round_to): grid-aligned ends, ends off the grid, a warmup
# that does not divide the range, a warmup shorter than the grid step.
RAMPS = [
    (10, 100, 1000, 10),
    (15, 95, 333, 10),
    (3, 50, 47, 1),
    (10, 1000, 7, 25),
]


def ramp_plan(schedule: str, start: int, target: int, warmup: int, round_to: int) -> Plan:
    return Plan(schedule, target=target, start=start, warmup_steps=warmup, round_to=round_to)


def snapped(value: Fraction | int, plan: Plan) -> int:
    """The exact answer: down to the round_to grid, within [start, target]."""
    if value >= plan.target:
        return plan.target
    return max(plan.start, math.floor(value) // plan.round_to * plan.round_to)


def exact_linear(step: int, plan: Plan) -> int:
    t = min(step, plan.warmup_steps)
    return snapped(plan.start + Fraction((plan.target - plan.start) * t, plan.warmup_steps), plan)


def exact_root(step: int, plan: Plan) -> int:
    # floor(start + d sqrt(t/T)) = start + isqrt(floor(d^2 t / T)), all in integers
    t, span = min(step, plan.warmup_steps), plan.target - plan.start
    return snapped(plan.start + math.isqrt(span * span * t // plan.warmup_steps), plan)


def steps_of(plan: Plan) -> range:
    return range(0, plan.warmup_steps * 2 + 3)


# --- linear and root ---------------------------------------------------------------------

@pytest.mark.parametrize("ramp", RAMPS, ids=str)
@pytest.mark.parametrize("schedule, level_of", [("linear", linear_level), ("root", root_level)])
def test_ramp_starts_at_start_is_monotone_and_holds_the_target(schedule, level_of, ramp):
    plan = ramp_plan(schedule, *ramp)
    levels = [level_of(step, plan) for step in steps_of(plan)]
    assert levels[0] == plan.start
    assert all(a <= b for a, b in zip(levels, levels[1:], strict=False))
    assert all(plan.start <= level <= plan.target for level in levels)
    assert level_of(plan.warmup_steps - 1, plan) < plan.target
    assert levels[plan.warmup_steps:] == [plan.target] * (len(levels) - plan.warmup_steps)
    assert level_of(10**9, plan) == plan.target
    assert all(isinstance(level, int) for level in levels)


@pytest.mark.parametrize("ramp", RAMPS, ids=str)
@pytest.mark.parametrize("schedule, level_of", [("linear", linear_level), ("root", root_level)])
def test_ramp_levels_are_on_the_grid(schedule, level_of, ramp):
    plan = ramp_plan(schedule, *ramp)
    for step in steps_of(plan):
        level = level_of(step, plan)
        assert level % plan.round_to == 0 or level in (plan.start, plan.target), (step, level)


@pytest.mark.parametrize("ramp", RAMPS, ids=str)
@pytest.mark.parametrize(("schedule", "level_of", "exact"), [
    ("linear", linear_level, exact_linear),  # start + range * progress, rounded down
    ("root", root_level, exact_root),  # start + range * sqrt(progress), rounded down
])
def test_ramp_levels_equal_the_exact_formula(schedule, level_of, exact, ramp):
    plan = ramp_plan(schedule, *ramp)
    wrong = [(step, level_of(step, plan), exact(step, plan)) for step in steps_of(plan)
             if level_of(step, plan) != exact(step, plan)]
    assert not wrong, f"(step, level, exact level): {wrong[:5]}"


@pytest.mark.parametrize("ramp", RAMPS, ids=str)
def test_root_is_never_below_linear(ramp):
    linear, root = ramp_plan("linear", *ramp), ramp_plan("root", *ramp)
    for step in steps_of(linear):
        assert root_level(step, root) >= linear_level(step, linear), step


def test_root_grows_faster_early():
    plan = ramp_plan("root", 10, 100, 1000, 10)
    # a quarter of the way: sqrt(0.25) = 0.5 of the range, linear only 0.25
    assert root_level(250, plan) == 55 // 10 * 10 == 50
    assert linear_level(250, dataclasses.replace(plan, schedule="linear")) == 30


# --- step ----------------------------------------------------------------------------------

def test_step_raises_by_increment_every_every_steps_and_caps_at_target():
    plan = Plan("step", target=45, start=10, every=100, increment=10)
    assert [step_level(s, plan) for s in (0, 1, 99, 100, 199, 200, 300, 399, 400, 10**6)] == [
        10, 10, 10, 20, 20, 30, 40, 40, 45, 45]
    for step in range(1, 1000):
        rise = step_level(step, plan) - step_level(step - 1, plan)
        if step % plan.every:
            assert rise == 0, step
        else:
            assert rise == min(plan.increment, plan.target - step_level(step - 1, plan)), step
    assert max(step_level(s, plan) for s in range(2000)) == plan.target


# --- competence --------------------------------------------------------------------------

COMPETENCE_CASES = [(c0, power, warmup) for c0 in (0.01, 0.1, 0.3, 0.5, 1.0)
                    for power in (1, 2) for warmup in (3, 100, 333, 1000)]


def competence_plan(c0: float, power: int, warmup: int, **keys) -> Plan:
    return Plan("competence", target=keys.pop("target", 100), start=keys.pop("start", 10),
                warmup_steps=warmup, competence_start=c0, power=power, **keys)


@pytest.mark.parametrize("c0, power, warmup", COMPETENCE_CASES)
def test_competence_starts_at_c0_rises_and_is_one_from_the_warmup_on(c0, power, warmup):
    plan = competence_plan(c0, power, warmup)
    values = [competence(step, plan) for step in range(2 * warmup + 3)]
    assert values[0] == pytest.approx(c0, rel=1e-12)
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    assert all(c0 - 1e-12 <= value <= 1.0 for value in values)
    assert values[warmup:] == [1.0] * (len(values) - warmup), values[warmup]


@pytest.mark.parametrize("c0, power, warmup", COMPETENCE_CASES)
def test_competence_level_reaches_the_target_at_the_warmup(c0, power, warmup):
    curriculum = Curriculum(competence_plan(c0, power, warmup, round_to=10))
    levels = [curriculum.at_step(step) for step in range(2 * warmup + 3)]
    assert all(a <= b for a, b in zip(levels, levels[1:], strict=False))
    assert levels[warmup:] == [100] * (len(levels) - warmup), levels[warmup]


@pytest.mark.parametrize("c0", [0.01, 0.1, 0.5])
def test_competence_power_1_is_linear_in_the_step(c0):
    plan = competence_plan(c0, 1, 1000)
    steps = np.arange(0, 1001)
    values = np.array([competence(int(s), plan) for s in steps])
    np.testing.assert_allclose(values, c0 + steps * (1 - c0) / 1000, rtol=1e-12)
    np.testing.assert_allclose(np.diff(values, 2), 0, atol=1e-12)  # constant slope


@pytest.mark.parametrize("c0", [0.01, 0.1, 0.5])
def test_competence_power_2_is_platanios_square_root(c0):
    plan = competence_plan(c0, 2, 1000)
    for step in range(0, 1001, 7):
        expected = math.sqrt(step * (1 - c0**2) / 1000 + c0**2)
        assert competence(step, plan) == pytest.approx(expected, rel=1e-12), step
    # square root: faster than linear before the warmup's end
    linear = competence_plan(c0, 1, 1000)
    assert all(competence(s, plan) > competence(s, linear) for s in range(1, 1000))


# --- difficulties ------------------------------------------------------------------------

def draws(curriculum: Curriculum, batches: int = 400, batch_size: int = 64) -> np.ndarray:
    rng = rng_for(0, 0, 0)
    return np.concatenate([curriculum.difficulties(rng, batch_size) for _ in range(batches)])


def test_none_gives_the_target_to_every_row():
    curriculum = Curriculum(Plan("none", target=80, start=10))
    for step in (0, 1, 500, 10**6):
        assert curriculum.at_step(step) == 80
        np.testing.assert_array_equal(curriculum.difficulties(rng_for(0, 0, step), 32), 80)


@pytest.mark.parametrize("schedule", ["linear", "root", "step"])
def test_step_driven_ramps_give_every_row_the_current_level(schedule):
    plan = Plan(schedule, target=100, start=10, warmup_steps=300, round_to=10, every=50)
    curriculum = Curriculum(plan)
    level_of = {"linear": linear_level, "root": root_level, "step": step_level}[schedule]
    seen = set()
    for step in range(0, 400, 13):
        level = curriculum.at_step(step)
        assert level == curriculum.level == level_of(step, plan)
        rows = curriculum.difficulties(rng_for(0, 0, step), 32)
        assert rows.shape == (32,)
        np.testing.assert_array_equal(rows, level)
        seen.add(level)
    assert len(seen) > 3  # the level did move


def test_competence_draws_between_start_and_the_current_bound():
    curriculum = Curriculum(competence_plan(0.1, 2, 1000, round_to=10))
    for step in (0, 100, 400, 1000):
        bound = curriculum.at_step(step)
        rows = draws(curriculum, batches=50)
        assert rows.min() == 10 and rows.max() == bound, step
        assert set(np.unique(rows)) <= {10, *range(20, bound + 1, 10), bound}
    assert bound == 100


@pytest.mark.parametrize("start, target, round_to, grid", [
    (10, 100, 10, list(range(10, 101, 10))),
    (15, 95, 10, [15, *range(20, 91, 10), 95]),
    (3, 12, 1, list(range(3, 13))),
])
def test_mixed_is_uniform_over_the_grid_from_start_to_target(start, target, round_to, grid):
    curriculum = Curriculum(Plan("mixed", target=target, start=start, round_to=round_to))
    assert curriculum.at_step(0) == curriculum.at_step(10**6) == target
    rows = draws(curriculum)  # 25,600 rows
    n, k = len(rows), len(grid)
    assert sorted(np.unique(rows)) == grid  # on the grid, both ends reached
    # mean: 5 standard errors of the mean of n uniform draws from the grid
    sd = float(np.std(grid))
    assert abs(rows.mean() - np.mean(grid)) < 5 * sd / math.sqrt(n)
    # flat histogram: every bin within 5 binomial standard deviations of n/k
    counts = np.array([(rows == value).sum() for value in grid])
    assert np.all(np.abs(counts - n / k) < 5 * math.sqrt(n * (1 / k) * (1 - 1 / k))), counts


@pytest.mark.parametrize("level_raises", [0, 4])
def test_combined_replaces_a_mix_fraction_of_rows_with_mixed_draws(level_raises):
    plan = Plan("combined", target=100, start=10, round_to=10, increment=10,
                mix_fraction=0.3, threshold=1.0)
    curriculum = Curriculum(plan)
    for _ in range(level_raises):
        assert curriculum.after_validation(0.0)
    level = curriculum.level
    assert level == 10 + 10 * level_raises
    rows = draws(curriculum)
    n, grid_size = len(rows), 10
    # a row leaves the level when it is mixed (0.3) and its uniform draw is not the level
    expected = plan.mix_fraction * (1 - 1 / grid_size)
    share = float(np.mean(rows != level))
    assert abs(share - expected) < 5 * math.sqrt(expected * (1 - expected) / n), share
    assert sorted(np.unique(rows)) == list(range(10, 101, 10))  # mixed rows span the grid


def test_combined_with_mix_fraction_0_is_all_level_and_1_is_all_mixed():
    only_level = Curriculum(Plan("combined", target=100, start=10, mix_fraction=0.0,
                                 patience=1))
    np.testing.assert_array_equal(draws(only_level, batches=20), 10)
    all_mixed = draws(Curriculum(Plan("combined", target=100, start=10, round_to=10,
                                      mix_fraction=1.0, patience=1)))
    assert abs(float(np.mean(all_mixed == 10)) - 0.1) < 0.01


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_difficulties_are_deterministic_given_the_rng(schedule):
    plan = Plan(schedule, target=100, start=10, round_to=10, patience=1)
    curriculum = Curriculum(plan)
    curriculum.at_step(300)
    first = curriculum.difficulties(rng_for(1, 2, 3), 64)
    np.testing.assert_array_equal(first, curriculum.difficulties(rng_for(1, 2, 3), 64))
    assert first.dtype.kind == "i"


# --- naive and combined ------------------------------------------------------------------

def naive(**keys) -> Curriculum:
    keys = {"target": 50, "start": 10, "increment": 10, **keys}
    return Curriculum(Plan(keys.pop("schedule", "naive"), **keys))


@pytest.mark.parametrize("schedule", PROGRESS_DRIVEN)
def test_naive_rises_when_the_level_loss_reaches_the_threshold(schedule):
    curriculum = naive(schedule=schedule, threshold=0.1, patience=0)
    assert curriculum.uses_level_validation
    assert curriculum.at_step(10**6) == 10  # steps alone do not move it
    assert [curriculum.after_validation(loss) for loss in (0.5, 0.3, 0.2)] == [False] * 3
    assert curriculum.level == 10
    assert curriculum.after_validation(0.1)  # <= threshold, boundary included
    assert curriculum.level == 20
    assert curriculum.after_validation(0.05)
    assert curriculum.level == 30


@pytest.mark.parametrize("schedule", PROGRESS_DRIVEN)
def test_naive_rises_after_patience_validations_without_improvement(schedule):
    curriculum = naive(schedule=schedule, threshold=0.0, patience=3)
    risen = [curriculum.after_validation(loss) for loss in (1.0, 1.0, 1.5, 1.2)]
    assert risen == [False, False, False, True]
    assert curriculum.level == 20


@pytest.mark.parametrize("schedule", PROGRESS_DRIVEN)
def test_naive_does_not_rise_while_improving(schedule):
    curriculum = naive(schedule=schedule, threshold=0.01, patience=2)
    losses = np.linspace(1.0, 0.02, 50)
    assert not any(curriculum.after_validation(float(loss)) for loss in losses)
    assert curriculum.level == 10


@pytest.mark.parametrize("schedule", PROGRESS_DRIVEN)
def test_naive_never_exceeds_the_target(schedule):
    curriculum = naive(schedule=schedule, target=35, threshold=1.0, patience=1)
    assert [curriculum.after_validation(0.5) for _ in range(5)] == [True] * 3 + [False] * 2
    assert curriculum.level == 35
    assert curriculum.difficulties(rng_for(0, 0, 0), 8).max() <= 35


def test_naive_counters_reset_after_a_rise():
    curriculum = naive(threshold=0.0, patience=2)
    assert [curriculum.after_validation(x) for x in (1.0, 2.0, 2.0)] == [False, False, True]
    assert curriculum.state_dict() == {"level": 20, "best": math.inf, "stale": 0}
    # 5.0 is worse than every loss so far, but the new level starts a fresh best: it is an
    # improvement, so two more stale validations are needed before the next rise
    assert [curriculum.after_validation(x) for x in (5.0, 5.0, 5.0)] == [False, False, True]
    assert curriculum.level == 30


def test_combined_moves_its_level_exactly_like_naive():
    keys = {"target": 100, "threshold": 0.2, "patience": 2}
    plain, combined = naive(**keys), naive(schedule="combined", mix_fraction=0.5, **keys)
    losses = rng_for(5, 0).uniform(0.1, 1.0, size=200)
    for loss in losses:
        assert plain.after_validation(float(loss)) == combined.after_validation(float(loss))
        assert plain.level == combined.level
    assert plain.level == 100


@pytest.mark.parametrize("schedule", STEP_DRIVEN)
def test_step_driven_schedules_ignore_validations(schedule):
    curriculum = Curriculum(Plan(schedule, target=100, start=10, threshold=1.0, patience=1))
    assert not curriculum.uses_level_validation
    before = curriculum.at_step(200)
    assert not any(curriculum.after_validation(loss) for loss in (0.0, 5.0, 5.0, 5.0))
    assert curriculum.level == before == curriculum.at_step(200)


# --- state_dict ----------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", PROGRESS_DRIVEN)
def test_a_loaded_state_continues_exactly_like_the_original(schedule):
    keys = {"schedule": schedule, "target": 100, "threshold": 0.05, "patience": 3}
    original = naive(**keys)
    for loss in (0.04, 1.0, 0.9, 1.1, 1.2):  # one rise, then two stale validations
        original.after_validation(loss)
    state = original.state_dict()
    assert state == {"level": 20, "best": 0.9, "stale": 2}

    resumed = naive(**keys)
    resumed.load_state_dict(pickle.loads(pickle.dumps(copy.deepcopy(state))))
    untouched = naive(**keys)  # control: without the state the reaction differs
    assert resumed.state_dict() == state
    future = (0.95, 0.7, 0.75, 0.76, 0.77, 0.04, 0.5, 0.5, 0.5, 0.5)
    reactions = [[(c.after_validation(x), c.level) for x in future] for c in (original, resumed)]
    assert reactions[0] == reactions[1]
    assert reactions[0][0] == (True, 30)  # the third stale validation raises at once
    assert original.state_dict() == resumed.state_dict()
    assert untouched.after_validation(future[0]) is False
    rng_a, rng_b = rng_for(0, 0, 9), rng_for(0, 0, 9)
    np.testing.assert_array_equal(original.difficulties(rng_a, 64),
                                  resumed.difficulties(rng_b, 64))


@pytest.mark.parametrize("schedule", STEP_DRIVEN)
def test_a_loaded_step_driven_state_continues_like_the_original(schedule):
    plan = Plan(schedule, target=100, start=10, warmup_steps=100, every=20, round_to=10)
    original = Curriculum(plan)
    original.at_step(37)
    resumed = Curriculum(plan)
    resumed.load_state_dict(original.state_dict())
    assert resumed.level == original.level
    for step in range(38, 150):
        assert resumed.at_step(step) == original.at_step(step)


# --- config --------------------------------------------------------------------------------

def config_of(curriculum: dict, **task) -> Config:
    return Config.from_dict({"task": {"seq_len": 100, **task}, "curriculum": curriculum})


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_is_accepted_and_makes_a_plan(schedule):
    config = config_of({"schedule": schedule})
    assert config.curriculum.schedule == schedule
    curriculum = make_curriculum(config, state=None, quantiles=[])  # as the worker does
    assert curriculum.plan.target == 100
    curriculum.at_step(1)
    assert 10 <= curriculum.level <= 100


def test_an_unknown_schedule_is_rejected():
    with pytest.raises(ConfigError, match="curriculum.schedule"):
        config_of({"schedule": "exponential"})


@pytest.mark.parametrize("schedule", PROGRESS_DRIVEN)
def test_progress_driven_without_threshold_or_patience_is_rejected(schedule):
    with pytest.raises(ConfigError, match="curriculum.threshold"):
        config_of({"schedule": schedule, "threshold": 0.0, "patience": 0})
    config_of({"schedule": schedule, "threshold": 0.1, "patience": 0})
    config_of({"schedule": schedule, "threshold": 0.0, "patience": 2})


def test_start_above_the_task_length_is_rejected():
    with pytest.raises(ConfigError, match=r"curriculum\.start \(101\)"):
        config_of({"schedule": "linear", "start": 101})
    config_of({"schedule": "linear", "start": 100})


def test_a_difficulty_column_is_for_parquet_only():
    with pytest.raises(ConfigError, match="curriculum.difficulty"):
        config_of({"schedule": "linear", "difficulty": "rank"})
    config = config_of({"schedule": "linear", "difficulty": "rank", "start": 1000},
                       name="parquet", path="/data")
    assert config.curriculum.difficulty == "rank"  # start is checked against the data


def plan_on_data(schedule: str, **keys) -> Plan:
    quantiles = tuple(range(5, 106))  # difficulties 5..105, one per percentile
    return Plan(schedule=schedule, target=quantiles[-1], start=5, quantiles=quantiles, **keys)


def test_competence_on_data_admits_the_easiest_fraction_of_rows():
    plan = plan_on_data("competence", competence_start=0.1, warmup_steps=100, power=1)
    curriculum = Curriculum(plan)
    for step in (0, 30, 60, 100):
        curriculum.at_step(step)
        c = competence(step, plan)
        assert curriculum.level == plan.quantiles[round(c * 100)]
    rows = np.arange(5, 106)
    curriculum.at_step(30)
    admitted = curriculum.keep(np.random.default_rng(0), rows)
    assert admitted.mean() == pytest.approx(competence(30, plan), abs=0.02)


@pytest.mark.parametrize("schedule", ["linear", "root", "step", "naive", "competence"])
def test_keep_admits_exactly_the_rows_at_or_below_the_level(schedule):
    curriculum = Curriculum(plan_on_data(schedule, warmup_steps=100, every=10, patience=1))
    curriculum.at_step(40)
    rows = np.arange(5, 106)
    np.testing.assert_array_equal(curriculum.keep(np.random.default_rng(0), rows),
                                  rows <= curriculum.level)


def test_keep_admits_every_row_for_none_and_mixed():
    rows = np.arange(5, 106)
    for schedule in ("none", "mixed"):
        assert Curriculum(plan_on_data(schedule)).keep(np.random.default_rng(0), rows).all()


def test_combined_also_admits_a_mix_fraction_of_harder_rows():
    curriculum = Curriculum(plan_on_data("combined", patience=1, mix_fraction=0.3))
    rows = np.full(20_000, 100)  # all above the starting level
    admitted = curriculum.keep(np.random.default_rng(0), rows)
    assert admitted.mean() == pytest.approx(0.3, abs=0.02)


@pytest.mark.parametrize("power", [0, 3, -1])
def test_power_must_be_1_or_2(power):
    with pytest.raises(ConfigError, match="curriculum.power"):
        config_of({"schedule": "competence", "power": power})


@pytest.mark.parametrize("power", [1, 2])
def test_power_1_and_2_are_accepted(power):
    assert config_of({"schedule": "competence", "power": power}).curriculum.power == power
