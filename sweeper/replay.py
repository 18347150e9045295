"""Replay recorded learning curves through the real Ray Tune schedulers: the yardstick for schedulers.

A sweep's scheduler is judged by two numbers: how much of exhaustive training (every configuration
to the end) it spends, and how much worse the configuration it returns is than the one exhaustive
training finds. Both can be measured without training anything once the full curves are known:
`replay` runs a simulated sweep in which W workers train the curves' configurations epoch after
epoch, in a seeded random arrival order, each epoch taking its recorded `epoch_s` of simulated
time. Every result goes to the scheduler object the sweeps use (`PersistentASHA`,
`PromotionASHA`, Ray's `AsyncHyperBandScheduler`, `HyperBandScheduler`, `MedianStoppingRule`,
`FIFOScheduler`) through `on_trial_result`, and its CONTINUE / PAUSE / STOP is obeyed;
`choose_trial_to_run` says what a free worker runs next. Nothing here re-implements a decision
rule: `_Controller` is the small part of Tune's `TuneController` those schedulers call
(`get_trials`, `get_live_trials`, `stop_trial`, `pause_trial`), and `_Trial` carries the
attributes they read (`trial_id`, `status` with Tune's status strings, `config`, `last_result`,
`is_saving`). Like Tune with a searcher and `max_concurrent_trials`, the controller keeps up to
W trials PENDING ahead of the workers.

    from sweeper.replay import Curve, SCHEDULERS, Setting, replay
    curves = [Curve(values=(0.1, 0.3, 0.5)), Curve(values=(0.2, 0.25, 0.3))]
    r = replay(curves, lambda: SCHEDULERS["ray-asha"](Setting(max_t=3, num_trials=2)),
               mode="max", max_t=3, workers=2, seed=0)
    r.compute_fraction, r.regret

Fractions and regret are always against exhaustive training of *all* `curves` (to `max_t`, or
to a truncated curve's end); `num_trials` only limits how many of them the sweep tries (the
first `num_trials` of the arrival order: a random subset), which is how random search on a
budget is replayed. `sweeper diagnose` replays a sweep's own curves with the same function.
"""
from __future__ import annotations

import heapq
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import (AsyncHyperBandScheduler, FIFOScheduler, HyperBandScheduler,
                                 MedianStoppingRule, TrialScheduler)

from sweeper.rungs import auto_grace_period

METRIC = "objective"  # the metric name the replayed results carry
TIME_ATTR = "epoch"  # what the sweeps' ASHA counts (sweeper.results.time_attr for built-in tasks)


@dataclass(frozen=True)
class Curve:
    """One configuration's recorded learning curve."""

    values: tuple[float, ...]  # the objective after epoch 1..n; n < max_t: the trial ended there
    epoch_s: tuple[float, ...] | None = None  # seconds per epoch (None: every epoch costs 1)
    key: str = ""  # a label (the configuration), for reports

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError(f"curve {self.key!r}: no values")
        if not all(math.isfinite(v) for v in self.values):
            raise ValueError(f"curve {self.key!r}: values must be finite")
        if self.epoch_s is not None and (len(self.epoch_s) != len(self.values)
                                         or not all(s >= 0 and math.isfinite(s) for s in self.epoch_s)):
            raise ValueError(f"curve {self.key!r}: epoch_s needs one finite, non-negative time per value")

    def length(self, max_t: int) -> int:
        """The epochs this configuration can train: to max_t, or to where its curve ends."""
        return min(len(self.values), max_t)

    def cost(self, epoch: int) -> float:
        """Seconds of epoch `epoch` (1-based)."""
        return 1.0 if self.epoch_s is None else float(self.epoch_s[epoch - 1])

    def final(self, max_t: int) -> float:
        """What exhaustive training ends with: the value at the last epoch it can train."""
        return self.values[self.length(max_t) - 1]


@dataclass
class ReplayResult:
    """What one replayed sweep spent and what it would return."""

    trial_epochs: int  # epochs trained, all trials together
    compute_fraction: float  # trial_epochs / exhaustive trial-epochs (all curves to the end)
    cost_fraction: float  # the same, each epoch weighted by its epoch_s
    chosen: int  # index into `curves` of the configuration the sweep would return
    regret: float  # relative gap of the chosen curve's true final value to the exhaustive best, >= 0
    wall_s: float  # simulated makespan, in epoch_s units
    epochs: tuple[int, ...] = field(default=())  # per curve, the epochs it trained (0: never started)


