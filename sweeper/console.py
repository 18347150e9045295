"""What a person watching `sweeper launch` or `resume` reads: a compact live view on a terminal,
one plain line per trial event everywhere else (CI, `| tee`, a test's pipe), and the sweep's
`notify` webhook told of failures and new bests.

    callback = SweepConsole(sweep, leaderboard_url)      # one of the launch's Tune callbacks
    ...tuner.fit()...
    close_all()                                          # stop the live view before the summary

The live view (rich `Live`, redrawn twice a second) shows the trials running / finished /
stopped (ASHA, or the trial's own patience) / failed, the best so far with its parameters and
objective, each running trial's epoch and latest objective, the time elapsed and an estimate of
the time left from the budget (trials done, running ones counted by the share of their epochs
done, against the sweep's trial count). Ray's own trial tables are off (`RunConfig(verbose=0)`)
unless `--verbose`, which also switches this view to plain lines so the two do not fight.

Plain lines: `[  12s] trial 3f2a1b started: x=0.31 y=0.69`, `... finished (completed) at epoch 3:
score 0.9412`, `... stopped (asha) at epoch 1: ...`, `... failed at epoch 2: ValueError: ...`,
`[  40s] new best: trial 3f2a1b score 0.9412 (max): x=0.31 y=0.69`. A "new best" is a trial that
ended with a better best objective (`results.BEST_OBJECTIVE`, what the leaderboard sorts by) than
every trial that ended before it, so the value is the one MLflow records.

Every event line also goes to `console.log` beside the experiment (`runs/NAME/console.log`),
with the date: what a live view showed stays readable after it is gone.

Runner-level: it reads only the result keys of `sweeper.results` and the sweep's objective.
Tune pickles its callbacks into the experiment state and restores them on resume (new ones
cannot be passed then), so the callback keeps plain data; the terminal, the live view and the
webhook sender are made again in `setup`, and the counts are rebuilt from the restored trials.
"""
from __future__ import annotations

import os
import sys
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

from sweeper.config import Sweep, trial_params
from sweeper.results import BEST_OBJECTIVE, EPOCHS_TOTAL, SELF_STOPS, stop_reason, time_attr

#: trials listed in the live view's table of running trials (the rest are counted)
MAX_ROWS = 12
#: recent events shown under the live view's table
RECENT_EVENTS = 5
#: live views of this process, so the runner can stop them before it prints the summary
_LIVE: "weakref.WeakSet[SweepConsole]" = weakref.WeakSet()


def close_all() -> None:
    """Stop every live view of this process (the launch is over or was interrupted)."""
    for view in list(_LIVE):
        view.close()


def adopt(tuner: Any, sweep: Sweep, leaderboard_url: str, verbose: int, log_path: str | None = None) -> None:
    """On resume: Tune restores the launch's run config and callbacks and takes no new ones, so
    this resume's `--verbose` is set on the restored config, and an experiment launched before
    this console existed gets one. Reaches into `Tuner._local_tuner` (Ray 2.60); a Ray without
    it leaves the restored console as it was."""
    run_config = getattr(getattr(tuner, "_local_tuner", None), "get_run_config", lambda: None)()
    if run_config is None:
        return
    run_config.verbose = verbose
    callbacks = list(run_config.callbacks or [])
    mine = [cb for cb in callbacks if isinstance(cb, SweepConsole)]
    for cb in mine:
        cb.verbose = bool(verbose)
        # its pickle kept no webhook (a secret, `__getstate__`): this launch's sweep gives it again
        cb.notify = (sweep.spec.notify.webhook, list(sweep.spec.notify.on)) if sweep.spec.notify is not None else None
    if not mine:
        run_config.callbacks = [*callbacks, SweepConsole(sweep, leaderboard_url, verbose=bool(verbose),
                                                         log_path=log_path)]


# --------------------------------------------------------------------------- formatting
def fmt_value(value: Any) -> str:
    """A number as a person reads it: 4 significant digits for floats, anything else as text."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def fmt_params(params: dict[str, Any], limit: int = 120) -> str:
    """`x=0.3123 y=0.69`, cut at `limit` characters."""
    text = " ".join(f"{k}={fmt_value(v)}" for k, v in params.items())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fmt_duration(seconds: float | None) -> str:
    """`42s`, `3m05s`, `1h02m`; `?` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


