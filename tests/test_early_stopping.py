"""Patience early stopping and command trials on steps, without a launch: the patience counter,
the stop reasons and the tags they become, ASHA's marking of the trials it cuts (a real
`PersistentASHA` fed results as Tune's controller feeds them), and what the sweep file may say
(`early_stopping`, `command.time_key`), with the dry-run plan that shows it. The launches are in
tests/e2e/test_early_stopping.py and tests/e2e/test_command_sweep.py."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from typer.testing import CliRunner

from sweeper import results
from sweeper.cli import _plan_table, app
from sweeper.config import SweepConfigError, load_sweep
from sweeper.scheduler import PersistentASHA
from sweeper.tracking import end_tags
from sweeper.trainable import Progress

NOOP = """
name: es
task: noop
base: {train: {epochs: 8}}
search: {x: {uniform: [0.0, 1.0]}}
objective: {metric: score, mode: max}
early_stopping: {patience: 2, min_delta: 0.01}
budget: {num_samples: 2}
"""

STEPS = """
name: steps
task: command
command:
  run: "{python} train_steps.py {overrides}"
  overrides: argparse
  time_key: step
base: {steps: 300}
search: {lr: {loguniform: [1.0e-3, 0.3]}}
objective: {metric: val/acc, mode: max}
scheduler: {name: asha, grace_period: 100, reduction_factor: 2, max_t: 300}
budget: {num_samples: 2}
"""


def load(tmp_path: Path, text: str, *overrides: str):  # noqa: ANN201 - a Sweep
    (tmp_path / "s.yaml").write_text(text)
    return load_sweep(tmp_path / "s.yaml", list(overrides), cwd=tmp_path)


def refused(tmp_path: Path, text: str, *overrides: str) -> SweepConfigError:
    with pytest.raises(SweepConfigError) as info:
        load(tmp_path, text, *overrides)
    return info.value


# --------------------------------------------------------------------------- the counter
def test_patience_counts_evaluations_without_an_improvement_beyond_min_delta() -> None:
    p = Progress("max", patience=2, min_delta=0.01)
    seen = [(p.update(v, e), p.wait, p.exhausted) for e, v in enumerate([0.5, 0.505, 0.52, 0.52, 0.521], 1)]
    # 0.505 is a new best (its checkpoint is the one to keep) but gains less than min_delta
    assert seen == [(True, 0, False), (True, 1, False), (True, 0, False), (False, 1, False), (True, 2, True)]
    assert (p.best, p.best_epoch) == (0.521, 5)


def test_patience_in_min_mode_and_with_nan_values() -> None:
    p = Progress("min", patience=1)
    assert p.update(math.nan, 1) and p.wait == 0  # the first value is the best so far, even NaN
    assert p.update(0.9, 2) and p.wait == 0  # anything beats NaN
    assert not p.update(math.nan, 3) and p.exhausted  # NaN gains nothing
    assert p.update(0.8, 4) and not p.exhausted and p.best_epoch == 4
    assert not p.update(None, 5) and p.wait == 0  # no objective in that report: not an evaluation


def test_no_early_stopping_never_runs_out() -> None:
    p = Progress("max")
    for epoch in range(1, 20):
        p.update(0.5, epoch)
    assert not p.exhausted and p.best_epoch == 1


def test_the_counter_survives_a_checkpoint(tmp_path: Path) -> None:
    sweep = load(tmp_path, NOOP)
    p = Progress.for_sweep(sweep)
    assert (p.patience, p.min_delta, p.mode) == (2, 0.01, "max")
    p.update(0.5, 1)
    p.update(0.5, 2)
    saved = {"task": {}, "epoch": 2, **p.state()}  # what the trainable writes into trial_state.pt
    assert Progress.for_sweep(sweep, saved) == p
    assert Progress.for_sweep(sweep, {"epoch": 3, "best_objective": 0.4}).wait == 0  # a checkpoint from before


# --------------------------------------------------------------------------- stop reasons and tags
def res(epoch: int, **extra: object) -> dict:
    return {"epoch": epoch, "epochs_total": 8, "score": 0.5, "best_objective": 0.6, "best_epoch": 1, **extra}


@pytest.mark.parametrize("result, tags", [
    (res(8), {"sweeper.status": "finished", "sweeper.stop_reason": "completed", "sweeper.best_epoch": "1"}),
    (res(3, stop_reason="patience"), {"sweeper.status": "finished", "sweeper.stop_reason": "patience",
                                      "sweeper.stopped_at_epoch": "3", "sweeper.best_epoch": "1"}),
    (res(5, stop_reason="script"), {"sweeper.status": "finished", "sweeper.stop_reason": "script",
                                    "sweeper.stopped_at_epoch": "5", "sweeper.best_epoch": "1"}),
    (res(2, stop_reason="asha"), {"sweeper.status": "stopped", "sweeper.stop_reason": "asha",
                                  "sweeper.stopped_at_epoch": "2", "sweeper.best_epoch": "1"}),
    (res(2), {"sweeper.status": "stopped", "sweeper.stopped_at_epoch": "2", "sweeper.best_epoch": "1"}),
])
def test_a_trials_end_becomes_its_status_and_stop_reason(result: dict, tags: dict) -> None:
    assert end_tags(result, max_t=8, time_key="epoch") == tags


def test_steps_are_the_time_of_a_command_trial_on_steps() -> None:
    done = {"step": 300, "epochs_total": 300, "epoch": 2.0}  # the script's own `epoch` value is just a metric
    assert results.stop_reason(done, 300, "step") == "completed"
    assert end_tags({"step": 150, "epochs_total": 300}, 300, "step")["sweeper.stopped_at_epoch"] == "150"


# --------------------------------------------------------------------------- ASHA's mark
def _trial(tmp_path: Path, trial_id: str) -> Trial:
    return Trial("noop", config={}, trial_id=trial_id, stub=True,
                 storage=StorageContext(str(tmp_path / "ray"), "es", trial_dir_name=f"trial_{trial_id}"))


def _feed(s: PersistentASHA, trial: Trial, result: dict) -> str:
    """As Tune's controller does: the scheduler judges a flat copy, the trial keeps the result."""
    decision = s.on_trial_result(None, trial, dict(result))
    trial.update_last_result({**result, "done": decision == TrialScheduler.STOP})
    if decision == TrialScheduler.STOP:  # stop_trial: scheduler, then searcher and callbacks read last_result
        s.on_trial_complete(None, trial, dict(trial.last_result))
    return decision


