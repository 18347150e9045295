"""Checks of a sweep against its task's spec: sections, searched keys and values, the eval grid,
the objective, an ablation's factors, the budget. Each raises SweepConfigError naming the file
and the dotted field; `load_sweep` runs them all before anything is dispatched."""
from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sweeper.config.sweep import SweepConfigError, flatten, get_or_none, is_data_key, set_dotted, suggest
from sweeper.registry import TaskSpec, all_specs
from sweeper.schema import DataConfig, Objective, SweepFile
from sweeper.spaces import BASELINE, FOLD_KEY as FOLD, Dimension, SpaceError, grid_values, parse_search


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
        if is_data_key(d.key, spec):
            if not d.is_categorical:
                raise SweepConfigError(where, f"search.{d.key}", "a data key is searched with `choice` (or `grid`) "
                                       "values: files and fold indices are not ranges")
            for value in d.values:
                check_data_value(where, f"search.{d.key}", spec, task, d.key, value)
        else:
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


#: a named variant (`ablation.variants`): it names runs in tags and tables, beside generated `key=value` names
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: `data` keys a sweep may not vary, and why
FIXED_DATA_KEYS = {
    "synth": "the synthetic dataset is generated once, at launch, for the data section",
    "folds": "every trial splits data.train the same way, so that results pair by fold",
}


def data_keys() -> list[str]:
    """The `data.*` keys a sweep may search or ablate."""
    return [f"data.{k}" for k in DataConfig.model_fields if k not in FIXED_DATA_KEYS]


def check_data_value(file: Path, field: str, spec: SweepFile, task: TaskSpec, key: str, value: Any) -> None:
    """A `data.*` key a sweep varies (searched, a factor, in a named variant): one of the data
    section's keys, not one fixed for the whole sweep, with a value the section (and for
    `data.format` the task) accepts."""
    assert spec.data is not None
    sub = key.removeprefix("data.")
    if sub.split(".")[0] in FIXED_DATA_KEYS:
        raise SweepConfigError(file, field, f"{key} cannot vary between trials: "
                               f"{FIXED_DATA_KEYS[sub.split('.')[0]]}; set it in `data`")
    if key not in data_keys():
        raise SweepConfigError(file, field, f"{key!r} is not a data key{suggest(key, data_keys())}; "
                               f"data keys a sweep may vary: {', '.join(data_keys())}")
    data = spec.data.model_dump()
    data[sub] = value
    try:
        DataConfig.model_validate(data)
    except ValidationError as exc:
        raise SweepConfigError(file, field, f"value {value!r} does not fit {key}: {exc.errors()[0]['msg']}") from None
    if sub == "format" and value not in task.data_formats:
        raise SweepConfigError(file, field, f"task {spec.task!r} reads {' or '.join(task.data_formats)}, not {value!r}")


def _baseline_value(spec: SweepFile, base: dict[str, Any], key: str) -> Any:
    if is_data_key(key, spec):
        return get_or_none(spec.data.model_dump(), key.removeprefix("data."))
    return get_or_none(base, key)


def _normal(key: str, value: Any) -> Any:
    """A value as compared with others: a data path normalised (`./a/b.json` is `a/b.json`)."""
    if key.removeprefix("data.") in ("train", "val", "images") and isinstance(value, str) and value:
        return os.path.normpath(os.path.expanduser(value))
    return value


def _same(key: str, value: Any, base_value: Any) -> bool:
    return base_value is not None and _normal(key, value) == _normal(key, base_value)


def _signature(changes: dict[str, Any]) -> str:
    return repr(sorted((k, repr(_normal(k, v))) for k, v in changes.items()))


def _check_change(file: Path, field: str, spec: SweepFile, task: TaskSpec, base: dict[str, Any], key: str,
                  value: Any) -> None:
    """One key an ablation changes: a key of `base` (or of the data section) with a value its schema accepts."""
    if is_data_key(key, spec):
        check_data_value(file, field, spec, task, key, value)
    elif not task.open_keys:
        check_key(file, field, base, key)
        check_value(file, field, task.base, base, key, value)


