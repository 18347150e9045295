"""Where a search starts: `search.start_from` points (checked against the space, enqueued first)
and `search.warm_start` (an earlier sweep's trials from a real MLflow store, restricted to the
shared keys and the new ranges, added to the study once: a restored searcher does not re-import)."""
from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest

from sweeper.config import SweepConfigError, load_sweep
from sweeper.config.search_start import search_start
from sweeper.schema import Objective
from sweeper.search import build_searcher
from sweeper.spaces import parse_search
from sweeper.warm_start import COMPLETE, PRUNED, load, plan_lines, select

State = optuna.trial.TrialState
SWEEP = """name: new
task: noop
base: {train: {epochs: 3}}
search:
  x: {uniform: [0, 1]}
  y: {quniform: [0, 1, 0.25]}
objective: {metric: score}
scheduler: {name: fifo}
budget: {num_samples: 6}
"""


def _sweep(tmp_path: Path, *sets: str, text: str = SWEEP):  # noqa: ANN202 - a Sweep
    (tmp_path / "s.yaml").write_text(text)
    return load_sweep(tmp_path / "s.yaml", ["tracking.uri=sqlite:///mlruns.db", *sets], cwd=tmp_path)


@pytest.mark.parametrize("value, field, words", [
    ("[{x: 1.5}]", "search.start_from[0].x", "1.5 is outside [0, 1]"),
    ("[{x: 0.5}, {y: 0.3}]", "search.start_from[1].y", "not on the grid of step 0.25"),
    ("[{x: 0.5, z: 1}]", "search.start_from[0].z", "'z' is not searched"),
    ("[{x: 0.5, train.lr: 1}]", "search.start_from[0].train.lr", "a start point sets searched keys only (x, y)"),
    ("[{x: high}]", "search.start_from[0].x", "'high' is not a number"),
    ("[]", "search.start_from", "must be a list of points"),
    ("[0.5]", "search.start_from[0]", "must be a mapping of searched keys"),
    ("[{x: 0.1}, {x: 0.2}, {x: 0.3}, {x: 0.4}, {x: 0.5}, {x: 0.6}, {x: 0.7}]", "search.start_from", "lists 7 points"),
])
def test_start_points_outside_the_space_are_refused_naming_the_point_and_key(tmp_path: Path, value: str, field: str,
                                                                           words: str) -> None:
    with pytest.raises(SweepConfigError) as exc:
        _sweep(tmp_path, f"search.start_from={value}")
    assert exc.value.field == field and words in exc.value.message


@pytest.mark.parametrize("value, field, words", [
    ("nope", "search.warm_start", "must be {sweep: NAME} or a list"),
    ("{name: pilot}", "search.warm_start", "must be {sweep: NAME}"),
    ("{sweep: pilot, since: 2}", "search.warm_start.since", "unknown key"),
    ("[{sweep: pilot}, {sweep: '../x'}]", "search.warm_start[1].sweep", "is not a sweep name"),
])
def test_malformed_warm_starts_are_refused_at_load(tmp_path: Path, value: str, field: str, words: str) -> None:
    with pytest.raises(SweepConfigError) as exc:
        _sweep(tmp_path, f"search.warm_start={value}")
    assert exc.value.field == field and words in exc.value.message


def test_a_grid_search_takes_no_start_points(tmp_path: Path) -> None:
    text = SWEEP.replace("x: {uniform: [0, 1]}", "x: {grid: [0.1, 0.2]}").replace("y: {quniform: [0, 1, 0.25]}",
                                                                              "y: {grid: [0.5]}")
    with pytest.raises(SweepConfigError, match="search.start_from: a grid runs every point"):
        _sweep(tmp_path, "search_alg.name=grid", "search.start_from=[{x: 0.1}]", text=text)


