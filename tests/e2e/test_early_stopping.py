"""`early_stopping` end to end: real trials on real Ray, Optuna and MLflow.

(a) a built-in task (noop: its score is the same every epoch, so patience 2 ends a trial at epoch 3)
    beside ASHA: each trial is either cut by ASHA at the first rung (stopped, Optuna PRUNED) or
    ends by patience (finished, Optuna COMPLETE with its best), and the checkpoint kept is its best
    epoch's although `checkpoint.min_interval_s` never came due;
(b) a command trial that crashes after two epochs without improvement resumes with its patience
    counter: it stops one evaluation later, not two.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import COMMAND_SCRIPTS, launch_sweep, mlflow_client, ray_results, run_sweeper, trial_runs

pytestmark = pytest.mark.slow


def test_patience_beside_asha_on_a_built_in_task(tmp_path: Path) -> None:
    import json

    import optuna
    import torch

    from sweeper.config import load_sweep

    launch_sweep(tmp_path, """
        name: es-noop
        task: noop
        base: {train: {epochs: 9}}
        search:
          x: {uniform: [0.0, 1.0]}
          y: {uniform: [0.0, 1.0]}
        objective: {metric: score, mode: max}
        scheduler: {name: asha, grace_period: 1, reduction_factor: 3, max_t: 9}
        early_stopping: {patience: 2}
        checkpoint: {min_interval_s: 3600}
        budget: {num_samples: 6, max_concurrent: 1}
    """)
    runs = {r.data.tags["sweeper.trial_id"]: r for r in trial_runs(tmp_path, "es-noop")}
    assert len(runs) == 6
    ends = {(r.data.tags["sweeper.status"], r.data.tags["sweeper.stop_reason"], r.data.tags["sweeper.stopped_at_epoch"])
            for r in runs.values()}
    # patience runs out at epoch 3, the second rung: ASHA's cut there leaves the trial's own reason
    assert ends == {("stopped", "asha", "1"), ("finished", "patience", "3")}, ends
    assert all(r.data.tags["sweeper.best_epoch"] == "1" for r in runs.values())

    exp_dir = tmp_path / "runs" / "es-noop"
    for trial_dir, rows in ray_results(exp_dir).items():
        run = runs[trial_dir.removeprefix("trial_")]
        assert rows[-1]["best_objective"] == pytest.approx(run.data.metrics["score"])
        (checkpoint,) = sorted((exp_dir / trial_dir).glob("checkpoint_*"))  # the best epoch's, although not due
        state = torch.load(checkpoint / "trial_state.pt", weights_only=True)
        assert (state["epoch"], state["best_epoch"], state["patience_wait"]) == (1, 1, 0)

    sweep = load_sweep(tmp_path / "sweep.yaml", cwd=tmp_path)
    study = optuna.load_study(study_name=sweep.name, storage=sweep.spec.search_alg.storage)  # what Optuna was told
    told = {t.user_attrs.get("ray_trial_id", t.number): t for t in study.trials}
    states = sorted(t.state for t in told.values())
    assert states.count(optuna.trial.TrialState.PRUNED) == sum(r.data.tags["sweeper.stop_reason"] == "asha"
                                                             for r in runs.values())
    for t in told.values():
        if t.state == optuna.trial.TrialState.COMPLETE:  # converged: its best value, not a low-budget one
            assert t.value == pytest.approx(max(t.intermediate_values.values()))
    board = run_sweeper(["leaderboard", "es-noop", "--format", "json"], tmp_path, timeout=60)
    assert board.returncode == 0, board.stderr
    rows = json.loads(board.stdout)["rows"]
    assert [row["score"] for row in rows] == sorted((r.data.metrics["score"] for r in runs.values()), reverse=True)


def test_a_resumed_trial_keeps_its_patience_counter(tmp_path: Path) -> None:
    """lr 1e-6: val/acc does not move after epoch 1. Patience 2: epochs 2 and 3 fail to improve,
    so the trial ends at 3. The script crashes when it starts epoch 3 and is retried from its
    epoch-2 checkpoint, whose counter (1) comes back: it stops at epoch 3. A counter that started
    again from 0 would stop it at epoch 4."""
    launch_sweep(tmp_path, f"""
        name: es-resume
        task: command
        command:
          run: "{{python}} {COMMAND_SCRIPTS / 'train_argparse.py'} {{overrides}}"
          overrides: argparse
          epochs: 8
        base:
          epochs: 8
          lr: 1.0e-6
          crash_at: 3
          crash_marker: {tmp_path / 'crashed'}
        objective: {{metric: val/acc, mode: max}}
        scheduler: {{name: fifo}}
        early_stopping: {{patience: 2, min_delta: 0.01}}
        budget: {{num_samples: 1, max_failures: 1}}
        checkpoint: {{min_interval_s: 0}}
    """)
    assert (tmp_path / "crashed").exists()
    (run,) = trial_runs(tmp_path, "es-resume")
    tags = run.data.tags
    assert (tags["sweeper.status"], tags["sweeper.stop_reason"], tags["sweeper.stopped_at_epoch"]) == (
        "finished", "patience", "3"), tags
    c = mlflow_client(tmp_path)
    assert [m.step for m in c.get_metric_history(run.info.run_id, "val/acc")] == [1, 2, 3]
    assert [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "resumed_from")][-1] == (3, 3.0)
