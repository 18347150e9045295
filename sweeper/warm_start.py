"""Warm start: an earlier sweep's trials, read from MLflow, seed the sampler of a new one.

`search.warm_start: {sweep: NAME}` (or a list) imports every trial of sweep NAME (all its
launches, same tracking store) that finished (Optuna COMPLETE, with its final objective, or its
best when `early_stopping` ended it) or that ASHA stopped (PRUNED, with its per-epoch values as
intermediate values, as our searcher reports live trials). A trial is restricted to the keys
both sweeps search; one whose value of such a key lies outside the new space, or that did not
report the objective(s), is skipped and counted. Running, failed and diverged trials are not
imported. The driver reads them once, when a launch creates its searcher; `sweeper resume`
restores the searcher with the imported trials in its study, so they are never imported twice::

    plan = load(sweep)            # SweepConfigError: no such sweep (lists the store's), nothing shared
    plan.trials, plan.summary()   # what sweeper.search hands Optuna's `study.add_trials`

MLflow (through `sweeper.store`) only: no Ray, no Optuna.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeper.config import Sweep, SweepConfigError
from sweeper.config.search_start import WARM_START, search_start, typed
from sweeper.constraints import violations
from sweeper.results import PATIENCE
from sweeper.schema import Constraint, Objective
from sweeper.spaces import Dimension, outside

COMPLETE, PRUNED = "COMPLETE", "PRUNED"


@dataclass(frozen=True)
class Imported:
    """One earlier trial as Optuna will hold it (states by name: this module imports no Optuna)."""

    source: str  # sweep name/trial id
    params: dict[str, Any]
    state: str  # COMPLETE or PRUNED
    values: list[float] | None  # COMPLETE: one per objective
    intermediate: dict[int, float] = field(default_factory=dict)  # epoch -> objective
    constraints: list[float] | None = None  # Optuna's convention: <= 0 feasible


@dataclass
class Source:
    """What one earlier sweep gave: the shared keys and how many trials were imported or skipped, why."""

    name: str
    shared: list[str]
    imported: int = 0
    outside: int = 0  # a shared key's value is not in the new space
    no_objective: int = 0  # it never reported the objective(s)
    unfinished: int = 0  # running, failed or diverged


@dataclass
class WarmStart:
    trials: list[Imported] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)

    def summary(self) -> str:
        """One line per source sweep, for the plan and the launch."""
        return "; ".join(
            f"{s.name}: {s.imported} trials imported on {', '.join(s.shared)}"
            + (f", skipped {s.outside} outside the space" if s.outside else "")
            + (f", {s.no_objective} without the objective" if s.no_objective else "")
            + (f", {s.unfinished} unfinished/failed" if s.unfinished else "")
            for s in self.sources)

    def tags(self) -> dict[str, str]:
        """The parent run's record: `sweeper.warm_start_trials` (count) and `sweeper.warm_start` (JSON)."""
        return {"sweeper.warm_start_trials": str(len(self.trials)),
                "sweeper.warm_start": json.dumps([vars(s) for s in self.sources])}


def _parse(dim: Dimension, text: str) -> Any:
    """An MLflow param (text) as the value `dim` holds; None when it is not one of its values."""
    if dim.is_categorical:
        match = [v for v in dim.values if str(v) == text]
        return match[0] if match else None
    try:
        number: Any = float(text)
    except ValueError:
        return None
    if dim.kind == "randint":
        if number != int(number):
            return None
        number = int(number)
    return None if outside(dim, number) else typed(dim, number)


