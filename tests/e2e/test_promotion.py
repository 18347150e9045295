"""Promotion-based ASHA (`scheduler: {name: asha, promote: true}`) end to end: real noop sweeps
through `sweeper launch` on real Ray, Optuna and MLflow.

The noop task's score is the same every epoch and depends only on (x, y), so which trials a
rung promotes is known from the scores: on one worker the sweep must make exactly the
decisions `PromotionASHA` makes when replayed with those scores in creation order (the same
class, driven by `tests/test_promotion.py`'s light controller); on two workers, any order must
end with the best trial at max_t, every other one paused and then cut at a rung (`stop_reason:
asha`), each epoch trained once, one MLflow run per trial, and no hang.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import launch_sweep, mlflow_client, ray_results, trial_runs

pytestmark = pytest.mark.slow

SWEEP = """
    name: {name}
    task: noop
    base: {{train: {{epochs: 9, sleep_s: 0.05}}}}
    search:
      x: {{uniform: [0.0, 1.0]}}
      y: {{uniform: [0.0, 1.0]}}
    objective: {{metric: score, mode: max}}
    scheduler: {{name: asha, promote: true, grace_period: 1, reduction_factor: 3, max_t: 9}}
    checkpoint: {{min_interval_s: 3600}}
    budget: {{num_samples: 9, max_concurrent: {workers}}}
