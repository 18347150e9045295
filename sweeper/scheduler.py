"""ASHA that remembers its rungs across a driver restart.

Ray Tune restores a sweep's trials and its searcher after a crash, but the scheduler comes back
as it was pickled when the sweep started: with empty rungs. A resumed ASHA would then judge the
next results against nothing and let weak trials run to the end. This subclass writes its rung
records (small: one number per trial per rung) to `state_path` whenever they change, atomically,
and reads them back when Tune unpickles it on `Tuner.restore`.

    ASHA(time_attr="epoch", max_t=12, grace_period=1, reduction_factor=3, state_path="runs/x/asha_rungs.json")

It also says which trials it stopped: a trial it cuts at a rung ends with `stop_reason: asha` in
its last result (`sweeper.results`), which is how the searcher (PRUNED) and MLflow
(`sweeper.stop_reason`) tell an ASHA stop from a trial that ended itself (patience, its script).
On `time_attr="time_total_s"` (`scheduler.time_attr`) the rungs and `max_t` are seconds of
training, and a trial that reaches `max_t` before its last epoch ends with `stop_reason:
time_limit`: it used up its time budget, which is how that scheduler defines a finished trial.

`sweeper.rungs.asha_rungs` says, without starting anything, at which epochs that ASHA judges a
trial (the dry-run plan and the benchmarks print it).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from sweeper.results import ASHA, EPOCH, EPOCHS_TOTAL, STOP_REASON, TIME_LIMIT, TIME_TOTAL_S


class PersistentASHA(ASHAScheduler):
    """`ray.tune.schedulers.ASHAScheduler` whose rung records survive a restart (local storage)."""

    def __init__(self, *args: Any, state_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state_path = state_path
        self._cut: set[str] = set()  # trials stopped at a rung, until Tune completes them

    def rung_state(self) -> dict[str, Any]:
        """Per bracket, per rung: milestone and {trial_id: signed objective}; plus the stop count."""
        return {"num_stopped": self._num_stopped,
                "brackets": [[[milestone, dict(recorded)] for milestone, recorded in b._rungs]
                             for b in self._brackets]}

    def load_rung_state(self, state: dict[str, Any]) -> None:
        if len(state["brackets"]) != len(self._brackets):
            return  # a different scheduler configuration: start afresh rather than mix
        for bracket, rungs in zip(self._brackets, state["brackets"]):
            if [m for m, _ in rungs] != [m for m, _ in bracket._rungs]:
                return
        for bracket, rungs in zip(self._brackets, state["brackets"]):
            for (milestone, recorded), (_, saved) in zip(bracket._rungs, rungs):
                recorded.update(saved)
        self._num_stopped = state.get("num_stopped", 0)

    def _save(self) -> None:
        """Write the rungs if they changed: most results pass no milestone, and rewriting the
        whole record on each would cost the driver O(trials) per result."""
        if not self.state_path:
            return
        size = (self._num_stopped, sum(len(recorded) for b in self._brackets for _, recorded in b._rungs))
        if size == getattr(self, "_saved_size", None):
            return  # rung records only grow: the same counts mean the same records
        self._saved_size = size
        tmp = f"{self.state_path}.tmp"
        Path(tmp).parent.mkdir(parents=True, exist_ok=True)
        Path(tmp).write_text(json.dumps(self.rung_state()))
        os.replace(tmp, self.state_path)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:  # noqa: ANN001
        action = super().on_trial_result(tune_controller, trial, result)
        self._save()
        if action == TrialScheduler.STOP and result.get(self._time_attr, 0) < self._max_t:
            # cut at a rung (reaching max_t is the end of the trial's budget, not a cut); a trial
            # that ended itself in this very result keeps its own reason
            if not result.get(STOP_REASON):
                self._cut.add(trial.trial_id)
        elif action == TrialScheduler.STOP and self._time_attr == TIME_TOTAL_S and not result.get(STOP_REASON) \
                and result.get(EPOCH, 0) < (result.get(EPOCHS_TOTAL) or 0):
            # on time, max_t is the trial's time budget: used up before its last epoch, it ran its course
            self.__dict__.setdefault("_timed_out", set()).add(trial.trial_id)
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:  # noqa: ANN001
        super().on_trial_complete(tune_controller, trial, result)
        self._save()
        if trial.trial_id in self._cut:
            # Tune hands the scheduler, the searcher and the callbacks copies of the trial's last
            # result, made one after the other from `trial.last_result`, this one first: marking the
            # original here is what the searcher and MLflow then read
            self._cut.discard(trial.trial_id)
            if trial.last_result is not None and not trial.last_result.get(STOP_REASON):
                trial.last_result[STOP_REASON] = ASHA
        if trial.trial_id in self.__dict__.get("_timed_out", ()):
            self._timed_out.discard(trial.trial_id)
            if trial.last_result is not None and not trial.last_result.get(STOP_REASON):
                trial.last_result[STOP_REASON] = TIME_LIMIT

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_cut", set())  # pickled before it existed
        path = state.get("state_path")
        if path and Path(path).is_file():  # Tune unpickles the scheduler on restore: bring the rungs back
            self.load_rung_state(json.loads(Path(path).read_text()))
