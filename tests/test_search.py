"""The searcher wrapper: ASHA-stopped trials reach Optuna as PRUNED, trials that ended themselves
(patience, their script) as COMPLETE, fed fabricated results."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from sweeper.config import load_sweep
from sweeper.results import stopped_early
from sweeper.search import PrunedAwareOptunaSearch, build_sampler
from sweeper.spaces import parse_space, to_optuna

State = optuna.trial.TrialState


def make_searcher(mode: str = "max") -> PrunedAwareOptunaSearch:
    space = to_optuna([parse_space("train.lr", {"loguniform": [1e-4, 1e-1]})])
    return PrunedAwareOptunaSearch(space=space, metric="map50", mode=mode,
                                   sampler=optuna.samplers.TPESampler(seed=0), max_t=6)


def result(epoch: int, value: float, total: int = 6) -> dict:
    return {"epoch": epoch, "epochs_total": total, "map50": value, "training_iteration": epoch, "done": True}


@pytest.mark.parametrize("res, expected", [
    (result(2, 0.1), True),                 # ASHA stopped it at epoch 2 of 6 (Ray also says done)
    (result(6, 0.4), False),                # ran its course
    (result(3, 0.4, total=3), False),       # a trial whose own epochs were 3
    ({"epoch": 6, "epochs_total": 10}, False),  # reached max_t (6) before its epochs
    (None, False),
])
def test_stopped_early(res: dict | None, expected: bool) -> None:
    assert stopped_early(res, max_t=6) is expected


def test_stopped_trials_are_pruned_and_finished_ones_complete() -> None:
    s = make_searcher()
    params = [s.suggest(f"t{i}") for i in range(3)]
    assert all(0 < p["train.lr"] < 0.1 for p in params)
    for epoch in range(1, 7):
        s.on_trial_result("t0", result(epoch, 0.1 * epoch))
    s.on_trial_complete("t0", result(6, 0.6))
    s.on_trial_result("t1", result(1, 0.05))
    s.on_trial_result("t1", result(2, 0.07))
    s.on_trial_complete("t1", result(2, 0.07))  # ASHA's stop at the epoch-2 rung
    s.on_trial_complete("t2", None, error=True)
    trials = {t.number: t for t in s.study.get_trials(deepcopy=False)}
    assert trials[0].state == State.COMPLETE and trials[0].value == pytest.approx(0.6)
    assert trials[0].intermediate_values == {e: pytest.approx(0.1 * e) for e in range(1, 7)}
    assert trials[1].state == State.PRUNED
    assert trials[1].intermediate_values == {1: 0.05, 2: 0.07}
    assert trials[2].state == State.FAIL
    s.on_trial_complete("t1", result(2, 0.07))  # a duplicate completion changes nothing
    assert s.study.get_trials(deepcopy=False)[1].state == State.PRUNED


def test_trials_that_ended_themselves_complete_and_asha_cuts_are_pruned() -> None:
    """Patience: COMPLETE with the best value (it converged; its best checkpoint is kept). The
    script's own stop: COMPLETE with its last value, as a trial that ran its course. ASHA's cut
    (marked by PersistentASHA) and an early end with no reason (the sweep stopped it): PRUNED."""
    s = make_searcher()
    for i in range(4):
        s.suggest(f"t{i}")
    for epoch, value in [(1, 0.5), (2, 0.4), (3, 0.45)]:
        s.on_trial_result("t0", result(epoch, value))
    s.on_trial_complete("t0", {**result(3, 0.45), "best_objective": 0.5, "best_epoch": 1, "stop_reason": "patience"})
    s.on_trial_result("t1", result(2, 0.3))
    s.on_trial_result("t1", {**result(2, 0.3), "stop_reason": "script"})  # the repeated report: not told twice
    s.on_trial_complete("t1", {**result(2, 0.3), "best_objective": 0.3, "stop_reason": "script"})
    s.on_trial_complete("t2", {**result(2, 0.2), "stop_reason": "asha"})
    s.on_trial_complete("t3", result(4, 0.2))
    trials = {t.number: t for t in s.study.get_trials(deepcopy=False)}
    assert trials[0].state == State.COMPLETE and trials[0].value == pytest.approx(0.5)
    assert trials[1].state == State.COMPLETE and trials[1].value == pytest.approx(0.3)
    assert trials[1].intermediate_values == {2: 0.3}
    assert trials[2].state == State.PRUNED and trials[3].state == State.PRUNED
    assert trials[2].intermediate_values == {2: 0.2}  # the value ASHA cut it with (Tune never passed it on)


def test_a_command_trial_on_steps_reports_intermediate_values_by_step() -> None:
    space = to_optuna([parse_space("lr", {"loguniform": [1e-4, 1e-1]})])
    s = PrunedAwareOptunaSearch(space=space, metric="val/acc", mode="max", max_t=300, time_attr="step",
                                sampler=optuna.samplers.TPESampler(seed=0))
    s.suggest("t0")
    s.suggest("t1")
    for step in (50, 100, 150):
        s.on_trial_result("t0", {"step": step, "epochs_total": 300, "val/acc": step / 300})
    s.on_trial_complete("t0", {"step": 150, "epochs_total": 300, "val/acc": 0.5, "stop_reason": "asha"})
    s.on_trial_complete("t1", {"step": 300, "epochs_total": 300, "val/acc": 0.9})
    t0, t1 = s.study.get_trials(deepcopy=False)
    assert t0.state == State.PRUNED and sorted(t0.intermediate_values) == [50, 100, 150]
    assert t1.state == State.COMPLETE and t1.value == pytest.approx(0.9)


def test_plain_ray_optuna_search_would_record_a_stop_as_complete() -> None:
    """Why the wrapper exists: Ray's own class tells Optuna the low-budget score is final."""
    from ray.tune.search.optuna import OptunaSearch

    space = to_optuna([parse_space("train.lr", {"loguniform": [1e-4, 1e-1]})])
    s = OptunaSearch(space=space, metric="map50", mode="max", sampler=optuna.samplers.TPESampler(seed=0))
    s.suggest("t1")
    s.on_trial_result("t1", result(2, 0.07))
    s.on_trial_complete("t1", result(2, 0.07))
    assert s._ot_study.get_trials()[0].state == State.COMPLETE


