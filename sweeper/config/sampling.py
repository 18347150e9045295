"""Checks of `search_alg.sampler` and `constraints` against the sweep, before anything runs.

- A sampler other than TPE is an Optuna sampler: it needs `search_alg.name: optuna`.
- Several objectives need a sampler that handles them: every one but `cmaes` does (Optuna's
  CmaEsSampler raises on a multi-objective study, mid-sweep).
- A constraint names a metric the task reports (`TaskSpec.metrics`, `metric_prefixes`).
No torch, Ray or MLflow.
"""
from __future__ import annotations

from pathlib import Path

from sweeper.config.checks import metric_known
from sweeper.config.sweep import SweepConfigError, suggest
from sweeper.registry import TaskSpec
from sweeper.schema import Objective, SweepFile

#: samplers that model one objective only
SINGLE_OBJECTIVE = ("cmaes",)
#: samplers that use the constraint values set on trials (Optuna 5: TPE, GP, NSGA-II; the others ignore them)
CONSTRAINED = ("tpe", "gp", "nsga2")


def check_sampler(file: Path, spec: SweepFile, objectives: list[Objective]) -> None:
    alg = spec.search_alg
    if alg.sampler != "tpe" and alg.name != "optuna":
        raise SweepConfigError(file, "search_alg.sampler", f"{alg.sampler!r} is an Optuna sampler: set "
                               f"search_alg.name: optuna (or drop the sampler for name: {alg.name})")
    if len(objectives) > 1 and alg.sampler in SINGLE_OBJECTIVE and spec.ablation is None:
        raise SweepConfigError(file, "search_alg.sampler", f"{alg.sampler!r} optimises one objective and this "
                               f"sweep has {len(objectives)}; use nsga2, tpe, gp, qmc or random")


def check_constraints(file: Path, spec: SweepFile, task: TaskSpec) -> None:
    for i, constraint in enumerate(spec.constraints):
        if not metric_known(task, constraint.metric, bool(spec.eval_grid)):
            known = list(task.metrics)
            raise SweepConfigError(file, f"constraints[{i}].metric", f"task {spec.task!r} does not report "
                                   f"{constraint.metric!r}{suggest(constraint.metric, known)}; it reports "
                                   f"{', '.join(known + [p + '*' for p in task.metric_prefixes])}")
