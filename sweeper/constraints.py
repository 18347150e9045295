"""Constraints (`constraints: [{metric: KEY, max: X}, {metric: KEY, min: Y}]`): which trials are feasible.

A trial is judged on its last reported value of each constrained metric (a parameter count or
peak memory does not change over epochs; a throughput is the last epoch's). The same numbers
serve Optuna (`constraints_func`: one value per constraint, feasible when <= 0) and the
leaderboard (`sweeper.feasible` tag on the trial's MLflow run). Optuna 5 reads constraints from
the trial itself (`Trial.set_constraint(key, value)` before `tell`, its `constraints_func`
being deprecated): the searcher sets one per constraint, named by `keys`::

    violations(sweep.spec.constraints, {"model/params_m": 31.0})   # [1.0]: 1 M parameters too many
    feasible(sweep.spec.constraints, {"model/params_m": 12.0})     # True

Pure: no Ray, Optuna or MLflow.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from sweeper.schema import Constraint

#: what a constraint's value is when the trial never reported its metric: infeasible by 1 unit
MISSING = 1.0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def violations(constraints: Sequence[Constraint], metrics: Mapping[str, Any]) -> list[float]:
    """Per constraint, by how much the metric exceeds its bound (<= 0: satisfied), in the metric's
    units; a constraint with both bounds gives the larger violation. A metric the trial did not
    report (or a non-finite one) counts as violated by MISSING."""
    out = []
    for c in constraints:
        value = _number(metrics.get(c.metric))
        if value is None:
            out.append(MISSING)
            continue
        parts = ([value - c.max] if c.max is not None else []) + ([c.min - value] if c.min is not None else [])
        out.append(max(parts))
    return out


def feasible(constraints: Sequence[Constraint], metrics: Mapping[str, Any]) -> bool | None:
    """Whether every constraint holds; None when there are no constraints or a metric is missing."""
    if not constraints or any(_number(metrics.get(c.metric)) is None for c in constraints):
        return None
    return all(v <= 0 for v in violations(constraints, metrics))


def keys(constraints: Sequence[Constraint]) -> list[str]:
    """The name of each constraint on an Optuna trial: `<index>:<metric>` (a metric may be bounded twice)."""
    return [f"{i}:{c.metric}" for i, c in enumerate(constraints)]


def describe(constraints: Sequence[Constraint]) -> str:
    """`model/params_m <= 30, images_per_s >= 50` for the plan."""
    parts = []
    for c in constraints:
        if c.min is not None and c.max is not None:
            parts.append(f"{c.min:g} <= {c.metric} <= {c.max:g}")
        elif c.max is not None:
            parts.append(f"{c.metric} <= {c.max:g}")
        else:
            parts.append(f"{c.metric} >= {c.min:g}")
    return ", ".join(parts)
