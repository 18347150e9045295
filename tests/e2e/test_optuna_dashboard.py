"""The sweep's Optuna study in a database, live in optuna-dashboard, exact across a resume.

A real 4-trial noop sweep (real Ray, Optuna, MLflow) keeps its study in `optuna.db` beside
`mlruns.db` (the default `search_alg.storage`). While it runs, a real `sweeper ui NAME --optuna`
serves optuna-dashboard, and its HTTP API shows the trials so far, one of them running. The
launch is interrupted (Ctrl-C) and resumed; the same dashboard then shows exactly the four trials,
each finished once, with the same parameters as the four MLflow trial runs (no duplicate, none
lost).
"""
from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import free_port, kill_session, run_sweeper, start_sweeper, trial_runs, write_sweep

pytestmark = pytest.mark.slow

NAME = "dash"
SWEEP = f"""
name: {NAME}
task: noop
base: {{train: {{epochs: 2, sleep_s: 2.0}}}}
search:
  x: {{uniform: [0.0, 1.0]}}
  y: {{uniform: [0.0, 1.0]}}
objective: {{metric: score, mode: max}}
scheduler: {{name: fifo}}
budget: {{num_samples: 4, max_concurrent: 1}}
"""


def _api(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return json.loads(response.read())


def _finished_in_db(db: Path) -> int | None:
    """Trials the study in `db` has finished (read as the dashboard reads it, from the database);
    None while there is no study yet."""
    import optuna

    if not db.exists():
        return None
    try:
        study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{db}")
    except KeyError:  # not created yet
        return None
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))


def _study_trials(port: int) -> list[dict]:
    study_id, = [s["study_id"] for s in _api(port, "/api/studies")["study_summaries"] if s["study_name"] == NAME]
    return _api(port, f"/api/studies/{study_id}")["trials"]


def test_the_stored_study_is_live_in_the_dashboard_and_exact_across_a_resume(tmp_path: Path) -> None:
    write_sweep(tmp_path / "sweep.yaml", SWEEP)
    launch = start_sweeper(["launch", "sweep.yaml"], tmp_path, start_new_session=True)
    dashboard = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and _finished_in_db(tmp_path / "optuna.db") is None:  # no study yet
            assert launch.poll() is None, launch.stdout.read()[-3000:]
            time.sleep(0.5)
        port = free_port()
        t0 = time.monotonic()
        dashboard = start_sweeper(["ui", NAME, "--optuna", "--port", str(port)], tmp_path, start_new_session=True)
        line = ""
        while "/dashboard/studies/" not in line:
            line = dashboard.stdout.readline()
            assert line or dashboard.poll() is None, "sweeper ui --optuna ended before it served"
        ready_s = time.monotonic() - t0
        assert line.strip().startswith(f"http://127.0.0.1:{port}/dashboard/studies/")
        with urllib.request.urlopen(line.strip(), timeout=30) as page:  # the dashboard's own page
            assert page.status == 200 and b"<html" in page.read().lower()
        states: list[str] = []
        while time.time() < deadline and "Complete" not in states:
            states = [t["state"] for t in _study_trials(port)]
            time.sleep(0.3)
        assert launch.poll() is None and states != ["Complete"] * 4, states  # seen live, mid-sweep
        print(f"dashboard answered {ready_s:.1f} s after `sweeper ui --optuna`; live states {states}")

        launch.send_signal(signal.SIGINT)
        out, _ = launch.communicate(timeout=120)
        assert launch.returncode == 130, out[-3000:]
        run_sweeper(["resume", NAME], tmp_path, timeout=400, check=True)

        trials = _study_trials(port)  # the same server, reading the same database
        assert len(trials) == 4 and [t["state"] for t in trials] == ["Complete"] * 4, trials
        assert all(len(t["intermediate_values"]) == 2 for t in trials)  # one per epoch, none twice
        in_study = sorted(round(float(p["param_external_value"]), 6) for t in trials for p in t["params"]
                          if p["name"] == "x")
        runs = trial_runs(tmp_path, NAME)
        assert len(runs) == 4 and len(list((tmp_path / "runs" / NAME).glob("trial_*"))) == 4
        assert in_study == sorted(round(float(r.data.params["x"]), 6) for r in runs)
        parent, = trial_runs(tmp_path, NAME, kind="sweep")
        assert parent.data.tags["sweeper.optuna_study"] == NAME
        assert parent.data.tags["sweeper.optuna_storage"] == f"sqlite:///{tmp_path / 'optuna.db'}"
    finally:
        for proc in (launch, dashboard):
            if proc is not None and proc.poll() is None:
                kill_session(proc)

    missing = run_sweeper(["ui", "nosuch", "--optuna", "--port", str(free_port())], tmp_path, timeout=60)
    assert missing.returncode == 2
    assert "no Optuna study named 'nosuch'" in missing.stderr and f"it has: {NAME}" in missing.stderr
