"""The task registry: what each task declares about itself, once, beside its code.

A task is a package under `sweeper/tasks/` with a `spec.py` that holds its `base` schema and a
:class:`TaskSpec`. Everything the rest of sweeper needs to know about a task (which keys a sweep
file may set, which metrics it reports, which keys `eval_grid` may sweep, the seed key, the
leaderboard columns, how `sweeper eval` and `sweeper data synth` reach its code) is read from
that record, so adding a task means adding its package and one line in :data:`TASKS`::

    spec = get_spec("dbnet")            # imports sweeper.tasks.dbnet.spec: pydantic, no torch
    spec.base, spec.metrics, spec.eval_grid_keys
    task_cls = spec.load_task()         # imports the torch code, in a trial

A task that lives outside this repository (your own package) registers itself without editing
sweeper: list its spec in `SWEEPER_TASKS` (`name=package.module:SPEC`, comma-separated). The
variable is read in the driver and, since Ray workers inherit the driver's environment, in every
trial. This module imports only the standard library and pydantic.
"""
from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: task name -> "module:ATTRIBUTE" of its TaskSpec; imported only when the task is looked up.
TASKS: dict[str, str] = {
    "detection": "sweeper.tasks.detection.spec:SPEC",
    "dbnet": "sweeper.tasks.dbnet.spec:SPEC",
    "noop": "sweeper.tasks.noop_spec:SPEC",
    "command": "sweeper.tasks.command_spec:SPEC",
}
#: extra tasks from outside the package: `name=module:ATTRIBUTE[,name=module:ATTRIBUTE...]`
TASKS_ENV = "SWEEPER_TASKS"


class Strict(BaseModel):
    """A sweep-file block: unknown keys rejected, never mutated after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainBase(Strict):
    """The `train` keys the trainable itself relies on; every task's `train` block extends it."""

    epochs: int = Field(1, ge=1, description="epochs per trial (ASHA's time unit)")
    seed: int = Field(0, description="seeds python, numpy, torch and the data order")
    batch_size: int = Field(1, ge=1, description="images per step")
    micro_batches: int = Field(1, ge=1, description="split each batch into this many micro-batches (gradient "
                               "accumulation): same effective batch and LR schedule, less memory; doubled "
                               "automatically after a CUDA out-of-memory error")
    workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="DataLoader worker processes; auto: 0 on CPU (the trial's cores train), "
        "min(4, trial CPUs - 1) on a GPU (the cores feed it)")


#: what the trainable reads from every built-in task's `train` block
TRAIN_BASE_KEYS = tuple(TrainBase.model_fields)


