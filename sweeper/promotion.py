"""Promotion-based ASHA (Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning").

Ray's `ASHAScheduler` (our `PersistentASHA`) decides once, when a trial reaches a rung: carry on,
or stop for good. A trial that was third of the first three at epoch 1 is gone even if the next
twenty are worse. The paper's ASHA instead pauses every trial at every rung and promotes later:

- rungs at `grace_period * reduction_factor ** k < max_t` epochs (`sweeper.rungs.promotion_rungs`);
- a trial reporting at a rung is recorded there and PAUSED (Tune checkpoints it and releases its
  resources: a waiting trial holds a checkpoint on storage, not a GPU);
- whenever a worker is free (`choose_trial_to_run`), the scheduler first promotes a paused trial
  that is in the top floor(n_k / reduction_factor) of its rung k and not promoted yet (highest
  rung first, best first); only when none is promotable does a new trial start. A trial whose
  own result makes it the next promotion just carries on (no pause and reload);
- a trial reaching `max_t` completes;
- once nothing is left to start (all `num_samples` trials created, none pending or running),
  the paused trials that can never be promoted are ended, with `stop_reason: asha` in their
  last result, like `PersistentASHA`'s cuts (the searcher reports them PRUNED, MLflow `stopped`).

    PromotionASHA(time_attr="epoch", max_t=9, grace_period=1, reduction_factor=3, num_samples=27,
                  state_path="runs/x/asha_rungs.json")

The rung records, the promotions and the waiting trials are written to `state_path` (atomically,
when they change) and read back when Tune unpickles the scheduler on `Tuner.restore`: Tune puts
the paused trials back as PENDING, and the scheduler pauses them again before they start.

New trials come from the searcher, which Tune asks before the scheduler each step. Ray's
`ConcurrencyLimiter` counts paused trials as live and would stop proposing once every slot holds
a waiting trial (a deadlock), and a new trial proposed while a promotion is due would take the
free worker first. So the scheduler tells the searcher what it knows, as Ray's BOHB scheduler does
(`tune_controller.search_alg.searcher`): `set_paused(trial_ids, hold)` (the waiting trials, which do
not count against the concurrency limit, and whether a promotion is due, during which no new trial
is proposed); `PausingLimiter` below implements it. A searcher without it is left alone.

What it uses of Tune, for a replay that drives it with a light controller and light trials:
- controller: `get_trials()` (the trials in creation order) in `choose_trial_to_run`;
  `stop_trial(trial)` to end the trials that can never be promoted (Tune then calls
  `on_trial_remove`); optional, looked up with `getattr`: `search_alg` (its `searcher`'s
  `set_paused`, and `is_finished()` when `num_samples` is not known) and
  `_set_trial_status(trial, "PAUSED")` (only after a restore, for trials Tune put back as PENDING
  that wait at a rung).
- trial: `trial_id`, `status` ("PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR", as
  `ray.tune.experiment.Trial` spells them) and `last_result` (a dict; read after a restore, and
  `stop_reason` is written into it when the trial is ended).
- results: `time_attr` (epochs from 1, or steps) and `metric`; a result without them continues.
Decisions are `TrialScheduler.CONTINUE`, `PAUSE` and `STOP` (the strings "CONTINUE", "PAUSE",
"STOP"); a driver that sees PAUSE sets the trial's status to "PAUSED" and restarts it from the
rung when `choose_trial_to_run` returns it.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from sweeper.results import ASHA, STOP_REASON
from sweeper.rungs import promotion_rungs


class PromotionASHA(FIFOScheduler):
    """ASHA that pauses trials at rungs and promotes the top 1/reduction_factor of each later.

    `max_t`, `grace_period`: in `time_attr` units (epochs); `reduction_factor`: keep 1 in this
    many per rung; `num_samples`: trials the sweep creates (None: taken from Tune's experiment,
    else the searcher's `is_finished`); `state_path`: JSON file for the rung records (None: none).
    """

    def __init__(self, time_attr: str = "epoch", metric: str | None = None, mode: str | None = None,
                 max_t: int = 100, grace_period: int = 1, reduction_factor: float = 3,
                 num_samples: int | None = None, state_path: str | None = None) -> None:
        super().__init__()
        if mode not in (None, "max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self._time_attr, self._metric, self._mode = time_attr, metric, mode
        self._max_t, self._rf = max_t, reduction_factor
        self.rungs = promotion_rungs(grace_period, reduction_factor, max_t)  # epochs, ascending
        self._num_samples = num_samples
        self.state_path = state_path
        self._recorded: list[dict[str, float]] = [{} for _ in self.rungs]  # trial -> value, higher better
        self._promoted: list[set[str]] = [set() for _ in self.rungs]  # trials promoted from each rung
        self._waiting: dict[str, int] = {}  # paused (or pausing) trial -> the rung index it waits at
        self._ended: set[str] = set()  # paused trials ended because they can never be promoted
        self._saved: str | None = None  # the last state written
        self._told: tuple[frozenset[str], bool] | None = None  # what the searcher was last told

    # ------------------------------------------------------------------ Tune's scheduler API
    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False  # set twice: Tune then says so (as it does for Ray's ASHA)
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        if self._num_samples is None and isinstance(spec.get("num_samples"), int):
            self._num_samples = spec["num_samples"]
        return True

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        t = result.get(self._time_attr)
        if t is None or self._metric not in result:
            return TrialScheduler.CONTINUE
        tid = trial.trial_id
        if t >= self._max_t:  # its whole budget: it completes
            self._waiting.pop(tid, None)
            return TrialScheduler.STOP
        k = self._rung_of(t)
        if k is None or tid in self._promoted[k] or (t != self.rungs[k] and tid in self._recorded[k]):
            return TrialScheduler.CONTINUE  # below the first rung, or between rungs after a promotion
        self._recorded[k][tid] = self._signed(result[self._metric])

        def waiting_or_this(other: str, rung: int) -> bool:
            return self._waiting.get(other) == rung or (other, rung) == (tid, k)

        if result.get(STOP_REASON):  # it ends itself in this result (patience): counted, not paused
            self._waiting.pop(tid, None)
            decision = TrialScheduler.CONTINUE
        elif self._next_promotion(waiting_or_this) == (k, tid):
            self._promoted[k].add(tid)  # it is the next promotion itself: carry on, no pause and reload
            self._waiting.pop(tid, None)
            decision = TrialScheduler.CONTINUE
        else:
            self._waiting[tid] = k
            decision = TrialScheduler.PAUSE
        self._tell_searcher(tune_controller)
        self._save()
        return decision

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        trials = tune_controller.get_trials()
        by_id = {t.trial_id: t for t in trials}
        self._pause_restored(tune_controller, trials)
        choice = self._next_promotion(lambda tid, rung: self._waiting.get(tid) == rung
                                      and getattr(by_id.get(tid), "status", None) == Trial.PAUSED)
        if choice is not None:
            rung, tid = choice
            self._promoted[rung].add(tid)
            del self._waiting[tid]
            self._tell_searcher(tune_controller)
            self._save()
            return by_id[tid]
        for trial in trials:
            if trial.status == Trial.PENDING and trial.trial_id not in self._waiting:
                return trial
        if self._nothing_left(tune_controller, trials):
            self._end_waiting(tune_controller, by_id)
        self._tell_searcher(tune_controller)
        return None

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._waiting.pop(trial.trial_id, None)  # it ended itself (patience) or reached max_t
        self._tell_searcher(tune_controller)
        self._save()

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._waiting.pop(trial.trial_id, None)
        self._tell_searcher(tune_controller)
        self._save()

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        sizes = ", ".join(f"epoch {r}: {len(rec)} ({len(pro)} promoted)"
                          for r, rec, pro in zip(self.rungs, self._recorded, self._promoted))
        return f"Using promotion ASHA: {len(self._waiting)} paused; rungs {sizes or 'none'}"

    # ------------------------------------------------------------------ the decision rule
    def _rung_of(self, t: float) -> int | None:
        """The index of the highest rung at or below `t` (None: below the first)."""
        below = [i for i, r in enumerate(self.rungs) if r <= t]
        return below[-1] if below else None

    def _signed(self, value: Any) -> float:
        value = float(value)
        if math.isnan(value):
            return -math.inf  # a NaN objective is never promoted
        return -value if self._mode == "min" else value

    def _next_promotion(self, eligible: Callable[[str, int], bool]) -> tuple[int, str] | None:
        """(rung index, trial id) of the next promotion: the highest rung first, and in it the best
        trial of its top floor(n / reduction_factor) that is not promoted and `eligible`."""
        for k in reversed(range(len(self.rungs))):
            recorded = self._recorded[k]
            top = int(len(recorded) // self._rf)
            if not top:
                continue
            # ties keep the order of arrival (sorted is stable)
            for tid in sorted(recorded, key=recorded.__getitem__, reverse=True)[:top]:
                if tid not in self._promoted[k] and eligible(tid, k):
                    return k, tid
        return None

    def promotable(self) -> list[tuple[int, str]]:
        """Every (rung index, trial id) waiting that is promotable now (for tests and reports)."""
        out = []
        for k in range(len(self.rungs)):
            recorded = self._recorded[k]
            top = sorted(recorded, key=recorded.__getitem__, reverse=True)[:int(len(recorded) // self._rf)]
            out += [(k, tid) for tid in top if tid not in self._promoted[k] and self._waiting.get(tid) == k]
        return out

    def _nothing_left(self, tune_controller: Any, trials: list[Any]) -> bool:
        """True once no trial will ever report again unless promoted: every trial the sweep will
        create exists, and none is pending or running (nor will be: nothing is promotable)."""
        if any(t.status in (Trial.PENDING, Trial.RUNNING) for t in trials):
            return False
        if self._num_samples is not None:
            return len(trials) >= self._num_samples
        search_alg = getattr(tune_controller, "search_alg", None)
        return bool(search_alg is not None and search_alg.is_finished())

    def _end_waiting(self, tune_controller: Any, by_id: dict[str, Any]) -> None:
        """End the paused trials: the rungs are final, so none of them can be promoted any more."""
        for tid in list(self._waiting):
            trial = by_id.get(tid)
            if trial is None or trial.status != Trial.PAUSED:
                continue
            if trial.last_result is not None and not trial.last_result.get(STOP_REASON):
                # what the searcher (PRUNED) and MLflow (`sweeper.stop_reason`) read when Tune ends it
                trial.last_result[STOP_REASON] = ASHA
            del self._waiting[tid]
            self._ended.add(tid)
            tune_controller.stop_trial(trial)
        self._save()

    def _pause_restored(self, tune_controller: Any, trials: list[Any]) -> None:
        """After `Tuner.restore`, Tune hands back every paused trial as PENDING: pause again those
        that wait at a rung (their checkpoint is the rung's), end again those already ended. A
        trial whose last result is behind its record (Tune's snapshot is older than the state
        file after a hard kill) reruns to the rung and is recorded again."""
        set_status = getattr(tune_controller, "_set_trial_status", None)
        for trial in trials:
            tid = trial.trial_id
            if trial.status != Trial.PENDING or (tid not in self._waiting and tid not in self._ended):
                continue
            epoch = (trial.last_result or {}).get(self._time_attr)
            if tid in self._ended:
                if set_status is not None:
                    set_status(trial, Trial.PAUSED)
                    self._waiting[tid] = self._rung_of(epoch or 0) or 0
                    self._ended.discard(tid)  # `_end_waiting` ends it again once nothing is left
                continue
            k = self._waiting[tid]
            if epoch != self.rungs[k]:
                del self._waiting[tid]
                self._recorded[k].pop(tid, None)
            elif set_status is not None:
                set_status(trial, Trial.PAUSED)

    def _tell_searcher(self, tune_controller: Any) -> None:
        """Tell the searcher which trials wait at a rung and whether a promotion is due (when it
        changed): see the module docstring."""
        searcher = getattr(getattr(tune_controller, "search_alg", None), "searcher", None)
        if not hasattr(searcher, "set_paused"):
            return
        due = self._next_promotion(lambda tid, rung: self._waiting.get(tid) == rung) is not None
        told = (frozenset(self._waiting), due)
        if told != self._told:
            searcher.set_paused(told[0], told[1])
            self._told = told

    # ------------------------------------------------------------------ persistence
    def rung_state(self) -> dict[str, Any]:
        """Rungs (epoch, {trial: signed objective}, promoted trials), the waiting and ended trials."""
        rungs = zip(self.rungs, self._recorded, self._promoted)
        return {"rungs": [[r, dict(rec), sorted(pro)] for r, rec, pro in rungs],
                "waiting": dict(self._waiting), "ended": sorted(self._ended)}

    def load_rung_state(self, state: dict[str, Any]) -> None:
        if [r for r, _, _ in state.get("rungs", [])] != self.rungs:
            return  # a different scheduler configuration: start afresh rather than mix
        for k, (_, recorded, promoted) in enumerate(state["rungs"]):
            self._recorded[k].update(recorded)
            self._promoted[k].update(promoted)
        self._waiting.update({tid: int(k) for tid, k in state.get("waiting", {}).items()})
        self._ended.update(state.get("ended", []))

    def _save(self) -> None:
        """Write the state if it changed (most calls change nothing)."""
        if not self.state_path:
            return
        text = json.dumps(self.rung_state(), sort_keys=True)
        if text == self._saved:
            return
        tmp = f"{self.state_path}.tmp"
        Path(tmp).parent.mkdir(parents=True, exist_ok=True)
        Path(tmp).write_text(text)
        os.replace(tmp, self.state_path)
        self._saved = text

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._told = None  # the restored searcher is told afresh
        path = state.get("state_path")
        if path and Path(path).is_file():  # Tune unpickles the scheduler on restore: bring the rungs back
            self.load_rung_state(json.loads(Path(path).read_text()))


class PausingLimiter(ConcurrencyLimiter):
    """Ray's `ConcurrencyLimiter` for a sweep under `PromotionASHA`: at most `max_concurrent`
    trials pending or running, not counting the trials paused at a rung (they hold no worker;
    counted, they would fill every slot and nothing would ever run again), and no new trial while
    a promotion is due (the free worker is the promoted trial's). The scheduler keeps it told
    through `set_paused`."""

    def __init__(self, searcher: Searcher, max_concurrent: int) -> None:
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.paused: frozenset[str] = frozenset()
        self.hold = False

    def set_paused(self, trial_ids: frozenset[str], hold: bool) -> None:
        """The trials waiting at a rung now, and whether a promotion is due."""
        self.paused, self.hold = frozenset(trial_ids), bool(hold)

    def suggest(self, trial_id: str) -> dict | None:
        if not self._limit_concurrency:
            return self.searcher.suggest(trial_id)
        paused = self.__dict__.get("paused", frozenset())  # a limiter pickled before them had neither
        if self.__dict__.get("hold") or len(self.live_trials - paused) >= self.max_concurrent:
            return None
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, Searcher.FINISHED):
            self.live_trials.add(trial_id)
            self.num_unfinished_live_trials += 1
        return suggestion

    @property
    def _last_results(self) -> dict[str, dict]:
        return self.__dict__.setdefault("last_results", {})

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._last_results[trial_id] = result
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        last = self._last_results.pop(trial_id, None)
        if result is None and not error:
            # Tune ends a paused trial without a result: the searcher gets its last one (its rung's),
            # so it is told PRUNED with its constraint values, as a trial stop-based ASHA cut
            result = last
        super().on_trial_complete(trial_id, result=result, error=error)