def test_samplers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = """
name: s
task: detection
data: {train: a.json, val: b.json, images: i, synth: {}}
search: {train.lr: {grid: [0.1, 0.01]}}
objective: {metric: map}
search_alg: {name: grid}
budget: {num_samples: 1}
"""
    (tmp_path / "s.yaml").write_text(text)
    sweep = load_sweep(tmp_path / "s.yaml")
    assert isinstance(build_sampler(sweep), optuna.samplers.GridSampler)
    sweep = load_sweep(tmp_path / "s.yaml", ["search_alg.name=random", "search.train.lr={choice: [0.1, 0.01]}"])
    assert isinstance(build_sampler(sweep), optuna.samplers.RandomSampler)
    sweep = load_sweep(tmp_path / "s.yaml", ["search_alg.name=optuna", "search.train.lr={choice: [0.1, 0.01]}"])
    assert isinstance(build_sampler(sweep), optuna.samplers.TPESampler)


def test_grid_sampler_survives_ask_tell_to_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Optuna's GridSampler calls study.stop() after the last point, which raises under ask/tell."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.yaml").write_text("""
name: g
task: detection
data: {train: a.json, val: b.json, images: i, synth: {}}
search: {train.lr: {grid: [0.1, 0.01, 0.001]}}
objective: {metric: map}
search_alg: {name: grid, seed: 0}
budget: {num_samples: 1}
""")
    sweep = load_sweep(tmp_path / "g.yaml")
    study = optuna.create_study(sampler=build_sampler(sweep), direction="maximize")
    dist = to_optuna(sweep.dimensions)
    seen = set()
    for _ in range(3):
        trial = study.ask(fixed_distributions=dist)
        seen.add(trial.params["train.lr"])
        study.tell(trial, 0.5)
    assert seen == {0.1, 0.01, 0.001}
    assert [t.state for t in study.trials] == [State.COMPLETE] * 3


def test_searcher_with_every_sampler_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tune saves the searcher into the experiment state; an unpicklable sampler kills the sweep."""
    import pickle

    from sweeper.search import build_searcher

    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text("""
name: p
task: detection
data: {train: a.json, val: b.json, images: i, synth: {}}
search: {train.lr: {choice: [0.1, 0.01]}}
objective: {metric: map}
budget: {num_samples: 2}
""")
    for alg in ("optuna", "random", "grid"):
        sweep = load_sweep(tmp_path / "p.yaml", [f"search_alg.name={alg}"])
        searcher = build_searcher(sweep, max_concurrent=2)
        searcher.suggest("t1")
        searcher.save(str(tmp_path / f"{alg}.pkl"))
        assert pickle.loads(pickle.dumps(searcher.searcher.study.sampler)).__class__.__name__


def test_multi_objective_search_completes_finished_trials_and_prunes_stopped_ones(tmp_path: Path) -> None:
    """Optuna's multi-objective TPE gets both values; an ASHA stop is PRUNED; no intermediate reports
    (Optuna keeps none for multi-objective studies and would raise)."""
    from sweeper.search import build_searcher

    from sweeper.tasks.detection.synth import make_synthetic_coco

    make_synthetic_coco(tmp_path / "d", images=2, size=32, seed=0)  # real: the driver reads it before dispatch
    sweep_file = tmp_path / "mo.yaml"
    sweep_file.write_text(
        "name: mo\ntask: detection\ndata: {train: d/train.json, val: d/val.json, images: d/images}\n"
        "base: {train: {epochs: 6}}\nsearch: {train.lr: {loguniform: [1.0e-4, 1.0e-1]}}\n"
        "objective: [{metric: map50, mode: max}, {metric: train/loss, mode: min}]\nbudget: {num_samples: 4}\n")
    sweep = load_sweep(sweep_file, cwd=tmp_path)
    assert [o.metric for o in sweep.objectives] == ["map50", "train/loss"] and sweep.spec.objective.metric == "map50"
    limiter = build_searcher(sweep, max_concurrent=4)
    s = limiter.searcher
    for i in range(3):
        assert 0 < s.suggest(f"t{i}")["train.lr"] < 0.1
    for epoch in range(1, 7):
        s.on_trial_result("t0", {**result(epoch, 0.1 * epoch), "train/loss": 1.0 / epoch})
    s.on_trial_complete("t0", {**result(6, 0.6), "train/loss": 0.2})
    s.on_trial_complete("t1", {**result(2, 0.1), "train/loss": 0.9})  # stopped at the epoch-2 rung
    s.on_trial_complete("t2", {**result(6, 0.3), "train/loss": 0.1})
    study = s.study
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert trials[0].values == pytest.approx([0.6, 0.2]) and trials[0].intermediate_values == {}
    assert trials[1].state == State.PRUNED
    assert {t.number for t in study.best_trials} == {0, 2}  # both on the Pareto front