"""


def _sweep_record(tmp_path: Path, name: str) -> tuple[dict, dict]:
    """({trial_id: MLflow run}, {trial_id: [epochs MLflow recorded, in order]})"""
    client = mlflow_client(tmp_path)
    runs = trial_runs(client, name)
    by_trial = {r.data.tags["sweeper.trial_id"]: r for r in runs}
    assert len(by_trial) == len(runs) == 9  # one run per trial: no duplicate after a pause
    history = {tid: client.get_metric_history(r.info.run_id, "score") for tid, r in by_trial.items()}
    epochs = {tid: [m.step for m in sorted(ms, key=lambda m: m.timestamp)] for tid, ms in history.items()}
    # Ray's own log of the same reports: result.json, which Tune copies back from storage when a
    # paused trial restarts, can lose the rung's line if the copy predates it (a Ray quirk, not ours)
    for d, rows in ray_results(tmp_path / "runs" / name).items():
        assert {row["epoch"] for row in rows} <= set(epochs[d.removeprefix("trial_")])
    return by_trial, epochs


def _check_common(by_trial: dict, epochs: dict) -> None:
    scores = {tid: r.data.metrics["score"] for tid, r in by_trial.items()}
    best = max(scores, key=scores.get)
    for tid, run in by_trial.items():
        assert epochs[tid] == list(range(1, len(epochs[tid]) + 1)), (tid, epochs[tid])  # none twice, none skipped
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        if tid == best:
            assert epochs[tid][-1] == 9 and tags["sweeper.status"] == "finished"
            assert tags["sweeper.stop_reason"] == "completed"
        else:
            assert epochs[tid][-1] in (1, 3), (tid, epochs[tid])  # paused at a rung, never promoted further
            assert tags["sweeper.status"] == "stopped" and tags["sweeper.stop_reason"] == "asha"
            assert tags["sweeper.stopped_at_epoch"] == str(epochs[tid][-1])
    # 9 trials at rung 1, at least their top 3 at rung 3, at least the top 1 of those at 9
    reached3 = sum(e[-1] >= 3 for e in epochs.values())
    assert reached3 >= 3 and sum(e[-1] == 9 for e in epochs.values()) >= 1


def test_one_worker_makes_exactly_the_schedulers_decisions(tmp_path: Path) -> None:
    from test_promotion import replay  # tests/ is on sys.path: pytest puts the e2e package's root there

    from sweeper.promotion import PromotionASHA

    out = launch_sweep(tmp_path, SWEEP.format(name="promote-one", workers=1), timeout=300)
    assert "ASHA" in out.stdout
    by_trial, epochs = _sweep_record(tmp_path, "promote-one")
    _check_common(by_trial, epochs)
    # on one worker trials start in the order they were created: their MLflow runs' start times
    order = sorted(by_trial, key=lambda tid: by_trial[tid].info.start_time)
    ctl = replay([by_trial[tid].data.metrics["score"] for tid in order], 1,
                 PromotionASHA(max_t=9, grace_period=1, reduction_factor=3, num_samples=9))
    assert [t.epochs for t in ctl.trials] == [epochs[tid] for tid in order]
    # ASHA with promotion: 9 trials x 1 epoch, at least 3 promoted to 3 (+2 each), at least 1 to 9 (+6),
    # each promotion made as the replay makes it: far below FIFO's 81 trial-epochs
    total = sum(len(e) for e in epochs.values())
    assert total == sum(len(t.epochs) for t in ctl.trials) and 9 + 3 * 2 + 6 <= total <= 81 // 2


def test_two_workers_promote_and_end_without_hanging(tmp_path: Path) -> None:
    import json

    launch_sweep(tmp_path, SWEEP.format(name="promote-two", workers=2), timeout=300)
    by_trial, epochs = _sweep_record(tmp_path, "promote-two")
    _check_common(by_trial, epochs)
    state = json.loads((tmp_path / "runs" / "promote-two" / "scheduler" / "promotion.json").read_text())
    (e1, rung1, promoted1), (e3, rung3, promoted3) = state["rungs"]
    assert (e1, e3) == (1, 3) and len(rung1) == 9 and len(promoted1) >= 3
    assert set(promoted1) == set(rung3) == {t for t, e in epochs.items() if e[-1] >= 3}
    assert state["waiting"] == {} and len(state["ended"]) == 8

    # Optuna was told the truth: the 8 cut trials PRUNED (with their rung values), the best COMPLETE
    import optuna

    study = optuna.load_study(study_name="promote-two", storage=f"sqlite:///{tmp_path / 'optuna.db'}")  # the stored study
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == 8 and states.count(optuna.trial.TrialState.COMPLETE) == 1
    assert all(t.intermediate_values for t in study.trials)


def test_interrupted_and_resumed_keeps_rungs_and_promotions(tmp_path: Path) -> None:
    """Ctrl-C once three trials wait at a rung, then `sweeper resume`: the waiting trials are paused
    again (not run on), the rung records and promotions made before the interrupt are kept, and
    the sweep ends as an uninterrupted one would (one run per trial, each epoch once)."""
    import json
    import signal
    import time

    from .conftest import run_sweeper, start_sweeper, write_sweep

    sweep = write_sweep(tmp_path / "sweep.yaml", SWEEP.format(name="promote-resume", workers=1))
    proc = start_sweeper(["launch", str(sweep)], tmp_path)
    rung_file = tmp_path / "runs" / "promote-resume" / "scheduler" / "promotion.json"
    deadline = time.time() + 240
    before = None
    while time.time() < deadline:
        if rung_file.is_file():
            try:
                state = json.loads(rung_file.read_text())
            except json.JSONDecodeError:  # replaced while read: the next look sees it whole
                state = None
            if state and len(state["waiting"]) >= 3:
                before = state
                break
        time.sleep(0.2)
    assert before is not None, "no three trials waited at a rung within 240 s"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    runs_before = {r.data.tags["sweeper.trial_id"]: r.info.run_id for r in trial_runs(tmp_path, "promote-resume")}

    again = run_sweeper(["resume", "promote-resume"], tmp_path, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    by_trial, epochs = _sweep_record(tmp_path, "promote-resume")
    _check_common(by_trial, epochs)
    for tid, run_id in runs_before.items():  # the same runs continued
        assert by_trial[tid].info.run_id == run_id
    after = json.loads(rung_file.read_text())
    for (epoch, recorded, promoted), (epoch2, recorded2, promoted2) in zip(before["rungs"], after["rungs"]):
        assert epoch == epoch2 and recorded.items() <= recorded2.items() and set(promoted) <= set(promoted2)
    assert after["waiting"] == {} and len(after["ended"]) == 8
