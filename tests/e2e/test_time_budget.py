"""Time budgets end to end: real noop sweeps through the CLI, on real Ray, Optuna and MLflow.

(1) `budget.time_limit: 10s` on trials of 20 one-second epochs ends the launch soon after the
    limit, exit 0, with no trial finished or failed; `sweeper resume` (here with a longer limit:
    the limit is not part of the sweep's identity) continues every trial from the checkpoint of
    the epoch it was in: Ray's own result log shows no epoch trained twice, and MLflow has each
    epoch once, with `time_total_s` and, on CPU, no `gpu_seconds`;
(2) `budget.trial_time_limit` ends a trial after the epoch that reaches it: stop_reason time_limit;
(3) `scheduler.time_attr: time_total_s`: ASHA's rungs are seconds of training, not epochs.
"""
from __future__ import annotations

import calendar
import json
import re
import time
from pathlib import Path

import pytest

from .conftest import json_lines, launch_sweep, mlflow_client, run_sweeper, trial_runs, write_sweep

pytestmark = pytest.mark.slow

LIMITED = """
name: tb-limit
task: noop
base: {train: {epochs: 20, sleep_s: 1}}
search:
  x: {uniform: [0.0, 1.0]}
objective: {metric: score, mode: max}
scheduler: {name: fifo}
checkpoint: {min_interval_s: 3600}
budget: {num_samples: 2, max_concurrent: 2, time_limit: 10s}
"""


def _deadline(stdout: str) -> float:
    """The deadline the launch printed when its first trial started the clock
    (`... at 2026-12-03T15:07:15.736Z`), as time.time()."""
    stamp = re.search(r"sweeper: time limit started with the first trial: .* at (\S+)Z", stdout).group(1)
    whole, _, millis = stamp.partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(millis) / 1000


def _epochs_trained(exp_dir: Path) -> dict[str, list[int]]:
    """Per trial, the epochs Ray's result log recorded, over every launch, in order."""
    return {d.name.removeprefix("trial_"): [r["epoch"] for r in json_lines((d / "result.json").read_text())]
            for d in sorted(exp_dir.glob("trial_*")) if (d / "result.json").is_file()}


def test_a_time_limit_ends_the_launch_and_resume_continues_every_trial(tmp_path: Path) -> None:
    write_sweep(tmp_path / "sweep.yaml", LIMITED)
    first = run_sweeper(["launch", "sweep.yaml"], tmp_path, timeout=400)
    ended = time.time()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "time limit reached (budget.time_limit 10s)" in first.stdout, first.stdout[-3000:]
    assert "To continue them (another 10s): sweeper resume" in first.stdout
    deadline = _deadline(first.stdout)
    # the launch ends within the epoch each trial was in plus Tune's stop of the waiting workers
    # (~5 s) and the driver's own shutdown, not after the trials' 20 epochs
    assert ended - deadline < 40, ended - deadline
    c = mlflow_client(tmp_path)
    runs = trial_runs(c, "tb-limit")
    assert {r.data.tags["sweeper.status"] for r in runs} <= {"running"}  # nothing finished, stopped or failed
    before = {r.data.tags["sweeper.trial_id"]: int(r.data.metrics.get("epoch", 0)) for r in runs}
    assert all(epoch < 20 for epoch in before.values())
    assert any(before.values()), "no trial trained an epoch before the limit: nothing to continue"
    for run in runs:  # every epoch logged ended by the deadline plus the epoch then running (driver's clock)
        for m in c.get_metric_history(run.info.run_id, "score"):
            assert m.timestamp / 1000 < deadline + 1 + 10

    # the limit is not part of the sweep's identity: the resume runs with another one, to the end
    write_sweep(tmp_path / "sweep.yaml", LIMITED.replace("time_limit: 10s", "time_limit: 10m"))
    again = run_sweeper(["resume", "tb-limit"], tmp_path, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "time limit reached" not in again.stdout

    trained = _epochs_trained(tmp_path / "runs" / "tb-limit")
    assert len(trained) == 2
    for trial_id, epochs in trained.items():
        assert epochs == list(range(1, 21)), (trial_id, epochs)  # continued from its checkpoint: none twice
    runs = trial_runs(c, "tb-limit")
    assert len(runs) == 2  # the same run per trial, continued in place
    for run in runs:
        assert run.data.tags["sweeper.status"] == "finished" and run.data.tags["sweeper.stop_reason"] == "completed"
        assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "score")) == list(range(1, 21))
        totals = [m.value for m in sorted(c.get_metric_history(run.info.run_id, "time_total_s"), key=lambda m: m.step)]
        assert len(totals) == 20 and totals == sorted(totals)  # summed over restarts: it never goes back
        assert totals[-1] >= 20  # twenty one-second epochs
        assert "gpu_seconds" not in run.data.metrics  # a CPU trial: absent, not 0
    board = run_sweeper(["leaderboard", "tb-limit", "--format", "json"], tmp_path, timeout=120, check=True)
    assert all(row["time_total_s"] >= 20 for row in json.loads(board.stdout)["rows"])