def check_data_section(file: Path, spec: SweepFile, dims: list[Dimension]) -> None:
    """Folds: every held-out fold a trial may get (`data.fold`, searched, a factor or in a named
    variant) is one of `data.folds`; `data.val` may be left out only when every trial holds out a
    fold; an ablation's baseline holds out a fold when its variants do."""
    data = spec.data
    if data is None:
        return
    abl = spec.ablation
    folds: list[tuple[str, Any]] = [("data.fold", data.fold)] if data.fold is not None else []
    folds += [(f"search.{FOLD}", v) for d in dims if d.key == FOLD for v in d.values]
    if abl is not None:
        folds += [(f"ablation.factors.{FOLD}", v) for v in abl.factors.get(FOLD, [])]
        folds += [(f"ablation.variants.{n}.{FOLD}", c[FOLD]) for n, c in abl.variants.items() if FOLD in c]
    for field, fold in folds:
        if data.folds is None:
            raise SweepConfigError(file, field, "a held-out fold needs data.folds (`{k: 5, seed: 0}`, or your own "
                                   "`{files: [fold0.json, ...]}`) to say which images each fold holds")
        if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < data.folds.count:
            raise SweepConfigError(file, field, f"fold {fold!r} is outside 0..{data.folds.count - 1} "
                                   f"(data.folds has {data.folds.count} folds)")
    if abl is not None and data.fold is None and len(folds) > 0:
        raise SweepConfigError(file, folds[0][0], "the baseline needs a held-out fold too: set data.fold (e.g. 0) "
                               "and list the other folds here, so every variant validates on a fold")
    every_trial_folds = data.fold is not None or any(d.key == FOLD for d in dims)
    if data.val is None and not every_trial_folds:
        raise SweepConfigError(file, "data.val", "is required: it is what a trial validates on unless it holds out "
                               "a fold of data.train (data.folds and data.fold)")
    if data.val is None and data.synth is not None:
        raise SweepConfigError(file, "data.val", "is required with data.synth, which generates it (DIR/val.json)")


def check_ablation(file: Path, spec: SweepFile, task: TaskSpec, base: dict[str, Any]) -> None:
    abl = spec.ablation
    assert abl is not None
    if isinstance(abl.seeds, int) and abl.seeds > MAX_SEEDS:
        raise SweepConfigError(file, "ablation.seeds", f"{abl.seeds} seeds is more than {MAX_SEEDS}: every variant "
                               "runs once per seed; give the number of seeds (e.g. 3) or a list of them")
    if spec.search:
        raise SweepConfigError(file, "ablation", "a sweep either searches (`search`, `include`) or ablates "
                               "(`ablation`), not both: move the searched keys into `ablation.factors`")
    if not abl.factors and not abl.variants:
        raise SweepConfigError(file, "ablation.factors", "needs at least one factor (dotted key -> values) "
                               "or named variant (`ablation.variants`: name -> {dotted key: value})")
    seed_key = abl.seed_key or task.seed_key
    if not task.open_keys:
        check_key(file, "ablation.seed_key", base, seed_key)
    seen: dict[str, str] = {}  # a variant's changes (as text) -> its name: each variant once
    for key, values in abl.factors.items():
        field = f"ablation.factors.{key}"
        if key == seed_key:
            raise SweepConfigError(file, field, "is the seed key; seeds come from `ablation.seeds`")
        if not isinstance(values, list) or not values:
            raise SweepConfigError(file, field, "needs a non-empty list of values to compare with the baseline")
        for value in values:
            _check_change(file, field, spec, task, base, key, value)
        for value in values:
            if _same(key, value, _baseline_value(spec, base, key)):
                raise SweepConfigError(file, field, f"value {value!r} is the baseline's own value; "
                                       "list only values that differ from `base`")
        if len({repr(_normal(key, v)) for v in values}) != len(values):
            raise SweepConfigError(file, field, "lists a value twice")
        seen.update({_signature({key: v}): f"{key}={v}" for v in values})
    for name, changes in abl.variants.items():
        field = f"ablation.variants.{name}"
        if not VARIANT_NAME.fullmatch(name) or name == BASELINE:
            raise SweepConfigError(file, field, "a variant name is letters, digits, '.', '_' and '-' (it names the "
                                   f"variant in tags and tables; {BASELINE!r} is the baseline's)")
        if not isinstance(changes, dict) or not changes:
            raise SweepConfigError(file, field, "needs the keys it changes together: {dotted key: value, ...}")
        for key, value in changes.items():
            if key == seed_key:
                raise SweepConfigError(file, f"{field}.{key}", "is the seed key; seeds come from `ablation.seeds`")
            if abl.full_factorial and key in abl.factors:
                raise SweepConfigError(file, f"{field}.{key}", "is also a factor: with full_factorial every named "
                                       "variant runs with every factor value, so a key is one or the other")
            _check_change(file, f"{field}.{key}", spec, task, base, key, value)
            if _same(key, value, _baseline_value(spec, base, key)):
                raise SweepConfigError(file, f"{field}.{key}", f"value {value!r} is the baseline's own value; "
                                       "list only the keys the variant changes")
        signature = _signature(changes)
        if signature in seen:
            raise SweepConfigError(file, field, f"changes the same keys to the same values as variant "
                                   f"{seen[signature]!r}; list each variant once")
        seen[signature] = name
    counts = [len(v) for v in abl.factors.values()]
    named = len(abl.variants)
    variants = math.prod(n + 1 for n in counts) * (named + 1) if abl.full_factorial else 1 + sum(counts) + named
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
    if sched.time_attr == "time_total_s":
        from sweeper.config.time_budget import check_timed_scheduler

        check_timed_scheduler(file, spec)  # rungs in seconds: nothing to compare with the epochs
        return
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


