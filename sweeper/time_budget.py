"""`budget.time_limit`: end a launch gracefully when its time is up.

Ray Tune's own `TuneConfig(time_budget_s=...)` is not used: when it runs out, Tune stops every
trial for good (TERMINATED, searcher finished), without a last checkpoint, so `Tuner.restore`
would never continue them. Instead:

- the clock (`Clock`, a tiny Ray actor the launch creates: `arm`) starts when the launch's first
  trial starts training, so Ray's start, the tracking store and worker start-up do not eat the
  budget; the deadline is that moment + `time_limit`, the same for every trial;
- each trial (`sweeper.trainable`) finishes the epoch it is in, saves a checkpoint with that
  epoch's report (marked `results.PARKED`) and then waits; a trial Tune starts after the
  deadline waits without training;
- the `TimeLimit` callback, once every running trial is waiting, ends the Tune loop the way
  Ctrl-C does (SIGUSR1, which Tune handles like SIGINT): Tune snapshots the experiment with
  those trials still unfinished, so `sweeper resume` restores each from the checkpoint of the
  epoch it finished, and nothing is marked finished, stopped or failed.

The clock lives in this module, not in the callback: Tune pickles callbacks into the experiment
state and a resumed sweep gets the first launch's back, so the callback reads the clock of the
launch running now. Each launch or resume gets the whole `time_limit` afresh.

`median_epoch_s` reads from MLflow how long this sweep's epochs took, to refuse a limit shorter
than one epoch before any trial starts.
"""
from __future__ import annotations

import os
import signal
import statistics
import time
from typing import Any

import ray
from ray.tune import Callback

from sweeper.config import Sweep, SweepConfigError
from sweeper.durations import format_duration
from sweeper.results import GPU_SECONDS, PARKED, TIME_TOTAL_S

_clock: Any = None  # this launch's Clock actor (None: no time limit)
_deadline: float | None = None  # its deadline once the first trial started, as time.time()
_asked = 0.0  # when the driver last asked the clock (at most once a second until it is set)
_reached = False  # whether the TimeLimit callback of this launch ended it


@ray.remote(num_cpus=0)
class Clock:
    """The launch's deadline: set by the first trial that starts training (`start`), then fixed."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s, self.deadline, self.idle = limit_s, None, set()

    def start(self) -> float:
        """The deadline, starting the clock now if no trial has yet."""
        if self.deadline is None:
            self.deadline = time.time() + self.limit_s
        return self.deadline

    def get(self) -> float | None:
        return self.deadline

    def wait(self, trial_id: str) -> None:
        """A trial that started after the deadline says it waits without training."""
        self.idle.add(trial_id)

    def waiting(self) -> list[str]:
        return sorted(self.idle)


def arm(limit_s: float | None) -> Any:
    """Create this launch's clock (Ray must be up); returns its handle for the trials, or None
    without a time limit."""
    global _clock, _deadline, _asked, _reached
    _clock = None if limit_s is None else Clock.remote(limit_s)
    _deadline, _asked, _reached = None, 0.0, False
    return _clock


def trial_deadline(clock: Any) -> float | None:
    """In a trial: the launch's deadline (the first trial to ask starts the clock); None without a limit."""
    return None if clock is None else float(ray.get(clock.start.remote()))


def wait_at_start(clock: Any, trial_id: str) -> None:
    """In a trial that starts after the deadline: tell the clock (the driver asks it who waits),
    train nothing, and wait to be stopped with the launch."""
    ray.get(clock.wait.remote(trial_id))
    wait_to_be_stopped()


def reached() -> bool:
    """Whether this launch ended because its time limit was reached (trials parked, resumable)."""
    return _reached


def deadline() -> float | None:
    """On the driver: the launch's deadline, once its first trial has started the clock; None before,
    and without a time limit. Prints it the first time it is known (tests and logs read the line)."""
    global _deadline, _asked
    if _deadline is None and _clock is not None and time.monotonic() - _asked >= 1.0:
        _asked = time.monotonic()
        _deadline = ray.get(_clock.get.remote())
        if _deadline is not None:
            end = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(_deadline))
            print(f"sweeper: time limit started with the first trial: running trials stop after the epoch they "
                  f"are in at {end}.{int(_deadline % 1 * 1000):03d}Z", flush=True)
    return _deadline