def test_asha_marks_the_trials_it_cuts_and_only_those(tmp_path: Path) -> None:
    s = PersistentASHA(time_attr="epoch", metric="score", mode="max", max_t=4, grace_period=1, reduction_factor=2)
    strong, weak, converged, full = (_trial(tmp_path, n) for n in ("strong", "weak", "conv", "full"))
    for t in (strong, weak, converged, full):
        s.on_trial_add(None, t)
    assert _feed(s, strong, {"epoch": 1, "score": 0.9}) == TrialScheduler.CONTINUE
    assert _feed(s, weak, {"epoch": 1, "score": 0.1}) == TrialScheduler.STOP
    assert weak.last_result["stop_reason"] == "asha"
    # patience ran out in the very result ASHA cuts: the trial's own reason stands
    assert _feed(s, converged, {"epoch": 1, "score": 0.05, "stop_reason": "patience"}) == TrialScheduler.STOP
    assert converged.last_result["stop_reason"] == "patience"
    for epoch in range(1, 5):  # reaching max_t ends the budget: not a cut
        decision = _feed(s, full, {"epoch": epoch, "score": 0.95})
    assert decision == TrialScheduler.STOP and "stop_reason" not in full.last_result
    assert s._cut == set()


def test_asha_counts_steps_for_a_command_trial_on_steps(tmp_path: Path) -> None:
    s = PersistentASHA(time_attr="step", metric="val/acc", mode="max", max_t=300, grace_period=100,
                       reduction_factor=2)
    a, b = _trial(tmp_path, "a"), _trial(tmp_path, "b")
    for t in (a, b):
        s.on_trial_add(None, t)
    for step in (50, 100):
        assert _feed(s, a, {"step": step, "val/acc": 0.9}) == TrialScheduler.CONTINUE
    assert _feed(s, b, {"step": 50, "val/acc": 0.2}) == TrialScheduler.CONTINUE  # before the first rung
    assert _feed(s, b, {"step": 100, "val/acc": 0.2}) == TrialScheduler.STOP
    assert b.last_result["stop_reason"] == "asha"


