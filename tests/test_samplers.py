"""`search_alg.sampler` and `constraints`: each sampler built seeded, refused where it cannot work,
constraint values on the Optuna trial before the sampler sees it, fed fabricated results."""
from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest

from sweeper.config import SweepConfigError, load_sweep
from sweeper.constraints import describe, feasible, keys, violations
from sweeper.schema import SAMPLERS, Constraint
from sweeper.search import build_sampler, build_searcher
from sweeper.spaces import to_optuna

State = optuna.trial.TrialState
SWEEP = """name: s
task: noop
search:
  x: {uniform: [0, 1]}
  y: {uniform: [0, 1]}
objective: {metric: score}
scheduler: {name: fifo}
budget: {num_samples: 8}
"""
CLASSES = {"tpe": "TPESampler", "gp": "GPSampler", "cmaes": "CmaEsSampler", "qmc": "QMCSampler",
           "random": "RandomSampler", "nsga2": "NSGAIISampler"}


def _sweep(tmp_path: Path, *sets: str):  # noqa: ANN202 - a Sweep
    (tmp_path / "s.yaml").write_text(SWEEP)
    return load_sweep(tmp_path / "s.yaml", list(sets), cwd=tmp_path)


def _first_points(sampler: optuna.samplers.BaseSampler, dists: dict, n: int) -> list[dict]:
    """What `sampler` proposes for n trials told the noop score (ask/tell, as the searcher drives it)."""
    study = optuna.create_study(sampler=sampler, direction="maximize")
    points = []
    for _ in range(n):
        trial = study.ask(fixed_distributions=dists)
        points.append(trial.params)
        study.tell(trial, 1 - (trial.params["x"] - 0.3) ** 2 - (trial.params["y"] - 0.7) ** 2)
    return points


