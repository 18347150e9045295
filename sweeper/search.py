"""The searcher: Ray Tune's OptunaSearch, told the truth about early-stopped trials.

Ray's `OptunaSearch` tells Optuna that a trial ASHA stopped after two epochs is COMPLETE with its
two-epoch score, so TPE models a low-budget value as if it were final and is misled. Our
subclass reports every epoch as an intermediate value and, when a trial ends before its planned
epochs without an error, tells Optuna it was PRUNED (Optuna's samplers handle pruned trials from
their intermediate values).

    searcher = build_searcher(sweep)   # None when nothing is searched
"""
from __future__ import annotations

import logging
from typing import Any

import optuna
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from sweeper.config import Sweep
from sweeper.results import EPOCH, stopped_early
from sweeper.spaces import grid_values, to_optuna

log = logging.getLogger(__name__)


class PrunedAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that reports intermediate values by epoch and early stops as PRUNED."""

    def __init__(self, *args: Any, max_t: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_t = max_t

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list):  # Optuna keeps no intermediate values for multi-objective
            return
        if trial_id in self._completed_trials or self.metric not in result:
            return
        self._ot_trials[trial_id].report(result[self.metric], int(result.get(EPOCH, 0)))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if not error and stopped_early(result, self._max_t) and trial_id not in self._completed_trials:
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)

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
    )
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