@dataclass(frozen=True)
class Setting:
    """What a scheduler factory in `SCHEDULERS` is built for."""

    max_t: int  # the last epoch
    num_trials: int  # trials the sweep will start
    warmup_epochs: float = 0.0  # the task's LR warmup, epochs (our default's grace period starts after it)


class _Trial:
    """The attributes of `ray.tune.experiment.Trial` the schedulers read. Hashable by identity,
    as Tune's trials are (HyperBand and the median rule key dicts by trial)."""

    def __init__(self, trial_id: str, index: int, curve: Curve) -> None:
        self.trial_id = trial_id
        self.index, self.curve = index, curve
        self.status = Trial.PENDING
        self.config: dict[str, Any] = {"curve": index, "key": curve.key}
        self.last_result: dict[str, Any] = {}
        self.is_saving = False
        self.epoch = 0  # epochs trained so far
        self.time_total_s = 0.0
        self.run_id = 0  # bumped whenever the trial leaves a worker, so a stale epoch event is dropped

    def __repr__(self) -> str:
        return f"_Trial({self.trial_id}, {self.status}, epoch {self.epoch})"


class _Controller:
    """The part of Tune's `TuneController` the schedulers call, over the simulated trials."""

    def __init__(self, scheduler: TrialScheduler) -> None:
        self.scheduler = scheduler
        self.trials: list[_Trial] = []
        self.count = {Trial.PENDING: 0, Trial.RUNNING: 0, Trial.PAUSED: 0, Trial.TERMINATED: 0, Trial.ERROR: 0}

    def set_status(self, trial: _Trial, status: str) -> None:
        """Change a trial's status, keeping the per-status counts the event loop reads."""
        self.count[trial.status] -= 1
        self.count[status] += 1
        if trial.status == Trial.RUNNING:
            trial.run_id += 1  # it leaves its worker: the epoch it was training is dropped
        trial.status = status

    def add(self, trial: _Trial) -> None:
        self.trials.append(trial)
        self.count[trial.status] += 1
        self.scheduler.on_trial_add(self, trial)

    def get_trials(self) -> list[_Trial]:
        return self.trials

    def get_live_trials(self) -> list[_Trial]:
        return [t for t in self.trials if t.status not in (Trial.TERMINATED, Trial.ERROR)]

    def get_trial(self, tid: str) -> _Trial | None:
        return next((t for t in self.trials if t.trial_id == tid), None)

    def stop_trial(self, trial: _Trial) -> None:
        """As `TuneController.stop_trial`: a queued or paused trial is removed from the scheduler,
        a running one completes with its last result."""
        if trial.status in (Trial.TERMINATED, Trial.ERROR):
            return
        was = trial.status
        self.set_status(trial, Trial.TERMINATED)
        if was == Trial.RUNNING:
            self.scheduler.on_trial_complete(self, trial, dict(trial.last_result))
        else:
            self.scheduler.on_trial_remove(self, trial)

    def pause_trial(self, trial: _Trial, should_checkpoint: bool = True) -> None:  # noqa: ARG002
        """As `TuneController.pause_trial`: the trial leaves its worker and keeps its epochs."""
        if trial.status == Trial.RUNNING:
            self.set_status(trial, Trial.PAUSED)