def test_every_sampler_is_listed_in_the_schema() -> None:
    assert set(SAMPLERS) == set(CLASSES)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_each_sampler_is_built_and_the_same_seed_gives_the_same_points(tmp_path: Path, name: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sweep = _sweep(tmp_path, f"search_alg.sampler={name}", "search_alg.seed=7")
    assert type(build_sampler(sweep)).__name__ == CLASSES[name]
    dists = to_optuna(sweep.dimensions)
    n = 4
    first = _first_points(build_sampler(sweep), dists, n)
    assert first == _first_points(build_sampler(sweep), dists, n)
    other = _first_points(build_sampler(_sweep(tmp_path, f"search_alg.sampler={name}", "search_alg.seed=8")), dists, n)
    assert first != other
    assert all(0 <= p["x"] <= 1 and 0 <= p["y"] <= 1 for p in first)


def test_qmc_and_cmaes_propose_other_points_than_tpe_with_the_same_seed(tmp_path: Path) -> None:
    """Their first trial is an independent (random) draw, as TPE's; the next ones are their own."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    dists = to_optuna(_sweep(tmp_path).dimensions)
    tpe = _first_points(build_sampler(_sweep(tmp_path, "search_alg.seed=3")), dists, 3)
    for name in ("qmc", "cmaes"):
        own = _first_points(build_sampler(_sweep(tmp_path, f"search_alg.sampler={name}", "search_alg.seed=3")), dists, 3)
        assert own[1:] != tpe[1:], name


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_a_searcher_with_each_sampler_pickles(tmp_path: Path, name: str) -> None:
    """Tune saves the searcher into the experiment state; an unpicklable sampler kills the sweep."""
    sweep = _sweep(tmp_path, f"search_alg.sampler={name}", "constraints=[{metric: cost, max: 0.8}]")
    limiter = build_searcher(sweep, max_concurrent=2)
    limiter.suggest("t1")
    limiter.save(str(tmp_path / f"{name}.pkl"))
    assert type(pickle.loads(pickle.dumps(limiter.searcher.study.sampler))).__name__ == CLASSES[name]


@pytest.mark.parametrize("sets, field, words", [
    (["search_alg.sampler=cmaes", "objective=[{metric: score}, {metric: cost, mode: min}]"],
     "search_alg.sampler", "optimises one objective and this sweep has 2"),
    (["search_alg={name: random, sampler: gp}"], "search_alg.sampler", "set search_alg.name: optuna"),
    (["search_alg.sampler=hyperopt"], "search_alg.sampler", "Input should be"),
    (["constraints=[{metric: costs, max: 1}]"], "constraints[0].metric", "does not report 'costs' (did you mean 'cost'?)"),
    (["constraints=[{metric: score}, {metric: cost, max: 1}]"], "constraints.0", "give max, min or both"),
    (["constraints=[{metric: cost, min: 2, max: 1}]"], "constraints.0", "no trial could be feasible"),
])
def test_bad_samplers_and_constraints_are_refused_naming_the_field(tmp_path: Path, sets: list[str], field: str,
                                                                   words: str) -> None:
    with pytest.raises(SweepConfigError) as exc:
        _sweep(tmp_path, *sets)
    assert exc.value.field == field and words in exc.value.message


def test_nsga2_is_allowed_with_one_objective_and_every_multi_objective_sampler_with_two(tmp_path: Path) -> None:
    assert _sweep(tmp_path, "search_alg.sampler=nsga2").spec.search_alg.sampler == "nsga2"
    for name in ("tpe", "gp", "qmc", "random", "nsga2"):
        sweep = _sweep(tmp_path, f"search_alg.sampler={name}", "objective=[{metric: score}, {metric: cost, mode: min}]")
        assert len(sweep.objectives) == 2


@pytest.mark.parametrize("constraint, value, violation, ok", [
    ({"metric": "m", "max": 30}, 31.5, 1.5, False),
    ({"metric": "m", "max": 30}, 30, 0.0, True),
    ({"metric": "m", "min": 50}, 40, 10.0, False),
    ({"metric": "m", "min": 50}, 60, -10.0, True),
    ({"metric": "m", "min": 1, "max": 2}, 3, 1.0, False),
    ({"metric": "m", "min": 1, "max": 2}, 0, 1.0, False),
    ({"metric": "m", "max": 30}, None, 1.0, None),          # never reported: violated for Optuna, unknown on the board
    ({"metric": "m", "max": 30}, float("nan"), 1.0, None),
])
def test_violations_and_feasibility(constraint: dict, value: float | None, violation: float, ok: bool | None) -> None:
    cs = [Constraint(**constraint)]
    metrics = {} if value is None else {"m": value}
    assert violations(cs, metrics) == [pytest.approx(violation)]
    assert feasible(cs, metrics) is ok


def test_no_constraints_means_no_verdict_and_descriptions_read_as_bounds() -> None:
    assert feasible([], {"m": 1}) is None
    cs = [Constraint(metric="a", max=30), Constraint(metric="b", min=5), Constraint(metric="a", min=1, max=2)]
    assert describe(cs) == "a <= 30, b >= 5, 1 <= a <= 2"
    assert keys(cs) == ["0:a", "1:b", "2:a"]


def test_finished_and_pruned_trials_reach_the_sampler_with_their_constraint_values(tmp_path: Path) -> None:
    """Set before `tell`, so TPE's after_trial and its next proposal see them (Optuna 5 reads
    `trial.constraints`; `constraints_func` is deprecated)."""
    sweep = _sweep(tmp_path, "constraints=[{metric: cost, max: 0.8}]", "scheduler={name: asha, max_t: 3}",
                   "train.epochs=3")
    s = build_searcher(sweep, max_concurrent=4).searcher
    for i in range(3):
        s.suggest(f"t{i}")
    s.on_trial_result("t0", {"epoch": 1, "score": 0.5, "cost": 0.5})
    s.on_trial_complete("t0", {"epoch": 3, "epochs_total": 3, "score": 0.9, "cost": 0.5})  # feasible
    s.on_trial_complete("t1", {"epoch": 3, "epochs_total": 3, "score": 0.95, "cost": 1.2})  # infeasible
    s.on_trial_complete("t2", {"epoch": 1, "epochs_total": 3, "score": 0.1, "cost": 0.9})  # pruned, infeasible
    trials = s.study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [State.COMPLETE, State.COMPLETE, State.PRUNED]
    assert [t.constraints for t in trials] == [{"0:cost": pytest.approx(-0.3)}, {"0:cost": pytest.approx(0.4)},
                                               {"0:cost": pytest.approx(0.1)}]
    from optuna.study._constrained_optimization import _get_feasible_trials

    assert [t.number for t in _get_feasible_trials(trials)] == [0]


def test_samplers_that_ignore_constraints_are_not_given_them(tmp_path: Path) -> None:
    """CmaEs warns on every trial that carries constraints it will not use; random and qmc ignore them."""
    for name in ("cmaes", "qmc", "random"):
        sweep = _sweep(tmp_path, f"search_alg.sampler={name}", "constraints=[{metric: cost, max: 0.8}]")
        s = build_searcher(sweep, max_concurrent=1).searcher
        s.suggest("t0")
        s.on_trial_complete("t0", {"epoch": 1, "epochs_total": 1, "score": 0.9, "cost": 1.5})
        assert s.study.get_trials(deepcopy=False)[0].constraints == {}, name
