"""PersistentASHA: rung records survive the pickling Tune does on `Tuner.restore`; `asha_rungs`
says where a real `AsyncHyperBandScheduler` judges trials (driven here without starting Ray)."""
from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from sweeper.rungs import asha_rungs
from sweeper.scheduler import PersistentASHA


def make(path: Path | None) -> PersistentASHA:
    return PersistentASHA(time_attr="epoch", metric="map50", mode="max", max_t=9, grace_period=1,
                          reduction_factor=3, state_path=str(path) if path else None)


def feed(s: PersistentASHA, trial_id: str, epoch: int, value: float) -> str:
    trial = SimpleNamespace(trial_id=trial_id)
    if trial_id not in s._trial_info:
        s.on_trial_add(None, trial)
    return s.on_trial_result(None, trial, {"epoch": epoch, "map50": value})


def test_rungs_come_back_after_a_restart_and_keep_judging(tmp_path: Path) -> None:
    path = tmp_path / "asha_rungs.json"
    s = make(path)
    pickled = pickle.dumps(s)  # what Tune keeps from the start of the sweep
    for i, value in enumerate([0.5, 0.6, 0.7, 0.4]):
        feed(s, f"t{i}", 1, value)
    assert path.is_file()

    restored = pickle.loads(pickled)  # the driver restarts: Tune unpickles the scheduler
    assert restored.rung_state() == s.rung_state()
    assert feed(restored, "weak", 1, 0.1) == TrialScheduler.STOP  # judged against the old rung
    forgetful = pickle.loads(pickle.dumps(make(None)))
    assert feed(forgetful, "weak", 1, 0.1) == TrialScheduler.CONTINUE  # what plain ASHA would do


def test_a_differently_shaped_state_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "asha_rungs.json"
    s = make(path)
    feed(s, "t0", 1, 0.5)
    other = PersistentASHA(time_attr="epoch", metric="map50", mode="max", max_t=27, grace_period=1,
                           reduction_factor=3, state_path=str(path))
    restored = pickle.loads(pickle.dumps(other))
    assert all(not recorded for b in restored._brackets for _, recorded in b._rungs)


# (grace_period, reduction_factor, max_t): sweeper's defaults (3 arrives as the float 3.0 from the
# schema), the benchmarks' cases, max_t a power of the factor (Ray's log may round either way
# there), grace = max_t, fractional factors and factors small enough to pass several milestones
# in one epoch
WHOLE = [(1, 3, 6), (2, 3, 20), (1, 4, 100), (3, 3, 9), (4, 2, 4), (1, 3.0, 12), (1, 3, 9), (1, 2, 16),
         (1, 10, 1000), (1, 4, 64), (5, 2, 5), (1, 3, 1), (2, 2.0, 31)]
FRACTIONAL = [(1, 2.5, 10), (2, 2.5, 40), (1, 1.5, 10), (1, 1.2, 20), (2, 1.2, 30), (1, 1.05, 30), (3, 1.7, 50)]


def ray_asha(grace: int, rf: float, max_t: int) -> AsyncHyperBandScheduler:
    return AsyncHyperBandScheduler(time_attr="epoch", metric="m", mode="max", max_t=max_t, grace_period=grace,
                                   reduction_factor=rf)


def judged_epochs(sched: AsyncHyperBandScheduler, max_t: int) -> list[int]:
    """The epochs at which a trial reporting every epoch up to past max_t gets a rung record."""
    trial = SimpleNamespace(trial_id="t")
    sched.on_trial_add(None, trial)
    epochs = []
    for epoch in range(1, max_t + 3):
        before = sum(len(recorded) for _, recorded in sched._brackets[0]._rungs)
        sched.on_trial_result(None, trial, {"epoch": epoch, "m": float(epoch)})
        if sum(len(recorded) for _, recorded in sched._brackets[0]._rungs) > before:
            epochs.append(epoch)
    return epochs


@pytest.mark.parametrize("grace, rf, max_t", WHOLE)
def test_whole_number_rungs_are_rays_milestones_below_max_t(grace: int, rf: float, max_t: int) -> None:
    milestones = sorted(m for m, _ in ray_asha(grace, rf, max_t)._brackets[0]._rungs if m < max_t)
    assert asha_rungs(grace, rf, max_t) == milestones


@pytest.mark.parametrize("grace, rf, max_t", WHOLE + FRACTIONAL)
def test_rungs_are_where_rays_asha_records_a_trial(grace: int, rf: float, max_t: int) -> None:
    assert asha_rungs(grace, rf, max_t) == judged_epochs(ray_asha(grace, rf, max_t), max_t)


def test_a_weaker_trial_can_be_stopped_at_the_rung_epochs_and_only_there() -> None:
    sched = ray_asha(2, 2.5, 40)  # rungs [2, 5, 13, 32]: milestones 2, 5, 12.5, 31.25
    assert asha_rungs(2, 2.5, 40) == [2, 5, 13, 32]
    strong, weak = SimpleNamespace(trial_id="strong"), SimpleNamespace(trial_id="weak")
    for trial in (strong, weak):
        sched.on_trial_add(None, trial)
    for epoch in range(1, 40):
        assert sched.on_trial_result(None, strong, {"epoch": epoch, "m": 1.0}) == TrialScheduler.CONTINUE
    # (Tune would end it at the first STOP; fed on, it shows every epoch a stop can happen at)
    actions = {epoch: sched.on_trial_result(None, weak, {"epoch": epoch, "m": 0.0}) for epoch in range(1, 14)}
    assert [e for e, a in actions.items() if a == TrialScheduler.STOP] == [2, 5, 13]


@pytest.mark.parametrize("grace, rf, max_t", [(0, 3, 9), (10, 3, 9), (1, 1, 9), (1, 0.5, 9)])
def test_settings_ray_refuses_are_refused(grace: int, rf: float, max_t: int) -> None:
    with pytest.raises(AssertionError):
        ray_asha(grace, rf, max_t)
    with pytest.raises(ValueError):
        asha_rungs(grace, rf, max_t)