def select(name: str, record: dict[str, Any], dims: list[Dimension], objectives: list[Objective],
           constraints: list[Constraint]) -> tuple[list[Imported], Source]:
    """The trials of one earlier sweep (`store.sweep_trials`' record) that can seed this search."""
    searched = set(record["searched"])
    shared = [d for d in dims if d.key in searched]
    source = Source(name, [d.key for d in shared])
    out: list[Imported] = []
    metrics = [o.metric for o in objectives]
    for trial in record["trials"]:
        state = {"finished": COMPLETE, "stopped": PRUNED}.get(trial.get("status"))
        if state is None:
            source.unfinished += 1
            continue
        params = {d.key: _parse(d, trial["params"][d.key]) if d.key in trial["params"] else None for d in shared}
        if any(v is None for v in params.values()):
            source.outside += 1
            continue
        final = trial["metrics"]
        values = None
        if state == COMPLETE:
            values = [final.get(m) for m in metrics]
            if len(metrics) == 1 and trial.get("stop_reason") == PATIENCE and trial.get("best") is not None:
                values = [trial["best"]]  # converged: its best is what it reached, as our searcher tells it
            if any(v is None for v in values):
                source.no_objective += 1
                continue
        history = trial["history"].get(metrics[0], []) if len(metrics) == 1 else []
        if state == PRUNED and len(metrics) == 1 and not history:
            source.no_objective += 1
            continue
        out.append(Imported(
            source=f"{name}/{trial.get('trial')}", params=params, state=state,
            values=[float(v) for v in values] if values is not None else None,
            intermediate={int(step): float(v) for step, v in history},
            constraints=violations(constraints, final) if constraints else None,
        ))
    source.imported = len(out)
    return out, source


def load(sweep: Sweep) -> WarmStart:
    """The trials `search.warm_start` imports; SweepConfigError (naming the field) for a sweep the
    store does not hold or one that shares no searched key with this sweep."""
    names = search_start(sweep.spec, sweep.dimensions).warm_start
    plan = WarmStart()
    if not names:
        return plan
    from sweeper import store

    uri = sweep.spec.tracking.uri
    problem = store.unreachable(uri)  # MLflow's client would retry a dead server for minutes
    if problem:
        raise SweepConfigError(sweep.file, "tracking.uri", problem)
    listed = isinstance(sweep.spec.search.get(WARM_START), list)
    objectives = sweep.objectives or [sweep.spec.objective]
    for i, name in enumerate(names):
        where = f"search.{WARM_START}" + (f"[{i}]" if listed else "") + ".sweep"
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            raise SweepConfigError(sweep.file, where, f"no MLflow store at {uri.removeprefix('sqlite:///')} to "
                                   f"find sweep {name!r} in (tracking.uri names the store it was recorded in)")
        try:
            record = store.sweep_trials(uri, name, [o.metric for o in objectives])
        except LookupError as exc:
            raise SweepConfigError(sweep.file, where, str(exc)) from None
        trials, source = select(name, record, sweep.dimensions, objectives, list(sweep.spec.constraints))
        if not source.shared:
            raise SweepConfigError(sweep.file, where, f"sweep {name!r} searched "
                                   f"{', '.join(record['searched']) or 'nothing'}; this sweep searches "
                                   f"{', '.join(d.key for d in sweep.dimensions)}: no key in common to learn from")
        plan.trials += trials
        plan.sources.append(source)
    return plan


def plan_lines(sweep: Sweep) -> list[str]:
    """What `--dry-run` says about where the search starts (start points, imported trials) and
    its constraints; reads the tracking store only when `search.warm_start` is set."""
    start = search_start(sweep.spec, sweep.dimensions)
    lines = []
    if start.start_from:
        lines.append(f"start from: {len(start.start_from)} points first: "
                     + "; ".join(", ".join(f"{k}={v}" for k, v in p.items()) for p in start.start_from))
    if start.warm_start:
        plan = load(sweep)
        lines.append(f"warm start: {len(plan.trials)} earlier trials seed the sampler ({plan.summary()})")
    if sweep.spec.constraints:
        from sweeper.config.sampling import CONSTRAINED
        from sweeper.constraints import describe

        alg = sweep.spec.search_alg
        told = alg.name == "optuna" and alg.sampler in CONSTRAINED
        lines.append(f"constraints: {describe(sweep.spec.constraints)} (on each trial's last report; "
                     + ("infeasible trials are told to the sampler and ranked last"
                        if told else f"the {alg.sampler if alg.name == 'optuna' else alg.name} sampler takes no "
                        "constraints: infeasible trials are only ranked last") + ")")
    return lines
