"""Samplers, constraints and warm start end to end: real noop sweeps through the CLI (real Ray,
Optuna and MLflow), checked in MLflow as a user would.

- each `search_alg.sampler` runs a sweep whose trials are exactly what that sampler, seeded,
  proposes when told the scores MLflow recorded (replayed here with the same Optuna class);
- a constrained sweep tags each trial `sweeper.feasible` and ranks feasible trials first;
- `search.warm_start` imports an earlier sweep's trials (the count is on the plan and the parent
  run) and `sweeper resume` does not import them again; `start_from` points are the first trials.
"""
from __future__ import annotations

import glob
import json
import pickle
import signal
import time
from pathlib import Path

import optuna
import pytest

from sweeper.config import load_sweep
from sweeper.search import build_sampler
from sweeper.spaces import to_optuna

from .conftest import mlflow_client, run_sweeper, start_sweeper, trial_runs, write_sweep

pytestmark = pytest.mark.slow

SWEEP = """
name: {name}
task: noop
base: {{train: {{epochs: {epochs}, sleep_s: {sleep}}}}}
search:
  x: {{uniform: [0, {x_high}]}}
  y: {{uniform: [0, 1]}}
{extra}
objective: {{metric: score, mode: max}}
search_alg: {{sampler: {sampler}, seed: 5}}
scheduler: {{name: fifo}}
budget: {{num_samples: {n}, max_concurrent: 1}}
"""


def _write(cwd: Path, name: str, *, sampler: str = "tpe", n: int = 4, extra: str = "", x_high: float = 1,
           epochs: int = 1, sleep: float = 0) -> Path:
    return write_sweep(cwd / f"{name}.yaml", SWEEP.format(name=name, sampler=sampler, n=n, extra=extra, x_high=x_high,
                                                          epochs=epochs, sleep=sleep))


def _in_order(cwd: Path, name: str) -> list:
    """The sweep's trial runs in the order they started (one at a time: max_concurrent 1)."""
    return sorted(trial_runs(cwd, name), key=lambda r: r.info.start_time)


def _point(run) -> dict[str, float]:  # noqa: ANN001 - an MLflow Run
    return {k: float(run.data.params[k]) for k in ("x", "y")}


# A GP models only after its 10 random startup trials: 12 trials show it at work.
@pytest.mark.parametrize("sampler, n", [("tpe", 4), ("gp", 12), ("cmaes", 4), ("qmc", 4), ("random", 4), ("nsga2", 4)])
def test_each_sampler_proposes_its_own_seeded_points(tmp_path: Path, sampler: str, n: int) -> None:
    path = _write(tmp_path, f"s-{sampler}", sampler=sampler, n=n)
    run_sweeper(["launch", str(path)], tmp_path, timeout=400, check=True)
    parent, = trial_runs(tmp_path, f"s-{sampler}", kind="sweep")
    assert parent.data.tags["sweeper.sampler"] == sampler
    runs = _in_order(tmp_path, f"s-{sampler}")
    assert len(runs) == n and all(r.data.tags["sweeper.status"] == "finished" for r in runs)
    # replay: the same sampler class and seed, told the scores MLflow holds, proposes the same points
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sweep = load_sweep(path, cwd=tmp_path)
    study = optuna.create_study(sampler=build_sampler(sweep), direction="maximize")
    dists = to_optuna(sweep.dimensions)
    for run in runs:
        trial = study.ask(fixed_distributions=dists)
        assert trial.params == pytest.approx(_point(run), rel=1e-9), f"trial {trial.number} of {sampler}"
        study.tell(trial, run.data.metrics["score"])
    if sampler in ("gp", "cmaes", "qmc"):  # past their random first trials, not what TPE would propose
        tpe = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=5), direction="maximize")
        for run in runs:
            trial = tpe.ask(fixed_distributions=dists)
            tpe.tell(trial, run.data.metrics["score"])
        assert [t.params for t in tpe.trials][-2:] != [_point(r) for r in runs][-2:]