def replay(curves: Sequence[Curve], make_scheduler: Callable[[], TrialScheduler], *, mode: str, max_t: int,
           workers: int, seed: int, num_trials: int | None = None) -> ReplayResult:
    """Run one simulated sweep of `curves` under the scheduler `make_scheduler()` builds.

    Trials arrive in the order of a `seed`ed shuffle of the curves (the first `num_trials` of it;
    default all); `workers` run at once. Deterministic for a seed: Ray's ASHA draws brackets from
    numpy's global generator, which is seeded here and restored afterwards.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be max or min, got {mode!r}")
    if max_t < 1 or workers < 1 or not curves:
        raise ValueError("replay needs curves, max_t >= 1 and workers >= 1")
    logging.getLogger("ray.tune.schedulers").setLevel(logging.WARNING)  # Hyperband logs each bracket it skips
    order = list(range(len(curves)))
    random.Random(seed).shuffle(order)
    order = order[:len(curves) if num_trials is None else max(1, min(num_trials, len(curves)))]
    saved = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        trials, now = _simulate(curves, order, make_scheduler(), mode=mode, max_t=max_t, workers=workers)
    finally:
        np.random.set_state(saved)
    return _score(curves, trials, now, mode=mode, max_t=max_t)


def _simulate(curves: Sequence[Curve], order: list[int], scheduler: TrialScheduler, *, mode: str, max_t: int,
              workers: int) -> tuple[list[_Trial], float]:
    """The event loop: epochs end in simulated-time order; returns the trials and the makespan."""
    scheduler.set_search_properties(METRIC, mode)
    ctl = _Controller(scheduler)
    arrivals = iter(order)
    left = len(order)
    events: list[tuple[float, int, _Trial, int]] = []  # (time the epoch ends, sequence, trial, run_id)
    seq, now = 0, 0.0

    def train_next_epoch(trial: _Trial) -> None:
        nonlocal seq
        seq += 1
        done = trial.epoch >= trial.curve.length(max_t)  # resumed with nothing left: it just returns
        heapq.heappush(events, (now + (0.0 if done else trial.curve.cost(trial.epoch + 1)), seq, trial, trial.run_id))

    while True:
        while ctl.count[Trial.RUNNING] < workers:  # a free worker: keep W trials queued, as Tune does, and ask
            while left and ctl.count[Trial.PENDING] < workers:
                index = next(arrivals)
                left -= 1
                ctl.add(_Trial(f"t{len(ctl.trials):05d}", index, curves[index]))
            chosen = scheduler.choose_trial_to_run(ctl)
            if chosen is None or chosen.status not in (Trial.PENDING, Trial.PAUSED):
                break
            ctl.set_status(chosen, Trial.RUNNING)
            train_next_epoch(chosen)
        if not events:
            return ctl.trials, now
        end, _, trial, run_id = heapq.heappop(events)
        if trial.status != Trial.RUNNING or run_id != trial.run_id:
            continue  # stopped or paused by the scheduler while this epoch ran (its worker is free)
        now = end
        if trial.epoch >= trial.curve.length(max_t):
            # a trial paused after its last epoch and resumed: Tune's function trainable returns at
            # once and the scheduler sees its last result again, marked done, before it completes
            trial.last_result = {**trial.last_result, "done": True}
            scheduler.on_trial_result(ctl, trial, dict(trial.last_result))
            ctl.stop_trial(trial)
            continue
        trial.epoch += 1
        trial.time_total_s += trial.curve.cost(trial.epoch)
        last = trial.epoch >= trial.curve.length(max_t)
        result = {TIME_ATTR: trial.epoch, "training_iteration": trial.epoch, METRIC: trial.curve.values[trial.epoch - 1],
                  "time_total_s": trial.time_total_s, "trial_id": trial.trial_id, "done": False}
        trial.last_result = result
        decision = scheduler.on_trial_result(ctl, trial, dict(result))
        if trial.status != Trial.RUNNING:
            continue  # the scheduler stopped or paused it through the controller
        if decision == TrialScheduler.PAUSE:
            ctl.pause_trial(trial)  # even after its last epoch: Tune pauses it, and it ends when resumed
        elif decision == TrialScheduler.STOP or last:
            trial.last_result = {**result, "done": True}
            ctl.stop_trial(trial)  # as Tune: on_trial_complete with the last result
        else:
            train_next_epoch(trial)


def _score(curves: Sequence[Curve], trials: list[_Trial], now: float, *, mode: str, max_t: int) -> ReplayResult:
    sign = 1.0 if mode == "max" else -1.0
    full_epochs = sum(c.length(max_t) for c in curves)
    # fsum is exactly rounded: the same epochs in any order give the same sum (FIFO: exactly 1.0)
    full_cost = math.fsum(c.cost(e) for c in curves for e in range(1, c.length(max_t) + 1))
    epochs = [0] * len(curves)
    for t in trials:
        epochs[t.index] = t.epoch
    cost = math.fsum(t.curve.cost(e) for t in trials for e in range(1, t.epoch + 1))
    started = [t for t in trials if t.epoch > 0]
    finished = [t for t in started if t.epoch >= max_t]
    top = max(t.epoch for t in started)
    pool = finished or [t for t in started if t.epoch == top]
    pick = max(pool, key=lambda t: sign * t.curve.values[t.epoch - 1])  # first of equals: earliest arrival
    best = max(sign * c.final(max_t) for c in curves)
    gap = best - sign * curves[pick.index].final(max_t)
    regret = max(0.0, gap / abs(best) if best != 0 else gap)
    return ReplayResult(trial_epochs=sum(epochs), compute_fraction=sum(epochs) / full_epochs,
                        cost_fraction=cost / full_cost if full_cost > 0 else sum(epochs) / full_epochs,
                        chosen=pick.index, regret=regret, wall_s=now, epochs=tuple(epochs))


# --------------------------------------------------------------------------- replay-only schedulers
class TopKAfterOne(FIFOScheduler):
    """Train every trial for one epoch, then only the best `k` (by that epoch) to the end.

    A baseline, not a rule the sweeps use: each trial pauses after epoch 1; once all `num_trials`
    have reported it, the best `k` are resumed and the rest stopped."""

    def __init__(self, k: int, num_trials: int) -> None:
        super().__init__()
        self.k, self.num_trials = k, num_trials
        self._first: dict[str, float] = {}  # trial_id -> signed epoch-1 value
        self._keep: set[str] | None = None
        self._sign = 1.0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self._metric, self._sign = metric, (1.0 if mode != "min" else -1.0)
        return True

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:  # noqa: ANN001
        if self._keep is not None:
            return TrialScheduler.CONTINUE
        self._first[trial.trial_id] = self._sign * result[self._metric]
        if len(self._first) < self.num_trials:
            return TrialScheduler.PAUSE
        ranked = sorted(self._first, key=self._first.get, reverse=True)
        self._keep = set(ranked[:self.k])
        for other in tune_controller.get_trials():
            if other.status == Trial.PAUSED and other.trial_id not in self._keep:
                tune_controller.stop_trial(other)
        return TrialScheduler.CONTINUE if trial.trial_id in self._keep else TrialScheduler.STOP

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:  # noqa: ANN001
        if self._keep is None and trial.trial_id not in self._first:  # ended before its first result
            self.num_trials -= 1

    def choose_trial_to_run(self, tune_controller):  # noqa: ANN001, ANN201
        for trial in tune_controller.get_trials():
            if trial.status == Trial.PENDING:
                return trial
        for trial in tune_controller.get_trials():
            if trial.status == Trial.PAUSED and self._keep is not None and trial.trial_id in self._keep:
                return trial
        return None


class PASHA(AsyncHyperBandScheduler):
    """PASHA-style ASHA (Bohdal et al., 2022): start with a low maximum and raise it only while
    the ranking at the top two rungs disagrees.

    Ray's ASHA makes every rung decision; this class only caps how far a trial may go. The cap
    starts at the second rung (grace_period * reduction_factor); a trial that reaches the cap is
    stopped there if the trials recorded at both top rungs keep the same order (exact ranking, no
    tolerance), else the cap grows by one rung (up to max_t) and the trial goes on. Replay-only:
    a sweep using it would return a configuration trained to the cap, not to max_t."""

    def __init__(self, *, max_t: int, grace_period: int, reduction_factor: float, time_attr: str = TIME_ATTR) -> None:
        super().__init__(time_attr=time_attr, max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor)
        self._milestones = sorted(m for m, _ in self._brackets[0]._rungs)  # ascending, below max_t
        self._cap_index = min(1, len(self._milestones) - 1)

    def _cap(self) -> float:
        return self._milestones[self._cap_index] if self._cap_index < len(self._milestones) else self._max_t

    def _ranking_agrees(self) -> bool:
        rungs = dict(self._brackets[0]._rungs)
        if self._cap_index < 1 or self._cap_index >= len(self._milestones):
            return True
        top, below = rungs[self._milestones[self._cap_index]], rungs[self._milestones[self._cap_index - 1]]
        both = [tid for tid in top if tid in below]
        return sorted(both, key=top.get) == sorted(both, key=below.get)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:  # noqa: ANN001
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.CONTINUE and result.get(self._time_attr, 0) >= self._cap():
            if self._ranking_agrees():
                return TrialScheduler.STOP
            self._cap_index += 1
        return action


# --------------------------------------------------------------------------- the registry
def _default(s: Setting) -> TrialScheduler:
    """Our default: `sweeper.schema.Scheduler()`'s settings, resolved as a sweep resolves them."""
    from sweeper.schema import Scheduler
    from sweeper.scheduler import PersistentASHA

    d = Scheduler()
    grace = auto_grace_period(s.max_t, s.warmup_epochs) if d.grace_period == "auto" else min(d.grace_period, s.max_t)
    if getattr(d, "promote", False):
        return _promotion(s, grace, d.reduction_factor)
    return PersistentASHA(time_attr=TIME_ATTR, max_t=s.max_t, grace_period=grace,
                          reduction_factor=d.reduction_factor, brackets=d.brackets, state_path=None)


