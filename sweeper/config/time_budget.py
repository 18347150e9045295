"""Checks of ASHA on time (`scheduler.time_attr: time_total_s`) at load. Durations themselves
(`budget.time_limit`, `budget.trial_time_limit`, timed rungs) are parsed by the schema
(`sweeper.durations`); what needs the tracking store (a limit shorter than one measured epoch)
is checked by `sweeper.time_budget.check_against_history` when the sweep launches, still before
any trial. A `trial_time_limit` above `time_limit` is allowed: a trial's training time adds up
over resumes. No torch, Ray or MLflow here.
"""
from __future__ import annotations

from pathlib import Path

from sweeper.config.sweep import SweepConfigError
from sweeper.durations import format_duration
from sweeper.schema import SweepFile


def check_timed_scheduler(file: Path, spec: SweepFile) -> None:
    """ASHA on `time_total_s`: its rungs are seconds, so `max_t` (seconds) is required (no epoch
    count can stand in for it), the grace period fits inside it, and a command trial declares its
    planned length in epochs (`command.epochs`), which tells a trial that ran its course from one
    ASHA stopped."""
    sched = spec.scheduler
    if sched.name != "asha":
        raise SweepConfigError(file, "scheduler.time_attr", f"time_total_s sets what ASHA's rungs count; scheduler "
                               f"{sched.name!r} has no rungs: remove time_attr or use scheduler.name: asha")
    if sched.max_t is None:
        raise SweepConfigError(file, "scheduler.max_t", "ASHA on time (scheduler.time_attr: time_total_s) needs its "
                               "last rung in seconds: set scheduler.max_t, e.g. 2h (the epochs are no default here)")
    if sched.grace_period > sched.max_t:
        raise SweepConfigError(file, "scheduler.grace_period", f"{format_duration(sched.grace_period)} exceeds max_t "
                               f"({format_duration(sched.max_t)}): no trial could be stopped early")
    if getattr(sched, "promote", False):
        raise SweepConfigError(file, "scheduler.promote", "promotion pauses trials at rungs counted in epochs; on "
                               "time_attr: time_total_s use stop-based ASHA (promote: false)")
    if spec.command is not None and spec.command.epochs is None:
        raise SweepConfigError(file, "command.epochs", "ASHA on time (scheduler.time_attr: time_total_s) needs the "
                               "epochs a command trial trains: set command.epochs")



def timed_rungs(grace_s: int, reduction_factor: float, max_t_s: int) -> list[float]:
    """The training seconds at which ASHA on `time_total_s` judges a trial: its milestones
    `grace * factor**k` below max_t (a trial is judged at its first report at or after one)."""
    marks, k = [], 0
    while (mark := grace_s * reduction_factor ** k) < max_t_s:
        marks.append(mark)
        k += 1
    return marks


def scheduler_plan(spec: SweepFile) -> str:
    """The dry-run plan's scheduler line for ASHA on time."""
    sched = spec.scheduler
    assert sched.max_t is not None
    marks = ", ".join(format_duration(m) for m in timed_rungs(sched.grace_period, sched.reduction_factor, sched.max_t))
    return (f"ASHA on `time_total_s`: rungs at [{marks}] of training time, each judging a trial's first epoch that "
            f"ends at or after it (keep top 1/{sched.reduction_factor:g}); max_t {format_duration(sched.max_t)}, "
            "after which a trial ends (stop_reason time_limit)")


def plan_lines(spec: SweepFile, now: float) -> list[str]:
    """The dry-run plan's lines about time budgets: the launch's limit with its expected end
    (`now` + limit, as time.time()), and the per-trial limit; none without limits."""
    import time as _time

    budget, lines = spec.budget, []
    if budget.time_limit is not None:
        end = _time.strftime("%Y-%m-%d %H:%M:%S UTC", _time.gmtime(now + budget.time_limit))
        lines.append(f"time limit: {format_duration(budget.time_limit)} per launch: ends by about {end} (now + limit; "
                     "the clock starts with the first trial, so add the start-up, and the epoch each running trial "
                     "is in); then running trials checkpoint their epoch and stop, and `sweeper resume` continues "
                     f"them with a fresh {format_duration(budget.time_limit)}")
    if budget.trial_time_limit is not None:
        lines.append(f"trial time limit: {format_duration(budget.trial_time_limit)} of training per trial (over its "
                     "resumes): a trial reaching it stops after its current epoch (stop_reason time_limit, "
                     "counted as finished)")
    return lines