# --------------------------------------------------------------------------- what a sweep file may say
def test_patience_and_min_delta_are_checked(tmp_path: Path) -> None:
    assert load(tmp_path, NOOP).spec.early_stopping.patience == 2
    without = NOOP.replace("early_stopping: {patience: 2, min_delta: 0.01}\n", "")
    assert load(tmp_path, without).spec.early_stopping is None
    err = refused(tmp_path, NOOP, "early_stopping.patience=0")
    assert err.field == "early_stopping.patience" and "greater than or equal to 1" in err.message
    err = refused(tmp_path, NOOP, "early_stopping.min_delta=-0.1")
    assert err.field == "early_stopping.min_delta"
    assert refused(tmp_path, NOOP, "early_stopping={min_delta: 0.1}").field == "early_stopping.patience"


def test_an_invalid_early_stopping_exits_2_naming_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(NOOP.replace("patience: 2", "patience: 0"))
    out = CliRunner().invoke(app, ["validate", "s.yaml"])
    assert out.exit_code == 2 and "s.yaml: early_stopping.patience: " in out.output and "Traceback" not in out.output


def test_time_key_belongs_to_command_trials(tmp_path: Path) -> None:
    err = refused(tmp_path, NOOP, "command.time_key=step")
    assert err.field == "command.time_key" and "task 'noop' counts time in epochs" in err.message
    text = NOOP + "command: {run: 'python x.py {overrides}', time_key: step}\n"
    assert refused(tmp_path, text).field == "command.time_key"  # named as that, not as a misplaced command


def test_on_steps_the_length_is_scheduler_max_t_in_steps(tmp_path: Path) -> None:
    sweep = load(tmp_path, STEPS)
    assert sweep.spec.command.time_unit == "step" and sweep.max_t == 300
    assert results.time_attr(sweep.spec.command) == "step"
    assert refused(tmp_path, STEPS, "command.epochs=3").field == "command.epochs"
    assert refused(tmp_path, STEPS, "command.first_epoch=1").field == "command.first_epoch"
    err = refused(tmp_path, STEPS, "scheduler.max_t=null")
    assert err.field == "scheduler.max_t" and "in steps" in err.message
    assert load(tmp_path, STEPS, "scheduler={name: fifo}").max_t == 1  # FIFO on steps: runs until the script ends
    assert refused(tmp_path, STEPS, "command.time_key=iteration").field == "command.time_key"
    assert refused(tmp_path, STEPS, "command.time_key=[step, step]").field == "command.time_key"


def test_the_old_epoch_key_still_loads_as_time_key(tmp_path: Path) -> None:
    old = STEPS.replace("time_key: step", "epoch_key: [epoch, step]").replace(
        "grace_period: 100, reduction_factor: 2, max_t: 300", "grace_period: 1, max_t: 3")
    sweep = load(tmp_path, old)
    assert sweep.spec.command.time_key == ["epoch", "step"] and sweep.spec.command.time_unit == "epoch"
    assert results.time_attr(sweep.spec.command) == "epoch"
    err = refused(tmp_path, old.replace("epoch_key: [epoch, step]", "epoch_key: [epoch, step]\n  time_key: epoch"))
    assert err.field == "command.epoch_key" and "old name of command.time_key" in err.message


def test_the_dry_run_plan_shows_patience_and_steps(tmp_path: Path) -> None:
    plan = " ".join(_plan_table(load(tmp_path, NOOP)).split())  # rich wraps long lines
    assert "early stopping: a trial ends after 2 evaluations in a row" in plan
    assert "by more than 0.01 (max)" in plan and "trial-epochs" in plan
    plan = " ".join(_plan_table(load(tmp_path, STEPS, "early_stopping={patience: 3}")).split())
    assert "ASHA on `step`: rungs at steps [100, 200]" in plan and "max_t 300 steps" in plan
    assert "at most 600 trial-steps (ASHA stops most trials at 100 steps)" in plan
    assert "time: steps (command.time_key), read from each record's `step`" in plan
    assert "after 3 evaluations in a row" in plan
    plan = " ".join(_plan_table(load(tmp_path, STEPS, "scheduler={name: fifo}")).split())
    assert "FIFO: every trial runs until its script ends" in plan and "early stopping: none" in plan