@dataclass(frozen=True)
class TaskSpec:
    """One task's declaration. Strings of the form "module:attribute" are imported lazily, so a
    spec never pulls in torch: `validate` and `--dry-run` stay fast."""

    name: str
    base: type[BaseModel]  # the schema of a sweep file's `base` block
    entry: str  # "module:Class" of the task (see sweeper.tasks.Task)
    description: str = ""
    data_formats: tuple[str, ...] = ()  # `data.format` values it reads, default first; () = no `data`
    seed_key: str = "train.seed"  # the key an ablation's seeds set
    metrics: tuple[str, ...] = ()  # what evaluate()/train_one_epoch() report (objective candidates)
    metric_prefixes: tuple[str, ...] = ()  # families such as `ap/<class>`
    eval_grid_keys: tuple[str, ...] = ()  # `post.*` keys scored from one forward pass
    leaderboard_columns: tuple[str, ...] = ()  # metrics the leaderboard table shows beside the objective
    detail_prefixes: tuple[str, ...] = ("train/",)  # metrics kept out of leaderboard rows (per class, curves)
    evaluator: str | None = None  # "module:function(gt, pred, options) -> metrics" for `sweeper eval`
    eval_options: dict[str, str] = field(default_factory=dict)  # `sweeper eval` option -> what it means here
    synthesize: str | None = None  # "module:function(out, *, images, size, seed) -> info" for `data synth`
    backbone_keys: tuple[str, ...] = ()  # keys naming timm backbones (checked against timm before dispatch)
    path_keys: tuple[str, ...] = ()  # `base` keys holding file paths (made absolute, checked to exist)
    checkpoint_keys: tuple[str, ...] = ()  # keys starting the model from a file or `SWEEP_NAME:best`
    open_keys: bool = False  # `base` is the script's own (command): any key, any metric
    # "module:function(ann, images, *, split, format) -> None": reads one data split as a trial
    # will, before dispatch (no torch); raises ValueError naming the data file and record
    check_data: str | None = None
    # "module:function(metric, configs, categories) -> str | None": why no trial could report
    # `metric` (an `objective` or `constraints` metric), given every trial config a sweep can make
    # and the dataset's class names (None before the data is read); None when it is reportable
    check_objective: str | None = None
    # the task trains with torch on the trial's device: a trial holding GPUs where torch sees no CUDA
    # fails (sweeper.devices.NoCudaError) instead of training on the CPU; False for tasks that need
    # no CUDA (noop; command, whose script picks its device from CUDA_VISIBLE_DEVICES)
    uses_cuda: bool = True

    def load_task(self) -> type:
        """The task class (imports its torch code)."""
        return _import(self.entry)

    def evaluate_files(self) -> Callable[..., dict[str, float]]:
        if self.evaluator is None:
            raise LookupError(f"task {self.name!r} has no evaluator for `sweeper eval`")
        return _import(self.evaluator)

    def data_checker(self) -> Callable[..., None] | None:
        """The task's pre-dispatch data check (see `check_data`), None when it has none."""
        return None if self.check_data is None else _import(self.check_data)

    def objective_checker(self) -> Callable[..., str | None] | None:
        """The task's check that a metric is reportable (see `check_objective`), None when it has none."""
        return None if self.check_objective is None else _import(self.check_objective)

    def synthesizer(self) -> Callable[..., dict[str, Any]]:
        if self.synthesize is None:
            raise LookupError(f"task {self.name!r} has no synthetic data generator")
        return _import(self.synthesize)

    def metric_known(self, metric: str) -> bool:
        """Whether this task reports `metric` (an open task reports whatever its script prints)."""
        return self.open_keys or metric in self.metrics or metric.startswith(self.metric_prefixes)

    def missing_train_keys(self) -> list[str]:
        """TrainBase keys this task's `train` block lacks: the trainable could not run it."""
        if self.open_keys:
            return []
        train = self.base.model_fields.get("train")
        have = set(train.annotation.model_fields) if train is not None and isinstance(train.annotation, type) \
            and issubclass(train.annotation, BaseModel) else set()
        return [f"train.{k}" for k in TRAIN_BASE_KEYS if k not in have]


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


_extra: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    """Add a task from code (a plugin, a test); returns it so a module can `SPEC = register(...)`."""
    _extra[spec.name] = spec
    return spec


def _env_tasks() -> dict[str, str]:
    out = {}
    for item in filter(None, (s.strip() for s in os.environ.get(TASKS_ENV, "").split(","))):
        name, sep, path = item.partition("=")
        if not sep or ":" not in path:
            raise LookupError(f"{TASKS_ENV}: expected name=module:ATTRIBUTE, got {item!r}")
        out[name.strip()] = path.strip()
    return out


def task_names() -> list[str]:
    """Every known task: the built-in ones, then registered and `SWEEPER_TASKS` ones."""
    return list(dict.fromkeys([*TASKS, *_extra, *_env_tasks()]))


def get_spec(name: str) -> TaskSpec:
    """The spec of task `name`; an unknown name lists the known ones and the closest match."""
    if name in _extra:
        return _extra[name]
    paths = {**TASKS, **_env_tasks()}
    if name not in paths:
        names = task_names()
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LookupError(f"unknown task {name!r}{hint}; known tasks: {', '.join(names)}")
    spec = _import(paths[name])
    if not isinstance(spec, TaskSpec) or spec.name != name:
        raise LookupError(f"{paths[name]} is not the TaskSpec of task {name!r}")
    return spec


def all_specs() -> list[TaskSpec]:
    return [get_spec(n) for n in task_names()]
