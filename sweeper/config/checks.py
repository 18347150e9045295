"""Checks of a sweep against its task's spec: sections, searched keys and values, the eval grid,
the objective, an ablation's factors, the budget. Each raises SweepConfigError naming the file
and the dotted field; `load_sweep` runs them all before anything is dispatched."""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sweeper.config.sweep import SweepConfigError, flatten, get_or_none, set_dotted, suggest
from sweeper.registry import TaskSpec, all_specs
from sweeper.schema import Objective, SweepFile
from sweeper.spaces import Dimension, SpaceError, grid_values, parse_search


#: ablation bounds: `seeds: N` builds N seeds and every variant runs with each; more than this is a typo
MAX_SEEDS, MAX_ABLATION_TRIALS = 1000, 100_000


def check_task_sections(file: Path, spec: SweepFile, task: TaskSpec) -> None:
    """Built-in tasks read `data`; the command task runs `command` and reads no data of ours."""
    if task.open_keys:
        if spec.command is None:
            raise SweepConfigError(file, "command", f"task {spec.task!r} needs a `command` section "
                                   "(at least `run: python train.py {overrides}`)")
        if spec.data is not None:
            raise SweepConfigError(file, "data", "the command task reads no `data`: your script loads its "
                                   "own dataset (pass its path in `base` or in `command.run`)")
        cmd = spec.command
        if cmd.overrides != "env" and "{overrides}" not in cmd.run:
            raise SweepConfigError(file, "command.run", "has no {overrides} placeholder, so the searched values "
                                   "would never reach the script; add it (or use `overrides: env`)")
        if spec.scheduler.name == "asha" and not (spec.scheduler.max_t or cmd.epochs):
            raise SweepConfigError(file, "scheduler.max_t", "ASHA needs the last epoch of a command trial: "
                                   "set scheduler.max_t or command.epochs")
        return
    if spec.command is not None:
        runners = " or ".join(repr(t.name) for t in all_specs() if t.open_keys)
        raise SweepConfigError(file, "command", f"only task {runners} runs a command; task {spec.task!r} "
                               "trains its own model")
    reads_data = bool(task.data_formats)
    if spec.data is None and reads_data:
        raise SweepConfigError(file, "data", f"task {spec.task!r} needs a `data` section (train, val, images)")
    if spec.data is not None and not reads_data:
        raise SweepConfigError(file, "data", f"task {spec.task!r} reads no data; remove `data`")


def check_value(file: Path, field: str, base_model: type[BaseModel], base: dict[str, Any],
                 key: str, value: Any) -> None:
    trial = copy.deepcopy(base)
    set_dotted(trial, key, value)
    try:
        base_model.model_validate(trial)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SweepConfigError(file, field, f"value {value!r} does not fit {key}: {err['msg']}") from None


def check_key(file: Path, field: str, base: dict[str, Any], key: str) -> None:
    flat = flatten(base)
    if key not in flat:
        raise SweepConfigError(file, field, f"{key!r} is not a key of `base`{suggest(key, list(flat))}")


def check_search(file: Path, spec: SweepFile, task: TaskSpec, base: dict[str, Any],
                 origins: dict[str, Path]) -> list[Dimension]:
    """The search space; an error about a key an include fragment set names that fragment."""
    try:
        dims = parse_search(spec.search)
    except SpaceError as exc:
        field, _, msg = str(exc).partition(": ")
        raise SweepConfigError(origins.get(field.removeprefix("search."), file), field, msg) from None
    for d in dims:
        if task.open_keys:
            continue  # the script's keys: only the script can check them
        where = origins.get(d.key, file)
        check_key(where, f"search.{d.key}", base, d.key)
        for value in d.representative_values():
            check_value(where, f"search.{d.key}", task.base, base, d.key, value)
        if d.kind == "grid" and spec.search_alg.name != "grid":
            raise SweepConfigError(file, f"search.{d.key}", "`grid` needs `search_alg: {name: grid}`; "
                                   "with Optuna or random search use `choice`")
    if spec.search_alg.name == "grid":
        try:
            grid_values(dims)
        except SpaceError as exc:
            raise SweepConfigError(file, "search_alg.name", str(exc)) from None
    return dims


def check_eval_grid(file: Path, spec: SweepFile, task: TaskSpec, base: dict[str, Any]) -> None:
    allowed = task.eval_grid_keys
    if spec.eval_grid and spec.objective.metric.startswith("train/"):
        raise SweepConfigError(file, "eval_grid", "the grid point is chosen by the objective, so it needs "
                               f"an evaluation metric, not {spec.objective.metric!r}")
    for key, values in spec.eval_grid.items():
        field = f"eval_grid.{key}"
        if key not in allowed:
            raise SweepConfigError(file, field, f"task {spec.task!r} sweeps only {', '.join(allowed) or 'nothing'} "
                                   f"at evaluation{suggest(key, list(allowed))}")
        if not values:
            raise SweepConfigError(file, field, "needs a non-empty list of values")
        if key in spec.search:
            raise SweepConfigError(file, field, "is also in `search`: sweep it at evaluation or by training, not both")
        for value in values:
            check_value(file, field, task.base, base, key, value)


