"""Sweep values no trial could run with are refused by `sweeper validate` (and so before any
launch dispatches a trial): exit 2, one message naming the file and the field, no traceback."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweeper.cli import app

SWEEP = """name: t
task: noop
search: {x: {uniform: [0, 1]}}
objective: {metric: score}
budget: {num_samples: 2}
"""

CASES = [
    ("name=" + "a" * 201, "name", "at most 200 characters"),
    ("resources.gpu=.inf", "resources.gpu", "finite number"),
    ("resources.cpu=0.00001", "resources.cpu", "greater than or equal to 0.0001"),
    ("scheduler.reduction_factor=.inf", "scheduler.reduction_factor", "finite number"),
    ("budget.num_samples=1000000000000", "budget.num_samples", "less than or equal to 100000"),
    ("search.x={uniform: [-1.0e+308, 1.0e+308]}", "search.x", "wider than a float can hold"),
    ("tracking.uri=sqlite:/", "tracking.uri", "sqlite:///mlruns.db (three slashes)"),
    ("tracking.uri=ftp://host/x", "tracking.uri", "unknown scheme 'ftp'"),
    ("tracking.uri=mlruns", "tracking.uri", "MLflow's file store"),
    ("tracking.uri=http://", "tracking.uri", "names no host"),
    ("notify={webhook: 'ftp://hooks.example/s3cr3t'}", "notify.webhook", "must be an http:// or https:// URL"),
    ("notify={webhook: 'hooks.example/s3cr3t', on: [end]}", "notify.webhook", "(got no scheme)"),
    ("scheduler.grace_period=soon", "scheduler.grace_period", "a whole number (>= 1) or auto"),
    ("scheduler={name: fifo, promote: true}", "scheduler.promote", "scheduler 'fifo' has no rungs"),
    ("scheduler={promote: true, brackets: 2}", "scheduler.brackets", "one bracket"),
    ("scheduler={promote: true, reduction_factor: 3}", "budget.num_samples", "would stop at grace_period"),
    ("search.start_from=[{x: 1.5}]", "search.start_from[0].x", "1.5 is outside [0, 1]"),
    ("search.start_from=[{x: 0.5, y: 1}]", "search.start_from[0].y", "'y' is not searched"),
    ("search.start_from=[{x: 0.1}, {x: 0.2}, {x: 0.3}]", "search.start_from", "lists 3 points but the sweep runs 2"),
    ("search.warm_start={sweep: earlier}", "search.warm_start.sweep", "no MLflow store at"),
    ("constraints=[{metric: costs, max: 1}]", "constraints[0].metric", "does not report 'costs'"),
    ("search_alg={name: random, sampler: gp}", "search_alg.sampler", "is an Optuna sampler"),
    ("budget.time_limit=soon", "budget.time_limit", "'soon' is not a duration"),
    ("budget.trial_time_limit=-5", "budget.trial_time_limit", "must be positive"),
    ("scheduler={time_attr: time_total_s}", "scheduler.max_t", "needs its last rung in seconds"),
    ("scheduler={time_attr: time_total_s, max_t: 1h, grace_period: 2h}", "scheduler.grace_period", "exceeds max_t"),
]


def _validate(tmp_path: Path, *sets: str, text: str = SWEEP):  # noqa: ANN202
    path = tmp_path / "s.yaml"
    path.write_text(text)
    args = ["validate", str(path)]
    for s in sets:
        args += ["--set", s]
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the default tracking store (sqlite:///mlruns.db) is the test's own, not a checkout's
    try:
        return CliRunner().invoke(app, args), path
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("override, field, message", CASES, ids=[c[1] + ":" + c[2][:20] for c in CASES])
def test_a_value_no_trial_can_run_with_is_refused(tmp_path: Path, override: str, field: str, message: str) -> None:
    res, path = _validate(tmp_path, override)
    assert res.exit_code == 2, res.output
    assert f"{path}: {field}: " in res.output and message in res.output
    assert "Traceback" not in res.output


def test_storage_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    res, path = _validate(tmp_path, f"storage={tmp_path / 'afile'}")
    assert res.exit_code == 2 and f"{path}: storage: " in res.output and "is a file" in res.output


def test_storage_in_an_unwritable_directory_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        import os

        if os.geteuid() == 0:  # root writes anywhere: the check would pass, so there is nothing to test
            pytest.skip("running as root: every directory is writable")
        res, _ = _validate(tmp_path, f"storage={locked / 'runs'}")
        assert res.exit_code == 2 and "is not writable" in res.output
    finally:
        locked.chmod(0o700)


def test_an_unreachable_tracking_server_is_refused_within_seconds(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    res, path = _validate(tmp_path, f"tracking.uri=http://user:s3cret@127.0.0.1:{port}")
    assert time.monotonic() - start < 10
    assert res.exit_code == 2 and f"{path}: tracking.uri: the MLflow tracking server" in res.output
    assert "s3cret" not in res.output and "user:***@127.0.0.1" in res.output


def test_an_include_naming_a_directory_and_a_bad_env_name_are_refused(tmp_path: Path) -> None:
    (tmp_path / "frags").mkdir()
    res, path = _validate(tmp_path, text=SWEEP + "include: [frags]\n")
    assert res.exit_code == 2 and f"{path}: include: fragment 'frags' is a directory" in res.output
    command = ("name: c\ntask: command\ncommand: {run: 'python train.py {overrides}', env: {'bad name': '1'}}\n"
               "search: {lr: {choice: [1, 2]}}\nobjective: {metric: acc}\nscheduler: {name: fifo}\n"
               "budget: {num_samples: 2}\n")
    res, path = _validate(tmp_path, text=command)
    assert res.exit_code == 2 and "command.env" in res.output and "not an environment variable name" in res.output


def test_resume_of_a_damaged_state_file_says_what_to_do(tmp_path: Path) -> None:
    exp = tmp_path / "runs" / "t"
    exp.mkdir(parents=True)
    (exp / "sweeper.json").write_text('{"parent_run_id": "abc", "sweep_file"')  # cut off mid-write
    res = CliRunner().invoke(app, ["resume", str(exp)])
    assert res.exit_code == 2 and "sweeper.json: damaged" in res.output and "--fresh" in res.output
    (exp / "sweeper.json").write_text(json.dumps(["not", "a", "state"]))
    res = CliRunner().invoke(app, ["resume", str(exp)])
    assert res.exit_code == 2 and "not a sweeper state file" in res.output


@pytest.mark.parametrize("args, field, message", [
    (["t", "--top", "0"], "--top", "must be at least 1"),
    (["t", "--seeds", "1"], "--seeds", "must be at least 2"),
    (["t"], "NAME", "no sweep named 't'"),
])
def test_confirm_refuses_before_reading_or_running_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             args: list[str], field: str, message: str) -> None:
    """`sweeper confirm`'s counts and an unknown sweep (tests/test_confirm.py: ablations, too few trials)."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["confirm", *args])
    assert res.exit_code == 2 and f"{field}: {message}" in res.output, res.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()
