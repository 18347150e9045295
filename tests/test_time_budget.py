"""Time budgets without starting a sweep: durations, what a sweep file may say about time (and
what is refused, naming the field), the dry-run plan's lines, ASHA on seconds driven by
fabricated results, the trial clock, and the median epoch time read from a real MLflow store."""
from __future__ import annotations

import pickle
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from sweeper.config import SweepConfigError, load_sweep
from sweeper.config.time_budget import plan_lines, timed_rungs
from sweeper.durations import format_duration, parse_duration

SWEEP = """name: tb
task: noop
base: {train: {epochs: 10}}
search: {x: {uniform: [0, 1]}}
objective: {metric: score}
budget: {num_samples: 2}
"""


def load(tmp_path: Path, *sets: str, text: str = SWEEP):  # noqa: ANN201 - a Sweep
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return load_sweep(path, list(sets), cwd=tmp_path)


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("30m", 1800), ("12h", 43200), ("1d", 86400), ("1h30m", 5400), ("1d2h3m4s", 93784),
    ("2.5h", 9000), ("0.5s", 0.5), (45, 45), (7.5, 7.5), ("120", 120), (" 1H 30M ", 5400),
])
def test_durations_parse_to_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, words", [
    ("abc", "not a duration"), ("12x", "not a duration"), ("30m1h", "largest first"), ("1h1h", "not a duration"),
    ("h", "not a duration"), ("", "not a duration"), ("-5s", "not a duration"), (0, "positive"), (-3, "positive"),
    ("0s", "positive"), (float("inf"), "finite"), ("400d", "more than a year"), (True, "not a duration"),
    ([1], "not a duration"),
])
def test_bad_durations_say_what_is_accepted(text: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_duration(text)


@pytest.mark.parametrize("seconds, text", [(5400, "1h30m"), (90, "1m30s"), (43200, "12h"), (0.5, "0.5s"),
                                           (93784, "1d2h3m4s"), (8, "8s")])
def test_durations_format_as_the_sweep_file_writes_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_budget_limits_load_as_seconds(tmp_path: Path) -> None:
    sweep = load(tmp_path, "budget.time_limit=1h30m", "budget.trial_time_limit=90")
    assert (sweep.spec.budget.time_limit, sweep.spec.budget.trial_time_limit) == (5400, 90)
    assert load(tmp_path).spec.budget.time_limit is None  # no limit by default


def test_timed_asha_takes_durations_and_keeps_epochs_for_the_trial(tmp_path: Path) -> None:
    sweep = load(tmp_path, "scheduler={time_attr: time_total_s, grace_period: 10m, max_t: 2h}")
    sched = sweep.spec.scheduler
    assert (sched.grace_period, sched.max_t) == (600, 7200)
    assert sweep.max_t == 10  # the trial's last epoch is still train.epochs
    assert sweep.asha_max_t == 7200  # ASHA's last rung is in seconds
    assert load(tmp_path, "scheduler={time_attr: time_total_s, grace_period: 30, max_t: 300}").asha_max_t == 300
    auto = load(tmp_path, "scheduler={time_attr: time_total_s, max_t: 2h}").spec.scheduler
    assert auto.grace_period == 1800  # grace_period: auto on seconds is a quarter of max_t
    epochs = load(tmp_path, "scheduler={max_t: 6}")  # on epochs nothing changes
    assert (epochs.max_t, epochs.asha_max_t) == (6, 6)


def test_the_scheduler_key_follows_time_attr() -> None:
    from sweeper.results import EPOCH, STEP, TIME_TOTAL_S, asha_time_attr

    timed, plain = SimpleNamespace(time_attr="time_total_s"), SimpleNamespace(time_attr="epoch")
    assert asha_time_attr(timed, None) == TIME_TOTAL_S
    assert asha_time_attr(plain, None) == EPOCH
    assert asha_time_attr(plain, SimpleNamespace(time_unit="step")) == STEP


@pytest.mark.parametrize("sets, field, words", [
    (["budget.time_limit=soon"], "budget.time_limit", "'soon' is not a duration"),
    (["budget.time_limit=30m1h"], "budget.time_limit", "largest first"),
    (["budget.trial_time_limit=0"], "budget.trial_time_limit", "must be positive"),
    (["budget.time_limit=500d"], "budget.time_limit", "more than a year"),
    (["scheduler={time_attr: time_total_s}"], "scheduler.max_t", "needs its last rung in seconds"),
    (["scheduler={time_attr: time_total_s, max_t: 1h, grace_period: 2h}"], "scheduler.grace_period",
     "2h exceeds max_t (1h)"),
    (["scheduler={time_attr: time_total_s, max_t: forever}"], "scheduler.max_t", "'forever' is not a duration"),
    (["scheduler={name: fifo, time_attr: time_total_s, max_t: 1h}"], "scheduler.time_attr", "has no rungs"),
    (["scheduler={max_t: 2h}"], "scheduler.max_t", "integer"),  # on epochs a duration is a mistake
    (["scheduler={time_attr: seconds}"], "scheduler.time_attr", "'epoch' or 'time_total_s'"),
    (["scheduler={time_attr: time_total_s, max_t: 1h, promote: true}"], "scheduler.promote", "stop-based ASHA"),
])
def test_bad_time_settings_are_refused_naming_the_field(tmp_path: Path, sets: list[str], field: str,
                                                        words: str) -> None:
    with pytest.raises(SweepConfigError) as err:
        load(tmp_path, *sets)
    assert err.value.field == field and Path(err.value.file).name == "s.yaml"
    assert words in err.value.message, err.value.message


def test_a_command_trial_on_time_declares_its_epochs(tmp_path: Path) -> None:
    text = """name: tbc
task: command
command: {run: "python train.py {overrides}"}
search: {lr: {loguniform: [1.0e-4, 1.0e-1]}}
objective: {metric: val/acc}
scheduler: {time_attr: time_total_s, max_t: 1h}
"""
    with pytest.raises(SweepConfigError) as err:
        load(tmp_path, text=text)
    assert err.value.field == "command.epochs" and "set command.epochs" in err.value.message
    sweep = load(tmp_path, "command.epochs=5", text=text)
    assert (sweep.max_t, sweep.asha_max_t) == (5, 3600)


def test_timed_rungs_are_the_milestones_below_max_t() -> None:
    assert timed_rungs(10, 3, 300) == [10, 30, 90, 270]
    assert timed_rungs(60, 2, 60) == []
    assert timed_rungs(5, 2.5, 40) == [5, 12.5, 31.25]


def test_plan_lines_show_the_limit_and_its_expected_end(tmp_path: Path) -> None:
    spec = load(tmp_path, "budget.time_limit=12h", "budget.trial_time_limit=2h").spec
    now = time.mktime((2026, 12, 3, 10, 0, 0, 0, 0, 0)) - time.timezone  # 10:00 UTC
    first, second = plan_lines(spec, now)
    assert first.startswith("time limit: 12h per launch: ends by about 2026-12-03 22:00:00 UTC (now + limit;")
    assert "`sweeper resume` continues them with a fresh 12h" in first
    assert second.startswith("trial time limit: 2h of training per trial") and "stop_reason time_limit" in second
    assert plan_lines(load(tmp_path).spec, now) == []


def test_the_dry_run_prints_the_time_plan(tmp_path: Path) -> None:
    from sweeper.cli import _plan_table

    text = _plan_table(load(tmp_path, "budget.time_limit=90m",
                            "scheduler={time_attr: time_total_s, grace_period: 1m, max_t: 9m}"))
    flat = " ".join(text.split())
    assert "ASHA on `time_total_s`: rungs at [1m, 3m] of training time" in flat
    assert "max_t 9m" in flat
    end = time.strftime("%Y-%m-%d %H:%M", time.gmtime(time.time() + 5400))
    assert "time limit: 1h30m per launch: ends by about " + end in flat  # now + limit (to the minute)
    assert "time limit" not in " ".join(_plan_table(load(tmp_path)).split())


# --------------------------------------------------------------------------- ASHA on seconds
def _asha(tmp_path: Path):  # noqa: ANN202 - PersistentASHA
    from sweeper.scheduler import PersistentASHA

    return PersistentASHA(time_attr="time_total_s", metric="score", mode="max", max_t=90, grace_period=10,
                          reduction_factor=3, state_path=str(tmp_path / "asha_rungs.json"))


def _trial(s, trial_id: str):  # noqa: ANN001, ANN202
    trial = SimpleNamespace(trial_id=trial_id, last_result=None)
    s.on_trial_add(None, trial)
    return trial


def test_asha_on_seconds_judges_at_training_time_not_epochs(tmp_path: Path) -> None:
    """Rungs at 10 s and 30 s: a slow trial (20 s epochs) is judged at its first epoch past 10 s,
    whatever its epoch number; one reaching max_t seconds before its last epoch ends `time_limit`."""
    from ray.tune.schedulers import TrialScheduler

    from sweeper.results import STOP_REASON, TIME_LIMIT

    s = _asha(tmp_path)
    fast, slow, weak = _trial(s, "fast"), _trial(s, "slow"), _trial(s, "weak")
    # epochs of 5 s (fast), 20 s (slow, weak): not judged before 10 s of training
    assert s.on_trial_result(None, fast, {"epoch": 1, "epochs_total": 30, "time_total_s": 5.0, "score": 0.9}) \
        == TrialScheduler.CONTINUE
    for trial, epoch, seconds, score in ((fast, 2, 10.0, 0.9), (slow, 1, 20.0, 0.95)):
        assert s.on_trial_result(None, trial, {"epoch": epoch, "epochs_total": 30, "time_total_s": seconds,
                                               "score": score}) == TrialScheduler.CONTINUE
    assert sorted(s.rung_state()["brackets"][0][-1][1]) == ["fast", "slow"]  # both in the 10 s rung
    # the 10 s rung holds 0.9 and 0.95: weak (0.1 at 20 s, its epoch 1) is below the top third
    weak_result = {"epoch": 1, "epochs_total": 30, "time_total_s": 20.0, "score": 0.1}
    assert s.on_trial_result(None, weak, weak_result) == TrialScheduler.STOP
    weak.last_result = dict(weak_result)
    s.on_trial_complete(None, weak, weak_result)
    assert weak.last_result[STOP_REASON] == "asha"  # cut at a rung measured in seconds
    # fast reaches max_t (90 s) at epoch 18 of 30: its time budget is used up, it ran its course
    end = {"epoch": 18, "epochs_total": 30, "time_total_s": 91.0, "score": 0.95}
    assert s.on_trial_result(None, fast, end) == TrialScheduler.STOP
    fast.last_result = dict(end)
    s.on_trial_complete(None, fast, end)
    assert fast.last_result[STOP_REASON] == TIME_LIMIT
    restored = pickle.loads(pickle.dumps(s))  # Tune's restore: rungs (in seconds) come back
    assert restored.rung_state() == s.rung_state()


def test_a_time_limit_is_a_finished_trial_for_tracking_and_the_searcher() -> None:
    from sweeper.results import SELF_STOPS, TIME_LIMIT, stop_reason
    from sweeper.tracking import end_tags

    result = {"epoch": 4, "epochs_total": 10, "stop_reason": TIME_LIMIT, "best_epoch": 3}
    assert stop_reason(result, 10) == TIME_LIMIT and TIME_LIMIT in SELF_STOPS
    assert end_tags(result, 10, "epoch") == {"sweeper.status": "finished", "sweeper.stop_reason": "time_limit",
                                             "sweeper.stopped_at_epoch": "4", "sweeper.best_epoch": "3"}


# --------------------------------------------------------------------------- the trial's clock
def test_the_trial_clock_adds_up_over_restarts_and_counts_gpu_seconds_only_on_gpus() -> None:
    from sweeper.time_budget import TrialClock, past

    clock = TrialClock(100.0, gpus=2)
    assert 100.0 <= clock.total_s < 101.0
    assert clock.over(100.0) and not clock.over(200.0) and not clock.over(None)
    assert clock.metrics()["gpu_seconds"] == pytest.approx(2 * clock.total_s, rel=1e-3)
    assert TrialClock(100.0, gpus=0).metrics() == {}  # absent on CPU, not 0
    assert past(time.time() - 1) and not past(time.time() + 60) and not past(None)


# --------------------------------------------------------------------------- measured epochs
def _store(tmp_path: Path, totals: dict[str, list[float]]) -> tuple[str, str]:
    """A real sqlite store with one sweep's trials, each with a `time_total_s` history per epoch."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("tb")
    for trial_id, history in totals.items():
        run = c.create_run(exp, tags={"sweeper.kind": "trial", "sweeper.trial_id": trial_id})
        for epoch, total in enumerate(history, 1):
            c.log_metric(run.info.run_id, "time_total_s", total, step=epoch)
    return uri, exp


def test_the_median_epoch_time_comes_from_mlflow_and_refuses_a_shorter_limit(tmp_path: Path) -> None:
    from sweeper.time_budget import check_against_history, median_epoch_s

    # epochs of 50, 60, 70 s and 55, 65 s (a resumed trial's total carries on from its checkpoint)
    uri, exp = _store(tmp_path, {"a": [50.0, 110.0, 180.0], "b": [55.0, 120.0]})
    assert median_epoch_s(uri, exp) == 60.0
    sweep = load(tmp_path, "budget.time_limit=45s", f"tracking.uri={uri}")
    with pytest.raises(SweepConfigError) as err:
        check_against_history(sweep, exp)
    assert err.value.field == "budget.time_limit" and "45s is shorter than one epoch of this sweep (1m, the median" \
        in err.value.message
    check_against_history(load(tmp_path, "budget.time_limit=2m", f"tracking.uri={uri}"), exp)  # long enough
    check_against_history(load(tmp_path, f"tracking.uri={uri}"), exp)  # no limit: nothing to check


def test_no_measured_epoch_means_no_refusal(tmp_path: Path) -> None:
    from sweeper.time_budget import check_against_history, median_epoch_s

    uri, exp = _store(tmp_path, {"a": []})
    assert median_epoch_s(uri, exp) is None
    check_against_history(load(tmp_path, "budget.time_limit=1s", f"tracking.uri={uri}"), exp)