def test_a_trial_time_limit_stops_a_trial_after_the_epoch_that_reaches_it(tmp_path: Path) -> None:
    launch_sweep(tmp_path, """
        name: tb-trial
        task: noop
        base: {train: {epochs: 10, sleep_s: 1}}
        objective: {metric: score, mode: max}
        scheduler: {name: fifo}
        budget: {num_samples: 1, trial_time_limit: 3s}
    """)
    (run,) = trial_runs(tmp_path, "tb-trial")
    tags, metrics = run.data.tags, run.data.metrics
    assert (tags["sweeper.status"], tags["sweeper.stop_reason"]) == ("finished", "time_limit")
    stopped_at = int(tags["sweeper.stopped_at_epoch"])
    assert 1 <= stopped_at <= 3 and metrics["epoch"] == stopped_at  # 1 s epochs: it reached 3 s by epoch 3
    assert metrics["time_total_s"] >= 3 * 0.9 or stopped_at == 3
    assert "gpu_seconds" not in metrics

    # its epochs are measured now: a launch limit shorter than one is refused before any trial
    refused = run_sweeper(["launch", "sweep.yaml", "--fresh", "--set", "budget.time_limit=0.5s"], tmp_path,
                          timeout=300)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "sweep.yaml: budget.time_limit: 0.5s is shorter than one epoch of this sweep" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert len(trial_runs(tmp_path, "tb-trial")) == 1  # no trial was dispatched


def test_asha_on_time_total_s_judges_trials_at_seconds_of_training(tmp_path: Path) -> None:
    """Rungs at 2 s and 4 s of training, max_t 6 s, on trials of 8 one-second epochs one at a time:
    ASHA cuts trials at the first epoch whose training time passes a rung, and a trial that
    reaches 6 s before its last epoch ends with stop_reason time_limit."""
    launch_sweep(tmp_path, """
        name: tb-asha
        task: noop
        base: {train: {epochs: 8, sleep_s: 1}}
        search:
          x: {uniform: [0.0, 1.0]}
        objective: {metric: score, mode: max}
        scheduler: {name: asha, time_attr: time_total_s, grace_period: 2s, reduction_factor: 2, max_t: 6s}
        budget: {num_samples: 5, max_concurrent: 1}
    """)
    rungs = json.loads((tmp_path / "runs" / "tb-asha" / "scheduler" / "asha_rungs.json").read_text())
    milestones = sorted(m for m, _ in rungs["brackets"][0])
    assert milestones[:2] == [2, 4]  # seconds, not epochs
    trained = {}
    for d in (tmp_path / "runs" / "tb-asha").glob("trial_*"):
        trained[d.name.removeprefix("trial_")] = json_lines((d / "result.json").read_text())
    runs = trial_runs(tmp_path, "tb-asha")
    assert len(runs) == 5
    reasons = {r.data.tags["sweeper.trial_id"]: r.data.tags.get("sweeper.stop_reason") for r in runs}
    assert "asha" in reasons.values() and "time_limit" in reasons.values(), reasons
    for trial_id, reason in reasons.items():
        last = trained[trial_id][-1]
        if reason == "asha":  # cut where its training time first passed a rung in seconds
            before = [r["time_total_s"] for r in trained[trial_id][:-1]]
            assert any(prev < m <= last["time_total_s"] for m in milestones for prev in [max(before, default=0)])
        elif reason == "time_limit":  # ran its 6 s before its 8th epoch
            assert last["time_total_s"] >= 6 and last["epoch"] < 8
    for run in runs:
        assert "time_total_s" in run.data.metrics and "gpu_seconds" not in run.data.metrics