def _promotion_class() -> type[TrialScheduler] | None:
    """`PromotionASHA` (issue 15 item 2), wherever it has landed; None before it has."""
    import importlib

    for module in ("sweeper.promotion", "sweeper.scheduler"):
        try:
            cls = getattr(importlib.import_module(module), "PromotionASHA", None)
        except ImportError:
            continue
        if cls is not None:
            return cls
    return None


def _promotion(s: Setting, grace: int, rf: float) -> TrialScheduler:
    cls = _promotion_class()
    if cls is None:
        raise LookupError("promotion-based ASHA (PromotionASHA) is not available in this checkout")
    return cls(time_attr=TIME_ATTR, max_t=s.max_t, grace_period=grace, reduction_factor=rf,
                         num_samples=s.num_trials, state_path=None)


def _grace(s: Setting) -> int:
    return auto_grace_period(s.max_t, s.warmup_epochs)


def has_promotion() -> bool:
    """Whether `PromotionASHA` exists yet."""
    return _promotion_class() is not None


#: name -> factory of a fresh scheduler for one replayed sweep
SCHEDULERS: dict[str, Callable[[Setting], TrialScheduler]] = {
    "fifo": lambda s: FIFOScheduler(),
    # Ray's ASHA as Ray ships it: grace 1, reduction factor 4, one bracket, stopping
    "ray-asha": lambda s: AsyncHyperBandScheduler(time_attr=TIME_ATTR, max_t=s.max_t),
    "default": _default,
    "asha-promote": lambda s: _promotion(s, _grace(s), 3),
    # Ray's synchronous Hyperband: all its brackets (round(log3(max_t)) + 1), eta 3
    "hyperband": lambda s: HyperBandScheduler(time_attr=TIME_ATTR, max_t=s.max_t, reduction_factor=3),
    # the median rule judged from our default's grace period (Ray's default, 60, is in seconds)
    "median-stopping": lambda s: MedianStoppingRule(time_attr=TIME_ATTR, grace_period=_grace(s)),
    # a quarter of the trials go on after epoch 1
    "top-k-after-1": lambda s: TopKAfterOne(k=max(1, math.ceil(s.num_trials / 4)), num_trials=s.num_trials),
    # FIFO on a random subset; `replay_named` sizes the subset (see RANDOM_2X)
    "random-2x": lambda s: FIFOScheduler(),
    "pasha": lambda s: PASHA(max_t=s.max_t, grace_period=_grace(s), reduction_factor=3),
}