# --------------------------------------------------------------------------- the tally
@dataclass
class TrialView:
    """One trial as the console shows it."""

    trial_id: str
    params: dict[str, Any] = field(default_factory=dict)
    status: str = "running"  # running | finished | stopped | failed
    reason: str | None = None  # stop reason (results.COMPLETED, PATIENCE, ASHA, SCRIPT) or the error line
    epoch: int | None = None  # latest epoch (or step) reported
    total: int | None = None  # planned epochs (or steps)
    latest: float | None = None  # latest objective value reported
    best: float | None = None  # best objective so far (results.BEST_OBJECTIVE)
    retries: int = 0


@dataclass
class Ended:
    """What a trial's end means for the console: the trial, and whether it is the new best."""

    trial: TrialView
    new_best: bool


class Tally:
    """Counts, best and progress of a sweep from its trial events (pure logic; no Ray).

    `metric`/`mode`: the sweep's objective; `num_trials`: the budget; `max_t` and `time_key`: as
    `results.stop_reason` needs them to tell finished from stopped.
    """

    def __init__(self, metric: str, mode: str, num_trials: int, max_t: int, time_key: str = "epoch") -> None:
        self.metric, self.mode, self.num_trials = metric, mode, num_trials
        self.max_t, self.time_key = max_t, time_key
        self.trials: dict[str, TrialView] = {}
        self.best_ended: TrialView | None = None  # the best of the trials that ended

    def better(self, a: float | None, b: float | None) -> bool:
        """Whether `a` beats `b` in the objective's direction (anything beats None)."""
        if a is None or a != a:  # None or NaN
            return False
        return b is None or (a > b if self.mode == "max" else a < b)

    def started(self, trial_id: str, params: dict[str, Any]) -> TrialView:
        view = self.trials.get(trial_id)
        if view is None:
            view = self.trials[trial_id] = TrialView(trial_id, dict(params))
        view.status, view.reason = "running", None  # a resumed or retried trial runs again
        return view

    def reported(self, trial_id: str, result: dict[str, Any]) -> TrialView:
        view = self.trials.get(trial_id) or self.started(trial_id, {})
        epoch = result.get(self.time_key, result.get("training_iteration"))
        view.epoch = int(epoch) if isinstance(epoch, (int, float)) else view.epoch
        total = result.get(EPOCHS_TOTAL)
        view.total = int(total) if isinstance(total, (int, float)) else view.total or self.max_t
        value = _number(result.get(self.metric))
        if value is not None:
            view.latest = value
        best = _number(result.get(BEST_OBJECTIVE))
        if best is not None:
            view.best = best
        elif self.better(value, view.best):
            view.best = value
        return view

    def ended(self, trial_id: str, result: dict[str, Any] | None, error: str | None = None) -> Ended:
        """A trial's end: `error` (its last line) if it failed after its retries, else its last
        result decides finished (it ran its course or ended itself) or stopped (ASHA, the sweep)."""
        view = self.reported(trial_id, result) if result else (self.trials.get(trial_id) or self.started(trial_id, {}))
        if error is not None:
            view.status, view.reason = "failed", error
            return Ended(view, False)
        view.reason = stop_reason(result, self.max_t, self.time_key)
        view.status = "finished" if view.reason in SELF_STOPS else "stopped"
        new_best = self.better(view.best, self.best_ended.best if self.best_ended else None)
        if new_best:
            self.best_ended = view
        return Ended(view, new_best)

    def retried(self, trial_id: str) -> TrialView:
        view = self.trials.get(trial_id) or self.started(trial_id, {})
        view.retries += 1
        return view

    def best(self) -> TrialView | None:
        """The best trial so far, running ones included (a failed trial's values count too)."""
        best = None
        for view in self.trials.values():
            if self.better(view.best, best.best if best else None):
                best = view
        return best

    def counts(self) -> dict[str, int]:
        """running, finished, stopped, failed and pending (not started yet) trials."""
        c = Counter(v.status for v in self.trials.values())
        done = c["finished"] + c["stopped"] + c["failed"]
        return {"running": c["running"], "finished": c["finished"], "stopped": c["stopped"],
                "failed": c["failed"], "pending": max(0, self.num_trials - done - c["running"])}

    def reasons(self, status: str) -> Counter:
        """Why the trials of `status` ended (stop reasons), e.g. {'asha': 3} for stopped."""
        return Counter(v.reason for v in self.trials.values() if v.status == status and v.reason)

    def progress(self) -> float:
        """Trials' worth of work done: each ended trial counts 1, a running one the share of its
        planned epochs it has reported."""
        done = 0.0
        for view in self.trials.values():
            if view.status != "running":
                done += 1
            elif view.epoch and view.total:
                done += min(1.0, view.epoch / view.total)
        return done

    def eta_s(self, elapsed_s: float) -> float | None:
        """Seconds left if the rest of the budget goes at the pace so far (ASHA stopping trials
        early makes it an upper bound); None before any progress."""
        done = self.progress()
        if done <= 0:
            return None
        return max(0.0, elapsed_s * (self.num_trials - done) / done)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _error_line(trial: Any) -> str:
    """The last line of a failed trial's traceback (its exception), as Ray saved it."""
    text = ""
    path = getattr(trial, "error_file", None)
    try:
        if path and Path(path).is_file():
            text = Path(path).read_text(errors="replace")
    except OSError:
        pass
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "unknown error")[:300]


