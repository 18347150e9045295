"""The searcher: Ray Tune's OptunaSearch, told the truth about early-stopped trials.

Ray's `OptunaSearch` tells Optuna that a trial ASHA stopped after two epochs is COMPLETE with its
two-epoch score, so TPE models a low-budget value as if it were final and is misled. Our
subclass reports every epoch (or step) as an intermediate value and, when ASHA stopped a trial
(or the sweep stopped it before its planned length), tells Optuna it was PRUNED (Optuna's samplers
handle pruned trials from their intermediate values). A trial that ended itself early converged:
patience ran out (`early_stopping`: COMPLETE with its best value, whose checkpoint is kept) or
its script stopped (COMPLETE with its last value, as a trial that ran its course).

    searcher = build_searcher(sweep)   # None when nothing is searched

The sampler is `search_alg.sampler` (tpe, gp, cmaes, qmc, random, nsga2), seeded with
`search_alg.seed`. `search.warm_start` trials are added to the study (`add_trials`) and
`search.start_from` points enqueued (`enqueue_trial`) when a launch builds the searcher; Tune
pickles the searcher with its study, so a resumed sweep has them once. With `constraints`, each
finished or pruned trial gets its constraint values (`Trial.set_constraint`, before `tell`: what
Optuna 5's tpe, gp and nsga2 read; cmaes, qmc and random ignore constraints, so they get none).

The study is kept in `search_alg.storage` (a database, `sweeper.study`), so optuna-dashboard can
read it live. Tune saves the searcher (with the study's URL, not its trials) at each experiment
checkpoint, while the database is written at every ask and tell: after a crash the database can
be ahead of the searcher Tune restores. The first call after a restore reconciles them, so a
resume neither duplicates nor loses a trial: a trial the database finished in the meantime is not
told again, a report already stored is not written twice, and a trial Optuna had handed out that
Tune never recorded (asked after the last checkpoint) is handed out again for the next trial
instead of asking Optuna for one more.
"""
from __future__ import annotations

import copy
import logging
import weakref
from typing import Any

import optuna
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from sweeper import constraints as feasibility
from sweeper.config import Sweep
from sweeper.config.sampling import CONSTRAINED
from sweeper.config.search_start import search_start
from sweeper.results import BEST_OBJECTIVE, EPOCH, PATIENCE, SELF_STOPS, STOP_REASON, stop_reason, time_attr
from sweeper.spaces import grid_values, to_optuna

log = logging.getLogger(__name__)
#: searchers reconciled with their stored study in this process (a restored one is not, yet)
_IN_SYNC: weakref.WeakSet = weakref.WeakSet()


class PrunedAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that reports intermediate values by epoch (or step) and ASHA's stops as PRUNED."""

    def __init__(self, *args: Any, max_t: int, time_attr: str = EPOCH, constraints: list | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_t = max_t
        self._time_attr = time_attr
        self._constraints = list(constraints or [])  # [] where the sampler takes no constraints
        self.warm_start = None  # the sweeper.warm_start.WarmStart imported by build_searcher, if any
        self.study_set_aside: str | None = None  # what build_searcher renamed an earlier study to

    def _record_constraints(self, trial_id: str, result: dict | None) -> None:
        """The trial's constraint values, on the trial before `tell`: the sampler reads them there."""
        constraints = getattr(self, "_constraints", [])  # a searcher pickled before constraints had none
        if constraints and trial_id in self._ot_trials:
            trial = self._ot_trials[trial_id]
            for key, value in zip(feasibility.keys(constraints), feasibility.violations(constraints, result or {})):
                trial.set_constraint(key, value)

    def _sync_with_storage(self) -> None:
        """Once per process: align a searcher Tune restored with the study in its database."""
        if self in _IN_SYNC:
            return
        _IN_SYNC.add(self)
        if self._ot_study is None or isinstance(getattr(self._ot_study, "_storage", None),
                                                optuna.storages.InMemoryStorage):
            return  # an in-memory study is the pickle itself: nothing can be ahead of it
        stored = {t._trial_id: t for t in self._ot_study.get_trials(deepcopy=False)}
        bound = set()
        for tune_id, ot_trial in self._ot_trials.items():
            frozen = stored.get(ot_trial._trial_id)
            if frozen is None:
                continue
            bound.add(frozen._trial_id)
            ot_trial._cached_frozen_trial = copy.deepcopy(frozen)  # its stored reports are skipped
            if frozen.state.is_finished():
                self._completed_trials.add(tune_id)
        self.__dict__["_unclaimed"] = [i for i, t in stored.items()
                                       if t.state == optuna.trial.TrialState.RUNNING and i not in bound]
        if self._unclaimed:
            log.info("%d Optuna trial(s) asked after the last checkpoint are handed out again", len(self._unclaimed))

    @property
    def _unclaimed(self) -> list[int]:
        """Stored RUNNING trials no Tune trial holds (asked after the checkpoint Tune restored)."""
        return self.__dict__.setdefault("_unclaimed", [])

    def suggest(self, trial_id: str) -> dict | None:
        self._sync_with_storage()
        if trial_id not in self._ot_trials and self._unclaimed and not callable(self._space):
            self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, self._unclaimed.pop(0))
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._sync_with_storage()
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
        self._sync_with_storage()
        if trial_id in self._completed_trials:  # told already (before a restore, in the database)
            return
        if error or not result:
            super().on_trial_complete(trial_id, result, error)
            return
        self._record_constraints(trial_id, result)
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
    seed = alg.seed
    samplers = optuna.samplers
    if alg.name == "grid":
        return TellOnlyGridSampler(grid_values(sweep.dimensions), seed=seed)
    if alg.name == "random" or alg.sampler == "random":
        return samplers.RandomSampler(seed=seed)
    if alg.sampler == "gp":
        return samplers.GPSampler(seed=seed)
    if alg.sampler == "cmaes":  # categorical keys are sampled independently (random): CMA-ES models numbers
        return samplers.CmaEsSampler(seed=seed)
    if alg.sampler == "qmc":  # scrambled, so the seed chooses the sequence (unscrambled Sobol ignores it)
        return samplers.QMCSampler(scramble=True, seed=seed)
    if alg.sampler == "nsga2":
        return samplers.NSGAIISampler(seed=seed)
    return samplers.TPESampler(seed=seed)