#: random search at twice the budget (Li et al.'s "random 2x"): FIFO, every trial to the end, on a
#: random subset of the configurations (the first ones of the same arrival order) sized to twice
#: the trial-epochs our default spent in that same replay (capped at all of them)
RANDOM_2X = ("default", 2.0)


def available() -> list[str]:
    """The registry's names that can run here (asha-promote needs PromotionASHA)."""
    return [n for n in SCHEDULERS if n != "asha-promote" or has_promotion()]


def replay_named(name: str, curves: Sequence[Curve], *, mode: str, max_t: int, workers: int, seed: int,
                 warmup_epochs: float = 0.0) -> ReplayResult:
    """`replay` with a scheduler from `SCHEDULERS` (random-2x sized against our default)."""
    if name not in SCHEDULERS:
        raise KeyError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
    n = len(curves)
    if name == "random-2x":
        ref_name, factor = RANDOM_2X
        ref = replay_named(ref_name, curves, mode=mode, max_t=max_t, workers=workers, seed=seed,
                           warmup_epochs=warmup_epochs)
        full = sum(c.length(max_t) for c in curves) / n  # mean epochs of a trial trained to its end
        n = max(1, min(n, round(factor * ref.trial_epochs / full)))
    setting = Setting(max_t=max_t, num_trials=n, warmup_epochs=warmup_epochs)
    return replay(curves, lambda: SCHEDULERS[name](setting), mode=mode, max_t=max_t, workers=workers, seed=seed,
                  num_trials=n)