def check_time_unit(file: Path, doc: dict[str, Any], task: TaskSpec) -> None:
    """What `command.time_key` allows, on the raw document (before the schema, so a built-in task's
    stray `command: {time_key: step}` is named for what it is rather than as a command without
    `run`). Built-in tasks count epochs (`train.epochs`); a command trial on steps has no epochs:
    its length is `scheduler.max_t`, in steps, and steps are not renumbered (`first_epoch`)."""
    command = doc.get("command")
    if not isinstance(command, dict):
        return
    if not task.open_keys:
        if "time_key" in command or "epoch_key" in command:
            raise SweepConfigError(file, "command.time_key", f"task {task.name!r} counts time in epochs (its "
                                   "train.epochs), always; time_key is for task: command, whose script may "
                                   "report steps")
        return
    if "epoch_key" in command and "time_key" in command:
        raise SweepConfigError(file, "command.epoch_key", "is the old name of command.time_key: keep only time_key")
    key = command.get("time_key", command.get("epoch_key", "epoch"))
    unit = key if isinstance(key, str) else (key[0] if isinstance(key, list) and key else None)
    if unit != "step":
        return
    for name, why in (("epochs", "counts epochs; on steps the trial's length is scheduler.max_t, in steps"),
                      ("first_epoch", "renumbers epochs; steps are used as the script reports them")):
        if command.get(name) is not None:
            raise SweepConfigError(file, f"command.{name}", f"{why} (command.time_key: step): remove it")
    sched = doc.get("scheduler") if isinstance(doc.get("scheduler"), dict) else {}
    default = "fifo" if "scheduler" not in doc and doc.get("ablation") is not None else "asha"
    if sched.get("name", default) == "asha" and sched.get("max_t") is None:
        raise SweepConfigError(file, "scheduler.max_t", "ASHA needs the last step of a command trial on steps "
                               "(command.time_key: step): set scheduler.max_t, in steps")


def check_notify(file: Path, spec: SweepFile) -> None:
    """A webhook that is not an http(s) URL is refused at load, by a message that does not repeat
    it (its path may be the secret); pydantic would echo the value."""
    from sweeper.config.trial import webhook_problem

    if spec.notify is not None and (problem := webhook_problem(spec.notify.webhook)):
        raise SweepConfigError(file, "notify.webhook", problem)