def test_a_constrained_sweep_marks_infeasible_trials_and_ranks_feasible_ones_first(tmp_path: Path) -> None:
    # noop's `cost` is x + y; the first start point is the best score (1.0) but costs 1.0 > 0.8
    extra = ("  start_from:\n    - {x: 0.3, y: 0.7}\n    - {x: 0.2, y: 0.4}\n"
             "constraints: [{metric: cost, max: 0.8}]")
    path = _write(tmp_path, "con", n=4, extra=extra)
    plan = run_sweeper(["launch", str(path), "--dry-run"], tmp_path, timeout=60, check=True).stdout
    assert "constraints: cost <= 0.8" in plan and "start from: 2 points first" in plan
    run_sweeper(["launch", str(path)], tmp_path, timeout=400, check=True)
    runs = _in_order(tmp_path, "con")
    assert [_point(r) for r in runs[:2]] == [{"x": 0.3, "y": 0.7}, {"x": 0.2, "y": 0.4}]
    for run in runs:
        cost = run.data.metrics["cost"]
        assert cost == pytest.approx(sum(_point(run).values()))
        assert run.data.tags["sweeper.feasible"] == ("true" if cost <= 0.8 else "false")
    board = json.loads(run_sweeper(["leaderboard", "con", "--format", "json"], tmp_path, timeout=60,
                                   check=True).stdout)
    flags = [r["feasible"] for r in board["rows"]]
    assert flags == sorted(flags, key=lambda f: f != "true") and flags[0] == "true"
    best_infeasible = max((r for r in board["rows"] if r["feasible"] == "false"), key=lambda r: r["score"])
    assert best_infeasible["score"] == pytest.approx(1.0) and board["rows"][0]["score"] < 1.0
    table = run_sweeper(["leaderboard", "con"], tmp_path, timeout=60, check=True).stdout
    assert "feasible" in table and "cost <= 0.8" in table


def _searcher_trials(exp_dir: Path) -> list:
    """The Optuna trials in the searcher state Tune saved last (the study a resume restores)."""
    path = sorted(glob.glob(str(exp_dir / "searcher-state-*.pkl")))[-1]
    state = pickle.loads(Path(path).read_bytes())
    state = state.get("searcher", state) if isinstance(state, dict) else state
    study = state["_ot_study"] if isinstance(state, dict) else state._ot_study
    return study.get_trials(deepcopy=False)


def test_warm_start_imports_an_earlier_sweep_once_across_a_resume(tmp_path: Path) -> None:
    run_sweeper(["launch", str(_write(tmp_path, "pilot", n=5))], tmp_path, timeout=400, check=True)
    pilot = trial_runs(tmp_path, "pilot")
    inside = sum(float(r.data.params["x"]) <= 0.5 for r in pilot)  # the follow-up searches x in [0, 0.5]
    follow = _write(tmp_path, "follow", n=3, x_high=0.5, epochs=2, sleep=2,
                    extra="  warm_start: {sweep: pilot}\n  start_from: [{x: 0.25, y: 0.5}]")

    bad = run_sweeper(["launch", str(follow), "--set", "search.warm_start={sweep: pilott}"], tmp_path, timeout=120)
    assert bad.returncode == 2 and "search.warm_start.sweep: no sweep named 'pilott'" in bad.stderr
    assert "the sweeps there: pilot" in bad.stderr and not trial_runs(tmp_path, "follow")

    plan = run_sweeper(["launch", str(follow), "--dry-run"], tmp_path, timeout=120, check=True).stdout
    assert f"warm start: {inside} earlier trials seed the sampler (pilot: {inside} trials imported on x, y" in plan
    if inside < len(pilot):
        assert f"skipped {len(pilot) - inside} outside the space" in plan

    proc = start_sweeper(["launch", str(follow)], tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "runs" / "follow").glob("trial_*/checkpoint_*")):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    run_sweeper(["resume", "follow"], tmp_path, timeout=400, check=True)

    parent, = trial_runs(tmp_path, "follow", kind="sweep")
    assert parent.data.tags["sweeper.warm_start_trials"] == str(inside)
    assert json.loads(parent.data.tags["sweeper.warm_start"])[0]["imported"] == inside
    runs = _in_order(tmp_path, "follow")
    assert len(runs) == 3 and _point(runs[0]) == {"x": 0.25, "y": 0.5}
    assert all(float(r.data.params["x"]) <= 0.5 for r in runs)
    trials = _searcher_trials(tmp_path / "runs" / "follow")
    imported = [t for t in trials if "sweeper.imported_from" in t.user_attrs]
    assert len(imported) == inside and len(trials) == inside + 3  # imported once, then the sweep's own three
    by_source = {t.user_attrs["sweeper.imported_from"].split("/")[1]: t for t in imported}
    c = mlflow_client(tmp_path)
    for run in pilot:
        if float(run.data.params["x"]) <= 0.5:
            t = by_source[run.data.tags["sweeper.trial_id"]]
            assert t.value == pytest.approx(c.get_run(run.info.run_id).data.metrics["score"])
