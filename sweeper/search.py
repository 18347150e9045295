"""The searcher: Ray Tune's OptunaSearch, told the truth about early-stopped trials.

Ray's `OptunaSearch` tells Optuna that a trial ASHA stopped after two epochs is COMPLETE with its
two-epoch score, so TPE models a low-budget value as if it were final and is misled. Our
subclass reports every epoch (or step) as an intermediate value and, when ASHA stopped a trial
(or the sweep stopped it before its planned length), tells Optuna it was PRUNED (Optuna's samplers
handle pruned trials from their intermediate values). A trial that ended itself early converged:
patience ran out (`early_stopping`: COMPLETE with its best value, whose checkpoint is kept) or
its script stopped (COMPLETE with its last value, as a trial that ran its course).

    searcher = build_searcher(sweep)   # None when nothing is searched
"""
from __future__ import annotations

import logging
from typing import Any

import optuna
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from sweeper.config import Sweep
from sweeper.results import BEST_OBJECTIVE, EPOCH, PATIENCE, SELF_STOPS, STOP_REASON, stop_reason, time_attr
from sweeper.spaces import grid_values, to_optuna

log = logging.getLogger(__name__)


class PrunedAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that reports intermediate values by epoch (or step) and ASHA's stops as PRUNED."""

    def __init__(self, *args: Any, max_t: int, time_attr: str = EPOCH, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_t = max_t
        self._time_attr = time_attr

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list):  # Optuna keeps no intermediate values for multi-objective
            return
        if trial_id in self._completed_trials or self.metric not in result:
            return
        if result.get(STOP_REASON):  # a script's stop repeats its last step's report: reported already
            return
        step = int(result.get(self._time_key, 0))
        self._ot_trials[trial_id].report(result[self.metric], step)
        self._reported[trial_id] = step

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if error or not result or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        reason = stop_reason(result, self._max_t, self._time_key)
        if reason not in SELF_STOPS:  # ASHA's cut, or the sweep stopped it: a low-budget value
            ot_trial = self._ot_trials[trial_id]
            step = int(result.get(self._time_key, 0))
            if not isinstance(self.metric, list) and self.metric in result and step > self._reported.get(trial_id, 0):
                ot_trial.report(result[self.metric], step)  # Tune holds back the result ASHA stops on
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        if reason == PATIENCE and not isinstance(self.metric, list) and result.get(BEST_OBJECTIVE) is not None:
            result = {**result, self.metric: result[BEST_OBJECTIVE]}  # converged: its best is what it reached
        super().on_trial_complete(trial_id, result, error)

    @property
    def _time_key(self) -> str:
        return getattr(self, "_time_attr", EPOCH)  # a searcher pickled before steps existed counts epochs

    @property
    def _reported(self) -> dict[str, int]:
        """The last step reported per trial (kept in the pickle Tune saves; added where it is missing)."""
        return self.__dict__.setdefault("_last_step", {})

    @property
    def study(self):  # noqa: ANN201 - optuna.Study, imported lazily
        """The Optuna study (for tests and reports)."""
        return self._ot_study


class TellOnlyGridSampler(optuna.samplers.GridSampler):
    """GridSampler calls `study.stop()` once the grid is done, which raises outside
    `study.optimize` (Ray drives the study with ask/tell) and loses that last `tell`.
    Tune's `num_samples` already ends the sweep, so the stop is skipped."""

    def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001
        return None


def build_sampler(sweep: Sweep):  # noqa: ANN201
    """The Optuna sampler named by `search_alg`, seeded."""
    alg = sweep.spec.search_alg
    if alg.name == "grid":
        return TellOnlyGridSampler(grid_values(sweep.dimensions), seed=alg.seed)
    if alg.name == "random":
        return optuna.samplers.RandomSampler(seed=alg.seed)
    return optuna.samplers.TPESampler(seed=alg.seed)


def build_searcher(sweep: Sweep, max_concurrent: int) -> ConcurrencyLimiter | None:
    """Optuna behind a concurrency limit, so it never proposes more trials than can run."""
    if not sweep.dimensions:
        return None
    objectives = sweep.objectives or [sweep.spec.objective]
    multi = len(objectives) > 1  # Optuna's TPE is multi-objective (MOTPE) when given several directions
    searcher = PrunedAwareOptunaSearch(
        space=to_optuna(sweep.dimensions),
        metric=[o.metric for o in objectives] if multi else objectives[0].metric,
        mode=[o.mode for o in objectives] if multi else objectives[0].mode,
        sampler=build_sampler(sweep),
        max_t=sweep.max_t,
        time_attr=time_attr(sweep.spec.command),
    )
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