def metric_known(task: TaskSpec, metric: str, eval_grid: bool = False) -> bool:
    """Whether `task` reports `metric` (used to check the objective before anything runs); with
    an eval grid, `default/<metric>` (the value at the `post` settings) too."""
    if eval_grid and metric.startswith("default/"):
        metric = metric[len("default/"):]
    return task.metric_known(metric)


def check_objective(file: Path, spec: SweepFile, task: TaskSpec, objective: Objective, field: str) -> None:
    if not metric_known(task, objective.metric, bool(spec.eval_grid)):
        known = list(task.metrics)
        prefixes = ", ".join(f"{p}<name>" for p in task.metric_prefixes)
        raise SweepConfigError(file, field, f"task {spec.task!r} does not report "
                               f"{objective.metric!r}{suggest(objective.metric, known)}; "
                               f"it reports {', '.join(known)}" + (f", {prefixes}" if prefixes else ""))


def check_ablation(file: Path, spec: SweepFile, task: TaskSpec, base: dict[str, Any]) -> None:
    abl = spec.ablation
    assert abl is not None
    if isinstance(abl.seeds, int) and abl.seeds > MAX_SEEDS:
        raise SweepConfigError(file, "ablation.seeds", f"{abl.seeds} seeds is more than {MAX_SEEDS}: every variant "
                               "runs once per seed; give the number of seeds (e.g. 3) or a list of them")
    if spec.search:
        raise SweepConfigError(file, "ablation", "a sweep either searches (`search`, `include`) or ablates "
                               "(`ablation`), not both: move the searched keys into `ablation.factors`")
    if not abl.factors:
        raise SweepConfigError(file, "ablation.factors", "needs at least one factor (dotted key -> values)")
    seed_key = abl.seed_key or task.seed_key
    if not task.open_keys:
        check_key(file, "ablation.seed_key", base, seed_key)
    for key, values in abl.factors.items():
        field = f"ablation.factors.{key}"
        if key == seed_key:
            raise SweepConfigError(file, field, "is the seed key; seeds come from `ablation.seeds`")
        if not isinstance(values, list) or not values:
            raise SweepConfigError(file, field, "needs a non-empty list of values to compare with the baseline")
        if not task.open_keys:
            check_key(file, field, base, key)
            for value in values:
                check_value(file, field, task.base, base, key, value)
        base_value = get_or_none(base, key)
        for value in values:
            if value == base_value and base_value is not None:
                raise SweepConfigError(file, field, f"value {value!r} is the baseline's own value; "
                                       "list only values that differ from `base`")
        if len({repr(v) for v in values}) != len(values):
            raise SweepConfigError(file, field, "lists a value twice")
    counts = [len(v) for v in abl.factors.values()]
    variants = math.prod(n + 1 for n in counts) if abl.full_factorial else 1 + sum(counts)
    trials = variants * len(abl.seed_values)
    if trials > MAX_ABLATION_TRIALS:
        raise SweepConfigError(file, "ablation.factors", f"{variants} variants x {len(abl.seed_values)} seeds = "
                               f"{trials} trials, more than {MAX_ABLATION_TRIALS}; use fewer factors or values"
                               + (" (or full_factorial: false)" if abl.full_factorial else ""))


def check_budget(file: Path, spec: SweepFile, dims: list[Dimension], base: dict[str, Any]) -> None:
    """Something to search, and ASHA's epochs inside the trial's."""
    if not dims and spec.budget.num_samples > 1 and spec.ablation is None:
        raise SweepConfigError(file, "budget.num_samples", f"the search space is empty, so {spec.budget.num_samples} "
                               "trials would all train the same configuration; add keys to `search` "
                               "or set budget.num_samples: 1")
    sched = spec.scheduler
    if spec.command is not None:
        epochs, epochs_key = spec.command.epochs or sched.max_t or 1, "command.epochs"
    else:
        epochs, epochs_key = base["train"]["epochs"], "train.epochs"
    max_t = sched.max_t or epochs
    if sched.max_t and epochs_key not in spec.search and sched.max_t > epochs:
        raise SweepConfigError(file, "scheduler.max_t", f"{sched.max_t} epochs exceeds {epochs_key} ({epochs})")
    if sched.name == "asha" and sched.grace_period > max_t:
        raise SweepConfigError(file, "scheduler.grace_period", f"{sched.grace_period} epochs exceeds "
                               f"max_t ({max_t}): no trial could be stopped early")


def check_train_base(file: Path, task: TaskSpec) -> None:
    """A built-in task's `train` block must declare what the trainable reads (registry.TrainBase)."""
    missing = task.missing_train_keys()
    if missing:
        raise SweepConfigError(file, "task", f"task {task.name!r} cannot be trained: its schema "
                               f"({task.base.__name__}) has no {', '.join(missing)}; its `train` block must "
                               "extend sweeper.registry.TrainBase")
