"""The objective and constraint metrics are ones every trial can report, checked before dispatch.

`metric_known` (checks.py) accepts a task's metric families by prefix; whether a family member
exists can depend on the trial config (a named range of the eval settings) or on the dataset (a
per-class metric). The task answers through its `TaskSpec.check_objective` hook, given every
trial config the sweep can make and, once the data is read, its class names; config stays free
of task knowledge and of torch:

    check_reportable(sweep)                    # at load: configs only
    check_reportable(sweep, with_data=True)    # in check_paths, after the data checks
"""
from __future__ import annotations

import copy
from typing import Any

from sweeper.config.sweep import Sweep, SweepConfigError, set_dotted


def trial_configs(sweep: Sweep) -> list[dict[str, Any]]:
    """The base config, then base with each searched choice or each ablation variant applied: every
    value of a key a trial may get appears in one of them (continuous ranges set numbers only)."""
    out = [sweep.base]
    changes = [{d.key: v} for d in sweep.dimensions for v in d.values]
    changes += [dict(keys) for _, keys in sweep.variants]
    for change in changes:
        config = copy.deepcopy(sweep.base)
        for key, value in change.items():
            set_dotted(config, key, value)
        out.append(config)
    return out


def _class_names(sweep: Sweep) -> list[str] | None:
    """The validation data's class names (the training data's without a val file): what per-class
    metrics are named after. None when the files have no categories."""
    from sweeper.tasks.folds import FoldError, categories

    data = sweep.spec.data
    path = None if data is None else (data.val or data.train)
    if path is None:
        return None
    try:
        cats = categories(path)
    except FoldError:  # an unreadable file is the data check's to report
        return None
    return None if cats is None else [name for _, name in cats]


def check_reportable(sweep: Sweep, with_data: bool = False) -> None:
    """Raise SweepConfigError naming `objective.metric` (`objective[i].metric`) or
    `constraints[i].metric` when the task says some trial could not report that metric."""
    checker = sweep.task.objective_checker()
    if checker is None:
        return
    objectives = list(sweep.objectives) or [sweep.spec.objective]
    fields = [("objective.metric" if len(objectives) == 1 else f"objective[{i}].metric", o.metric)
              for i, o in enumerate(objectives)]
    fields += [(f"constraints[{i}].metric", c.metric) for i, c in enumerate(sweep.spec.constraints)]
    configs = trial_configs(sweep)
    names = _class_names(sweep) if with_data else None
    for field, metric in fields:
        if sweep.spec.eval_grid:  # `default/<metric>`: the value at the base `post` settings
            metric = metric.removeprefix("default/")
        problem = checker(metric, configs, names)
        if problem:
            raise SweepConfigError(sweep.file, field, problem)