def test_start_points_are_typed_as_the_space_holds_them_and_not_searched_keys(tmp_path: Path) -> None:
    text = SWEEP.replace("  y: {quniform: [0, 1, 0.25]}\n", "  y: {choice: [0.25, 0.5]}\n  train.sleep_s: {randint: [0, 2]}\n")
    sweep = _sweep(tmp_path, "search.start_from=[{x: 1e-1, train.sleep_s: 1}, {y: 0.5}]", text=text)
    assert [d.key for d in sweep.dimensions] == ["x", "y", "train.sleep_s"]  # start_from is not a dimension
    start = search_start(sweep.spec, sweep.dimensions)
    assert start.start_from == ({"x": 0.1, "train.sleep_s": 1}, {"y": 0.5})
    assert type(start.start_from[0]["train.sleep_s"]) is int and start.warm_start == ()
    assert plan_lines(sweep) == ["start from: 2 points first: x=0.1, train.sleep_s=1; y=0.5"]


def test_start_points_are_the_first_trials_the_searcher_proposes(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path, "search.start_from=[{x: 0.3, y: 0.75}, {x: 0.9}]")
    s = build_searcher(sweep, max_concurrent=4).searcher
    first, second, third = (s.suggest(f"t{i}") for i in range(3))
    assert first == {"x": 0.3, "y": 0.75}
    assert second["x"] == 0.9 and second["y"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # y left out: sampled
    assert third not in (first, second)


# --------------------------------------------------------------------------- warm start, pure
def _trial(status: str, x: str, scores: list[float], **extra: object) -> dict:
    return {"trial": f"t{x}", "status": status, "stop_reason": extra.get("stop_reason"), "params": {"x": x, "z": "1"},
            "metrics": {"score": scores[-1], **({"cost": extra["cost"]} if "cost" in extra else {})} if scores else {},
            "best": extra.get("best"), "history": {"score": list(enumerate(scores, 1))} if scores else {}}


RECORD = {"searched": ["x", "z"], "trials": [
    _trial("finished", "0.3", [0.5, 0.8, 0.9], stop_reason="completed", cost=0.4),
    _trial("stopped", "0.9", [0.2], stop_reason="asha", cost=1.4),
    _trial("finished", "0.5", [0.6, 0.7, 0.65], stop_reason="patience", best=0.7),
    _trial("finished", "1.5", [0.1, 0.2, 0.3]),   # outside the new range [0, 1]
    _trial("finished", "0.4", []),                 # never reported the objective
    _trial("failed", "0.2", [0.1]),
    _trial("running", "0.1", [0.1]),
]}


def test_select_keeps_finished_and_pruned_trials_on_the_shared_keys_inside_the_new_space() -> None:
    from sweeper.schema import Constraint

    dims = parse_search({"x": {"uniform": [0, 1]}, "y": {"uniform": [0, 1]}})
    trials, source = select("pilot", RECORD, dims, [Objective(metric="score")], [Constraint(metric="cost", max=1)])
    assert (source.shared, source.imported, source.outside, source.no_objective, source.unfinished) == \
        (["x"], 3, 1, 1, 2)
    done, pruned, converged = trials
    assert (done.params, done.state, done.values, done.intermediate) == ({"x": 0.3}, COMPLETE, [0.9],
                                                                          {1: 0.5, 2: 0.8, 3: 0.9})
    assert done.constraints == [pytest.approx(-0.6)] and pruned.constraints == [pytest.approx(0.4)]
    assert (pruned.state, pruned.values, pruned.intermediate) == (PRUNED, None, {1: 0.2})
    assert converged.values == [0.7]  # early stopping ended it: its best, as the live searcher tells it
    assert converged.constraints == [1.0]  # it never reported cost: infeasible for the sampler


def test_select_matches_choices_by_their_text_and_multi_objective_needs_every_value() -> None:
    dims = parse_search({"z": {"choice": [1, 2]}})
    trials, source = select("pilot", RECORD, dims, [Objective(metric="score"), Objective(metric="cost", mode="min")], [])
    assert source.imported == 2 and trials[0].values == [0.9, 0.4] and trials[0].params == {"z": 1}
    assert trials[0].intermediate == {} == trials[1].intermediate  # none for several objectives (Optuna keeps none)
    assert trials[1].state == PRUNED and trials[1].values is None  # a pruned trial needs no values
    assert source.no_objective == 3  # three finished ones lack cost (or score)


# --------------------------------------------------------------------------- warm start, real MLflow store
def _store(tmp_path: Path) -> None:
    """A sqlite store with sweep `pilot` (searched x and z) of RECORD's first four trials, and `other` (searched w)."""
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    for name, searched in (("pilot", '["x", "z"]'), ("other", '["w"]')):
        exp = c.create_experiment(name)
        parent = c.create_run(exp, tags={"sweeper.kind": "sweep", "sweeper.task": "noop", "sweeper.objective": "score",
                                         "sweeper.mode": "max", "sweeper.searched": searched})
        for t in RECORD["trials"][:4] if name == "pilot" else []:
            run = c.create_run(exp, tags={"sweeper.kind": "trial", "sweeper.trial_id": t["trial"],
                                          "sweeper.status": t["status"], "mlflow.parentRunId": parent.info.run_id,
                                          **({"sweeper.stop_reason": t["stop_reason"]} if t["stop_reason"] else {})})
            for k, v in t["params"].items():
                c.log_param(run.info.run_id, k, v)
            for step, value in t["history"]["score"]:
                c.log_metric(run.info.run_id, "score", value, step=step)
            if t["best"] is not None:
                c.log_metric(run.info.run_id, "best_objective", t["best"])


def test_warm_start_reads_the_earlier_sweep_and_the_study_holds_it_once_after_a_restore(tmp_path: Path) -> None:
    _store(tmp_path)
    sweep = _sweep(tmp_path, "search.warm_start={sweep: pilot}", "search.start_from=[{x: 0.25, y: 0.5}]")
    plan = load(sweep)
    assert len(plan.trials) == 3 and plan.sources[0].outside == 1
    assert plan.summary() == "pilot: 3 trials imported on x, skipped 1 outside the space"
    assert plan.tags()["sweeper.warm_start_trials"] == "3"
    assert any(line.startswith("warm start: 3 earlier trials seed the sampler") for line in plan_lines(sweep))
    limiter = build_searcher(sweep, max_concurrent=2)
    s = limiter.searcher
    trials = s.study.get_trials(deepcopy=False)
    assert trials[-1].state == State.WAITING  # the start point, enqueued after the imports
    imported = {t.user_attrs["sweeper.imported_from"]: t for t in trials[:-1]}
    assert sorted(imported) == ["pilot/t0.3", "pilot/t0.5", "pilot/t0.9"]
    done, pruned = imported["pilot/t0.3"], imported["pilot/t0.9"]
    assert (done.state, done.params, done.value, done.intermediate_values) == (State.COMPLETE, {"x": 0.3}, 0.9,
                                                                               {1: 0.5, 2: 0.8, 3: 0.9})
    assert (pruned.state, pruned.intermediate_values) == (State.PRUNED, {1: 0.2})
    assert imported["pilot/t0.5"].value == 0.7  # patience: its best_objective
    assert s.suggest("a") == {"x": 0.25, "y": 0.5}  # the start point is the first trial
    limiter.save(str(tmp_path / "searcher.pkl"))
    restored = pickle.loads(pickle.dumps(limiter))  # as Tune restores it: unpickled from tuner.pkl, then its state
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert len(restored.searcher.study.get_trials(deepcopy=False)) == 4  # 3 imported + the start point, once


@pytest.mark.parametrize("value, field, words", [
    ("{sweep: nope}", "search.warm_start.sweep", "no sweep named 'nope' in sqlite:///"),
    ("[{sweep: pilot}, {sweep: nope}]", "search.warm_start[1].sweep", "the sweeps there: other, pilot"),
    ("{sweep: other}", "search.warm_start.sweep", "sweep 'other' searched w; this sweep searches x, y: no key in common"),
])
def test_warm_start_of_a_sweep_the_store_lacks_or_that_shares_nothing_is_refused(tmp_path: Path, value: str,
                                                                                field: str, words: str) -> None:
    _store(tmp_path)
    with pytest.raises(SweepConfigError) as exc:
        load(_sweep(tmp_path, f"search.warm_start={value}"))
    assert exc.value.field == field and words in exc.value.message


def test_warm_start_without_the_store_says_which_store_it_looked_in(tmp_path: Path) -> None:
    with pytest.raises(SweepConfigError, match="search.warm_start.sweep: no MLflow store at .*mlruns.db"):
        load(_sweep(tmp_path, "search.warm_start={sweep: pilot}"))
