"""PersistentASHA: rung records survive the pickling Tune does on `Tuner.restore`."""
from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

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
