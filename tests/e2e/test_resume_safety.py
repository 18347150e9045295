"""Nothing lost, nothing repeated: what a damaged experiment state or a failed relaunch leaves.

One noop sweep (2 trials x 2 epochs) is launched once for the module; each test then damages
something and checks, through the CLI and the stores, that finished trials are never trained
again (MLflow and Ray both hold exactly the first launch's trials) and that a relaunch failing
early leaves the earlier launch's record as it was.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import launch_sweep, mlflow_client, run_sweeper, trial_runs

pytestmark = pytest.mark.slow

NAME = "guarded"
SWEEP = f"""
name: {NAME}
task: noop
base: {{train: {{epochs: 2, sleep_s: 0}}}}
search: {{x: {{uniform: [0.0, 1.0]}}}}
objective: {{metric: score, mode: max}}
search_alg: {{name: random, seed: 0}}
scheduler: {{name: fifo}}
budget: {{num_samples: 2, max_concurrent: 2}}
checkpoint: {{min_interval_s: 0}}
"""


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("guarded")
    launch_sweep(cwd, SWEEP, file=f"{NAME}.yaml")
    return cwd


def newest_state(exp: Path) -> Path:
    return max(exp.glob("experiment_state-*.json"))


def record(cwd: Path) -> dict:
    """What a user would compare: the trials in MLflow and in Ray, and the launches' parent runs."""
    c = mlflow_client(cwd)
    return {
        "trials": sorted((r.data.tags["sweeper.trial_id"], r.data.tags["sweeper.status"]) for r in trial_runs(c, NAME)),
        "ray": sorted(d.name for d in (cwd / "runs" / NAME).glob("trial_*")),
        "parents": sorted((r.info.run_id, r.info.status, r.info.end_time) for r in trial_runs(c, NAME, kind="sweep")),
    }


def test_a_damaged_state_is_restored_from_the_copy_sweeper_keeps(launched: Path) -> None:
    exp = launched / "runs" / NAME
    before = record(launched)
    assert len(before["trials"]) == 2 and {s for _, s in before["trials"]} == {"finished"}
    (copy,) = (exp / "state_copy").glob("experiment_state-*.json")  # kept when the launch ended
    state = newest_state(exp)
    assert copy.name == state.name and copy.read_bytes() == state.read_bytes()
    state.write_bytes(state.read_bytes()[:100])  # truncated, as a crash mid-write leaves it

    proc = run_sweeper(["resume", f"runs/{NAME}"], launched, check=True)
    out = proc.stdout + proc.stderr
    assert f"{state} was damaged" in out and "restored the copy sweeper kept" in out, out[-3000:]
    assert not re.search(r"trial \w+ started", out), out[-3000:]  # no trial ran again
    after = record(launched)
    assert after["trials"] == before["trials"] and after["ray"] == before["ray"]
    assert [p[:2] for p in after["parents"]] == [p[:2] for p in before["parents"]]  # the same launch, FINISHED
    assert list(exp.glob(f"{state.name}.damaged-*")), "the damaged file is kept beside the restored one"


def test_a_damaged_state_without_a_good_copy_is_refused(launched: Path) -> None:
    exp = launched / "runs" / NAME
    state, (copy,) = newest_state(exp), (exp / "state_copy").glob("experiment_state-*.json")
    saved = {p: p.read_bytes() for p in (state, copy)}
    for path in saved:
        path.write_bytes(path.read_bytes()[:100])
    before, files = record(launched), sorted(p.name for p in exp.iterdir())
    try:
        for args in (["resume", f"runs/{NAME}"], ["launch", f"{NAME}.yaml"]):  # a relaunch without --fresh too
            proc = run_sweeper(args, launched)
            assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
            assert f"{state}: damaged" in proc.stderr and "--fresh" in proc.stderr, proc.stderr
            assert "Traceback" not in proc.stderr and not re.search(r"trial \w+ started", proc.stdout)
        assert record(launched) == before  # parent run untouched (status and end time)
        assert sorted(p.name for p in exp.iterdir()) == files  # Ray wrote no new session
    finally:
        for path, data in saved.items():
            path.write_bytes(data)


def test_a_relaunch_that_fails_early_leaves_the_earlier_launch_as_it_was(launched: Path) -> None:
    exp = launched / "runs" / NAME
    before = record(launched)

    # Unwritable storage. Tests run as root, which writes through `chmod 555`, so the experiment
    # directory is replaced by a regular file: refused before any MLflow run is created.
    away = exp.with_name(f"{NAME}.away")
    exp.rename(away)
    exp.write_text("not a directory\n")
    try:
        proc = run_sweeper(["launch", f"{NAME}.yaml"], launched)
    finally:
        exp.unlink()
        away.rename(exp)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "storage: the experiment directory" in proc.stderr and "cannot be written" in proc.stderr, proc.stderr
    assert record(launched) == before

    # A failure after the launch's parent run exists: MLflow cannot write the launch's artifacts
    # (a regular file where the experiment's artifact directory must be); --fresh, so a new launch
    artifacts = launched / "mlartifacts" / NAME
    artifacts_away = artifacts.with_name(f"{NAME}.away")
    artifacts.rename(artifacts_away)
    artifacts.write_text("not a directory\n")
    try:
        proc = run_sweeper(["launch", f"{NAME}.yaml", "--fresh"], launched)
    finally:
        artifacts.unlink()
        artifacts_away.rename(artifacts)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "MLflow could not record the launch" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    after = record(launched)
    assert after["trials"] == before["trials"] and after["ray"] == before["ray"]  # not moved aside either
    (failed,) = set(after["parents"]) - set(before["parents"])
    assert failed[1] == "FAILED" and set(before["parents"]) <= set(after["parents"])
    c = mlflow_client(launched)
    assert c.get_run(failed[0]).data.tags["sweeper.status"] == "failed"

    board = run_sweeper(["leaderboard", NAME, "--format", "json"], launched, check=True)
    shown = json.loads(board.stdout)
    assert sorted(r["trial"] for r in shown["rows"]) == sorted(t for t, _ in before["trials"])
    assert shown["parent_run_id"] != failed[0]
    assert not list(launched.glob(f"runs/{NAME}.2*")), "a failed --fresh moved nothing aside"