def told_constraints(sweep: Sweep) -> list:
    """The constraints the sampler is told: none for samplers that ignore them (cmaes warns)."""
    alg = sweep.spec.search_alg
    return list(sweep.spec.constraints) if alg.name == "optuna" and alg.sampler in CONSTRAINED else []


def frozen_trials(plan, dims, constraints: list) -> list:  # noqa: ANN001, ANN201 - WarmStart, [Dimension]
    """Imported trials (`sweeper.warm_start`) as Optuna trials of this search's distributions, with
    their constraint values as `Trial.set_constraint` would have stored them."""
    from optuna.study._constrained_optimization import _CONSTRAINTS_KEY

    dists = to_optuna(dims)
    names = feasibility.keys(constraints)
    out = []
    for t in plan.trials:
        told = constraints and t.constraints is not None
        out.append(optuna.trial.create_trial(
            params=t.params, distributions={k: dists[k] for k in t.params},
            state=getattr(optuna.trial.TrialState, t.state),
            values=t.values, intermediate_values=t.intermediate,
            user_attrs={"sweeper.imported_from": t.source},
            system_attrs={f"{_CONSTRAINTS_KEY}:{k}": v for k, v in zip(names, t.constraints)} if told else None,
        ))
    return out


def build_searcher(sweep: Sweep, max_concurrent: int) -> ConcurrencyLimiter | None:
    """Optuna behind a concurrency limit, so it never proposes more trials than can run. Called
    when a sweep starts afresh: a study of the sweep's name already in the storage is set aside
    (`sweeper.study.set_aside`; the new name is the searcher's `study_set_aside`)."""
    from sweeper import study as stored_study

    if not sweep.dimensions:
        return None
    storage = stored_study.open_storage(sweep.spec.search_alg.storage or "memory")
    aside = stored_study.set_aside(storage, sweep.name) if storage is not None else None
    objectives = sweep.objectives or [sweep.spec.objective]
    multi = len(objectives) > 1  # Optuna's TPE is multi-objective (MOTPE) when given several directions
    searcher = PrunedAwareOptunaSearch(
        space=to_optuna(sweep.dimensions),
        metric=[o.metric for o in objectives] if multi else objectives[0].metric,
        mode=[o.mode for o in objectives] if multi else objectives[0].mode,
        sampler=build_sampler(sweep),
        max_t=sweep.max_t,
        time_attr=time_attr(sweep.spec.command),
        constraints=told_constraints(sweep),
        storage=storage,
        study_name=sweep.name if storage is not None else None,
    )
    searcher.study_set_aside = aside
    start = search_start(sweep.spec, sweep.dimensions)
    if start.warm_start:
        from sweeper import warm_start

        searcher.warm_start = warm_start.load(sweep)
        searcher.study.add_trials(frozen_trials(searcher.warm_start, sweep.dimensions, told_constraints(sweep)))
    for point in start.start_from:  # after the imports: the first trials Tune asks for
        searcher.study.enqueue_trial(point)
    if sweep.spec.scheduler.promote:  # trials paused at a rung hold no worker (sweeper.promotion)
        from sweeper.promotion import PausingLimiter

        return PausingLimiter(searcher, max_concurrent=max_concurrent)
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
