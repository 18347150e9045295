"""`task: command` trials that try to outlive themselves, diverge, or carry keys MLflow refuses,
each a real sweep through the CLI on real Ray and MLflow; afterwards /proc is checked for anything
the scripts started.

(a) one sweep, three scripts: one reports its last epoch and never exits, one leaves a `setsid()`
    daemon holding its stdout, one saves its final model after its last report: all finished,
    the final save kept, no process left (by pid, and by the per-trial marker in /proc/PID/environ);
(b) a NaN or -Infinity objective: the trial is `diverged`, the value never a metric or a best;
(c) Hydra `+key` / `~key`, keys with `;` or spaces, values with shell syntax: one run per trial,
    params under names MLflow accepts, the script gets each word as written, nothing runs.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from .conftest import COMMAND_SCRIPTS, all_pids, launch_sweep, mlflow_client, run_sweeper, trial_runs

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _marked_pids() -> list[int]:
    """Live processes whose environment carries any trial's marker (SWEEPER_TRIAL_TOKEN)."""
    found = []
    for pid in all_pids():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(e.startswith(b"SWEEPER_TRIAL_TOKEN=") for e in env) and _alive(pid):
            found.append(pid)
    return found


def test_scripts_that_hang_daemonize_or_save_late_leave_nothing_behind(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    marked_before = set(_marked_pids())  # other sessions' trials on a shared machine are not ours
    t0 = time.monotonic()
    launch_sweep(tmp_path, f"""
        name: trees
        task: command
        command:
          run: "{{python}} {COMMAND_SCRIPTS / 'process_tree.py'} {{overrides}}"
          overrides: argparse
          epochs: 2
          stop_grace_s: 3
        base:
          epochs: 2
          pid_file: {pids}
          save_s: 1.5
          ignore_term: true
        search:
          mode: {{grid: [hang, daemon, final_save]}}
        objective: {{metric: score, mode: max}}
        search_alg: {{name: grid}}
        scheduler: {{name: fifo}}
        budget: {{num_samples: 1, max_concurrent: 3}}
    """)
    took = time.monotonic() - t0
    runs = {r.data.params["mode"]: r for r in trial_runs(tmp_path, "trees")}
    assert sorted(runs) == ["daemon", "final_save", "hang"]
    for mode, run in runs.items():
        assert run.data.tags["sweeper.status"] == "finished", (mode, run.data.tags)
        assert run.data.metrics["score"] == pytest.approx(0.2)
    saved = list((tmp_path).rglob("final.pt"))  # under the final_save trial's directory
    assert len(saved) == 1 and saved[0].read_text() == "final model\n"
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 4  # three scripts and one daemon
    assert [p for p in started if _alive(p)] == []  # right after the launch returned: no waiting
    assert set(_marked_pids()) - marked_before == set()
    assert took < 300, took


def test_a_nan_or_infinite_objective_is_recorded_as_diverged(tmp_path: Path) -> None:
    launch_sweep(tmp_path, f"""
        name: diverge
        task: command
        command:
          run: "{{python}} {COMMAND_SCRIPTS / 'nonfinite.py'} {{overrides}}"
          overrides: argparse
          epochs: 2
          stop_grace_s: 2
        base:
          then_sleep: 0
        search:
          value: {{grid: ["nan", "minus_inf", "0.25"]}}
        objective: {{metric: score, mode: max}}
        search_alg: {{name: grid}}
        scheduler: {{name: fifo}}
        budget: {{num_samples: 1, max_concurrent: 3, max_failed_trials: 10}}
    """)
    c = mlflow_client(tmp_path)
    runs = {r.data.params["value"]: r for r in trial_runs(tmp_path, "diverge")}
    assert sorted(runs) == ["0.25", "minus_inf", "nan"]
    ok = runs.pop("0.25")
    assert ok.data.tags["sweeper.status"] == "finished" and ok.data.metrics["score"] == 0.25
    for value, run in runs.items():
        assert run.data.tags["sweeper.status"] == "diverged", (value, run.data.tags)
        assert "the command reported score" in run.data.tags["sweeper.error"]
        history = [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "score")]
        assert history == [(1, 0.5)]  # the diverged epoch is not a value
        best = run.data.metrics.get("best_objective")
        assert best is None or (math.isfinite(best) and best == 0.5)
    board = run_sweeper(["leaderboard", "diverge", "--format", "json"], tmp_path, timeout=120)
    assert board.returncode == 0, board.stderr
    assert "NaN" not in board.stdout and "Infinity" not in board.stdout


@pytest.mark.parametrize("style", ["hydra", "argparse", "env"])
def test_keys_mlflow_refuses_are_logged_once_under_clean_names(tmp_path: Path, style: str) -> None:
    launch_sweep(tmp_path, f"""
        name: odd-keys
        task: command
        command:
          run: "{{python}} {COMMAND_SCRIPTS / 'echo_args.py'} {{overrides}}"
          overrides: {style}
          epochs: 2
        base:
          +trainer.precision: 16
          "~model.ema": null
          "opt;touch PWNED_K": 1
          "run name": "$(touch PWNED_V); `touch PWNED_B` > x"
        search:
          "+model.lr": {{grid: [0.1, 0.2]}}
        objective: {{metric: score, mode: max}}
        search_alg: {{name: grid}}
        scheduler: {{name: fifo}}
        budget: {{num_samples: 1, max_concurrent: 2}}
    """)
    runs = trial_runs(tmp_path, "odd-keys")
    assert len(runs) == 2  # one per trial: no run left behind by a failed params write
    parents = trial_runs(tmp_path, "odd-keys", kind="sweep")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", parents[0].data.tags  # not "interrupted"
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["sweeper.status"] == "finished", run.data.tags
        assert run.data.metrics["score"] == 1.0
        params = run.data.params
        assert params["_model.lr"] in ("0.1", "0.2") and params["_trainer.precision"] == "16"
        assert params["opt_touch PWNED_K"] == "1" and "$(touch PWNED_V)" in params["run name"]
    assert not list(tmp_path.rglob("PWNED*")) and not list(tmp_path.rglob("x"))
    for seen in tmp_path.rglob("args.json"):
        got = json.loads(seen.read_text())
        if style == "hydra":
            assert "+trainer.precision=16" in got["argv"] and "~model.ema=null" in got["argv"]
            assert "run name='$(touch PWNED_V); `touch PWNED_B` > x'" in got["argv"]
        elif style == "argparse":
            i = got["argv"].index("--run name")
            assert got["argv"][i + 1] == "$(touch PWNED_V); `touch PWNED_B` > x"
        else:
            assert got["env"]["SWEEPER_PARAM__TRAINER_PRECISION"] == "16"
            assert got["env"]["SWEEPER_PARAM_RUN_NAME"] == "$(touch PWNED_V); `touch PWNED_B` > x"
    assert len(list(tmp_path.rglob("args.json"))) == 2