class TimeLimit(Callback):
    """Ends the Tune loop once the deadline has passed and every running trial has checkpointed
    its epoch and is waiting (or started after the deadline and waits untrained: it told the clock)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.parked: set[str] = set()  # reported an epoch after the deadline, checkpointed, waiting
        self.asked = 0.0  # when the clock was last asked which trials wait since their start
        self.fired = False

    def __getstate__(self) -> dict[str, Any]:
        # nothing worth restoring: a resumed launch starts its own clock (not empty: pickle skips
        # __setstate__ for a falsy state)
        return {"version": 1}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._reset()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # noqa: ANN001
        if result.get(PARKED):
            self.parked.add(trial.trial_id)

    def on_step_end(self, iteration, trials, **info) -> None:  # noqa: ANN001
        global _reached
        end = deadline()
        if self.fired or end is None or time.time() < end:
            return
        running = [t for t in trials if t.status == "RUNNING"]
        waiting = set(self.parked)
        if any(t.trial_id not in waiting for t in running):
            if time.monotonic() - self.asked < 1.0:
                return
            self.asked = time.monotonic()  # trials that started after the deadline told the clock
            waiting |= set(ray.get(_clock.waiting.remote())) if _clock is not None else set()
        if all(t.trial_id in waiting for t in running):
            self.fired = _reached = True
            print(f"sweeper: time limit reached: {len(running)} running trials checkpointed their last "
                  "epoch; ending the launch", flush=True)
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune ends its loop as on Ctrl-C, trials unfinished


def adopt(tuner: Any, limit_s: float | None) -> None:
    """On resume: Tune restores the first launch's callbacks and takes no new ones, and
    `budget.time_limit` may be set only now (it is not part of the config hash), so the restored
    run config gets a TimeLimit if it has none. Reaches into `Tuner._local_tuner` (Ray 2.60, as
    `sweeper.console.adopt` does); without it the limit could not end the launch: an error."""
    if limit_s is None:
        return
    run_config = getattr(getattr(tuner, "_local_tuner", None), "get_run_config", lambda: None)()
    if run_config is None:
        raise RuntimeError("this Ray cannot add budget.time_limit to a resumed sweep; remove the limit to resume")
    callbacks = list(run_config.callbacks or [])
    if not any(isinstance(cb, TimeLimit) for cb in callbacks):
        run_config.callbacks = [*callbacks, TimeLimit()]


def median_epoch_s(uri: str, experiment_id: str, max_runs: int = 50) -> float | None:
    """The median time of one epoch of this experiment's trials, from the steps of their MLflow
    `time_total_s` histories (the first epoch counts from the trial's start); None when no trial
    has logged two epochs' worth yet. Reads at most `max_runs` trial runs, the latest first."""
    from sweeper.store import client

    c = client(uri)
    runs = c.search_runs([experiment_id], "tags.`sweeper.kind` = 'trial'", max_results=max_runs,
                         order_by=["attributes.start_time DESC"])
    epochs: list[float] = []
    for run in runs:
        if TIME_TOTAL_S not in run.data.metrics:
            continue
        history = sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, TIME_TOTAL_S))
        previous = 0.0
        for _, total in history:
            if total > previous:
                epochs.append(total - previous)
            previous = total
    return statistics.median(epochs) if epochs else None


def check_against_history(sweep: Sweep, experiment_id: str) -> None:
    """Refuse a `budget.time_limit` shorter than one epoch's measured time, when it is known: when
    the sweep's MLflow experiment (same name: a resume, a relaunch) holds trials that logged
    `time_total_s`. Such a launch would end before any trial finished an epoch."""
    limit = sweep.spec.budget.time_limit
    if limit is None:
        return
    epoch_s = median_epoch_s(sweep.spec.tracking.uri, experiment_id)
    if epoch_s is not None and limit < epoch_s:
        raise SweepConfigError(sweep.file, "budget.time_limit", f"{format_duration(limit)} is shorter than one "
                               f"epoch of this sweep ({format_duration(epoch_s)}, the median measured in MLflow "
                               f"experiment {sweep.name!r}): no trial would finish an epoch; raise it")


# --------------------------------------------------------------------------- inside a trial
class TrialClock:
    """A trial's training time in seconds, over its restarts: what it had when its checkpoint was
    saved (`before_s`, kept in the checkpoint as `TRAINED_S`) plus the time since this (re)start.
    `budget.trial_time_limit` is judged on it; `gpu_seconds` is it times the GPUs the trial holds."""

    def __init__(self, before_s: float = 0.0, gpus: float = 0.0) -> None:
        self.before_s, self.gpus, self.start = float(before_s), float(gpus), time.monotonic()

    @property
    def total_s(self) -> float:
        return self.before_s + time.monotonic() - self.start

    def over(self, limit_s: float | None) -> bool:
        """Whether the trial has trained `limit_s` seconds or more (never, without a limit)."""
        return limit_s is not None and self.total_s >= limit_s

    def metrics(self) -> dict[str, float]:
        """`gpu_seconds` on GPUs; nothing on CPU (absent, not 0: a CPU trial used no GPU time)."""
        return {GPU_SECONDS: self.total_s * self.gpus} if self.gpus else {}


#: the checkpoint key holding TrialClock.total_s at the time of the checkpoint
TRAINED_S = "trained_s"


def past(end: float | None) -> bool:
    """Whether the launch's deadline (`run_trial`'s `deadline`) has passed."""
    return end is not None and time.time() >= end


def wait_to_be_stopped() -> None:
    """Park a trial whose epoch is checkpointed after the deadline: Tune ends the launch (the
    `TimeLimit` callback) and stops the trial's worker, which ends this wait."""
    while True:
        time.sleep(3600)
