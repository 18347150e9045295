"""`scheduler.grace_period: auto` (the default) resolved at load into a number of epochs.

The loaded sweep carries the number, so the runner, the trainable, the checks and the dry-run plan
all read an int; the plan says it was `auto` (the merged document, `Sweep.raw`, keeps the word).
The rule is `sweeper.rungs.auto_grace_period`, chosen on the replay benchmark (`bench/replay.py`):
no stop before a full epoch's evaluation after the LR warmup, otherwise a quarter of `max_t` but
at most 3 epochs.
No torch, Ray or MLflow here.

    spec = resolve_grace_period(spec, base, dims)   # in load_sweep, before the budget checks
"""
from __future__ import annotations

import math
from typing import Any

from sweeper.rungs import auto_grace_period
from sweeper.schema import SweepFile
from sweeper.spaces import Dimension

AUTO = "auto"
WARMUP_KEY = "warmup_epochs"  # the built-in tasks' `train.warmup_epochs` (sweeper.tasks.training)


def warmup_epochs(base: dict[str, Any], dims: list[Dimension]) -> float:
    """The longest LR warmup a trial may get, in epochs: `train.warmup_epochs` of `base`, or the
    top of its search range when it is searched; 0 for a task without one (a command trial)."""
    train = base.get("train") if isinstance(base.get("train"), dict) else {}
    values: list[Any] = [train.get(WARMUP_KEY, 0)]
    for d in dims:
        if d.key == f"train.{WARMUP_KEY}":
            values += d.representative_values()
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
               and math.isfinite(v)]
    return max(numbers, default=0.0)


def resolve_grace_period(spec: SweepFile, base: dict[str, Any], dims: list[Dimension]) -> SweepFile:
    """`spec` with `scheduler.grace_period: auto` replaced by its number (in the scheduler's unit:
    epochs, a command's steps, or seconds on `time_attr: time_total_s`, where only the quarter of
    `max_t` applies). Anything else is returned unchanged."""
    sched = spec.scheduler
    if sched.grace_period != AUTO:
        return spec
    timed = getattr(sched, "time_attr", "epoch") == "time_total_s"
    if timed:
        max_t, warmup = sched.max_t or 1, 0.0  # a timed ASHA without max_t is refused by check_budget
    elif spec.command is not None:
        max_t, warmup = sched.max_t or spec.command.epochs or 1, 0.0
    else:
        max_t, warmup = sched.max_t or base["train"]["epochs"], warmup_epochs(base, dims)
    # on seconds the 3-epoch cap of the rule means nothing: a quarter of max_t, as explain_auto says
    grace = max(1, math.ceil(max_t / 4)) if timed else auto_grace_period(max_t, warmup)
    return spec.model_copy(update={"scheduler": sched.model_copy(update={"grace_period": grace})})


def explain_auto(sweep: Any) -> str:
    """What `grace_period: auto` became for a loaded sweep and why, for the dry-run plan."""
    spec, g = sweep.spec, sweep.spec.scheduler.grace_period
    if getattr(spec.scheduler, "time_attr", "epoch") == "time_total_s":
        return f"{g} s (a quarter of max_t, {spec.scheduler.max_t} s)"
    unit = spec.command.time_unit if spec.command is not None else "epoch"
    warmup = 0.0 if spec.command is not None else warmup_epochs(sweep.base, sweep.dimensions)
    why = f"a quarter of max_t {sweep.max_t}, at most 3"
    if warmup:
        why = f"a full epoch after the {warmup:g}-epoch warmup, or " + why
    return f"{g} {unit}s ({why}; set scheduler.grace_period to choose)"