# --------------------------------------------------------------------------- the callback
class SweepConsole(Callback):
    """Tune callback: the console of a launch (live view or plain lines) and the per-trial
    `notify` events (`failure`, `best`); the runner sends `end` itself (`notify.announce_end`)."""

    def __init__(self, sweep: Sweep, leaderboard_url: str, *, verbose: bool = False,
                 log_path: str | None = None) -> None:
        spec = sweep.spec
        self.log_path = log_path  # every event line is also appended here (the live view's too)
        self.name = sweep.name
        self.metric, self.mode = spec.objective.metric, spec.objective.mode
        self.num_trials, self.max_t, self.time_key = sweep.num_trials, sweep.max_t, time_attr(spec.command)
        self.leaderboard_url = leaderboard_url
        self.verbose = verbose
        self.notify = (spec.notify.webhook, list(spec.notify.on)) if spec.notify is not None else None
        self._init_runtime()

    def _init_runtime(self) -> None:
        self.tally = Tally(self.metric, self.mode, self.num_trials, self.max_t, self.time_key)
        self.t0 = time.time()
        self._live = None  # rich.live.Live while the view is up
        self._recent: list[str] = []
        self._notifier = None
        self._seeded = False

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks into its experiment state: plain settings only
        keep = ("name", "metric", "mode", "num_trials", "max_t", "time_key", "leaderboard_url", "verbose", "notify",
                "log_path")
        state = {k: self.__dict__[k] for k in keep}
        # the webhook's URL is its credential and the pickle lands in tuner.pkl: `adopt` gives it back
        state["notify"] = (None, state["notify"][1]) if state["notify"] else None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # ---------------------------------------------------------------- Tune's events
    def setup(self, stop: Any = None, num_samples: Any = None, total_num_samples: Any = None, **info: Any) -> None:
        self._init_runtime()
        if self.notify is not None and self.notify[0]:  # (None, on): restored and not adopted
            from sweeper.notify import Notifier

            self._notifier = Notifier(*self.notify)
        if not self.verbose and _is_terminal():
            self._start_live()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self._seeded:  # a resumed sweep: count what its restored trials already did
            self._seeded = True
            for trial in trials:
                if trial.status in ("TERMINATED", "ERROR"):
                    self.tally.started(trial.trial_id, trial_params(dict(trial.config)))
                    self.tally.ended(trial.trial_id, dict(trial.last_result or {}),
                                     "failed earlier" if trial.status == "ERROR" else None)
            self._refresh()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        view = self.tally.started(trial.trial_id, trial_params(dict(trial.config)))
        self._event(f"trial {trial.trial_id} started: {fmt_params(view.params) or '(no searched values)'}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.tally.reported(trial.trial_id, result)
        self._refresh()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        view = self.tally.retried(trial.trial_id)
        self._event(f"trial {trial.trial_id} failed {self._where(view)}: {_error_line(trial)}; "
                    f"retrying (retry {view.retries})")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        end = self.tally.ended(trial.trial_id, dict(trial.last_result or {}))
        view = end.trial
        self._event(f"trial {view.trial_id} {view.status} ({view.reason or 'by the sweep'}) at {self.time_key} "
                    f"{fmt_value(view.epoch)}: {self.metric} {fmt_value(view.best)}")
        if end.new_best:
            self._event(f"new best: trial {view.trial_id} {self.metric} {fmt_value(view.best)} ({self.mode}): "
                        f"{fmt_params(view.params)}")
            self._send("best", view)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        end = self.tally.ended(trial.trial_id, None, _error_line(trial))
        view = end.trial
        self._event(f"trial {view.trial_id} failed {self._where(view)}: {view.reason}")
        self._send("failure", view)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- output
    def _where(self, view: TrialView) -> str:
        return f"at {self.time_key} {view.epoch}" if view.epoch is not None else "before its first report"

    def _send(self, event: str, view: TrialView) -> None:
        if self._notifier is None or not self._notifier.wants(event):
            return
        from sweeper import notify

        best = self.tally.best_ended
        self._notifier.send(notify.trial_message(
            self.name, event, view.trial_id, self.metric, self.mode, view.best, view.params,
            self.leaderboard_url, error=view.reason if event == "failure" else None,
            best=(best.trial_id, best.best, best.params) if best else None))

    def _event(self, line: str) -> None:
        stamped = f"[{fmt_duration(time.time() - self.t0):>6}] {line}"
        if self.log_path:
            try:
                with open(self.log_path, "a", encoding="utf-8") as fh:
                    fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {stamped}\n")
            except OSError:  # a log that cannot be written must not end the sweep
                self.log_path = None
        if self._live is None:
            print(stamped, flush=True)
            return
        self._recent = [*self._recent, stamped][-RECENT_EVENTS:]
        self._refresh()

    def _start_live(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self._live = Live(self._render(), console=Console(), refresh_per_second=2, transient=True,
                          get_renderable=self._render)
        self._live.start()
        _LIVE.add(self)

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def close(self) -> None:
        """Take the live view down (idempotent)."""
        live, self._live = self._live, None
        if live is not None:
            live.stop()
        _LIVE.discard(self)

    def _render(self):  # noqa: ANN202 - a rich renderable
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        tally, elapsed = self.tally, time.time() - self.t0
        c = tally.counts()
        ended = c["finished"] + c["stopped"] + c["failed"]

        def why(status: str) -> str:
            reasons = tally.reasons(status)
            return f" ({', '.join(f'{k} {n}' for k, n in sorted(reasons.items()))})" if reasons else ""

        head = Text.assemble((f"sweep {self.name}", "bold"), f"  elapsed {fmt_duration(elapsed)}",
                             f"  left ~{fmt_duration(tally.eta_s(elapsed))}",
                             f"  {ended}/{self.num_trials} trials done")
        counts = Text.assemble(("running ", "cyan"), str(c["running"]), ("  finished ", "green"),
                               f"{c['finished']}{why('finished')}", ("  stopped ", "yellow"),
                               f"{c['stopped']}{why('stopped')}", ("  failed ", "red"), str(c["failed"]),
                               "  pending ", str(c["pending"]))
        best = tally.best()
        best_line = Text.assemble(("best ", "bold"), f"{self.metric} ({self.mode}): ", *(
            (f"{fmt_value(best.best)}", "bold green"), f"  trial {best.trial_id} ({best.status})  "
            f"{fmt_params(best.params)}") if best else ("none yet",))
        table = Table(title=None, box=None, pad_edge=False, header_style="bold")
        for col in ("trial", self.time_key, f"{self.metric} (latest)", "best", "params"):
            table.add_column(col, overflow="ellipsis", no_wrap=True)
        running = [v for v in tally.trials.values() if v.status == "running"]
        for view in running[:MAX_ROWS]:
            epoch = f"{fmt_value(view.epoch)}/{fmt_value(view.total)}" if view.epoch else "-"
            table.add_row(view.trial_id, epoch, fmt_value(view.latest), fmt_value(view.best), fmt_params(view.params, 60))
        parts: list[Any] = [head, counts, best_line, table]
        if len(running) > MAX_ROWS:
            parts.append(Text(f"... and {len(running) - MAX_ROWS} more running"))
        parts += [Text(line, style="dim") for line in self._recent]
        return Group(*parts)


def _is_terminal() -> bool:
    """A live view only where a person watches a terminal: not a pipe, a file or a dumb terminal."""
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
