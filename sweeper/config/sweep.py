"""The loaded sweep: one validated value, plus the dotted-key helpers every part of config uses.

`Sweep` is what `load_sweep` returns and what the runner, the trainable and tracking receive: the
sweep file's content (`spec`), the task's fully defaulted `base`, the search space and what
follows from them (trials, variants, `max_t`, the experiment path). Frozen: nothing changes it
after loading. No torch, Ray or MLflow here.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from sweeper.registry import TaskSpec, get_spec
from sweeper.schema import Objective, SweepFile
from sweeper.spaces import Dimension, ablation_points, ablation_variants, grid_size


class SweepConfigError(ValueError):
    """A user mistake in a sweep file, a fragment or an override; the message says what to do."""

    def __init__(self, file: str | os.PathLike | None, field: str | None, message: str) -> None:
        self.file, self.field, self.message = file, field, message
        where = f"{file}" if file else "sweep"
        if field:
            where += f": {field}"
        super().__init__(f"{where}: {message}")


class Sweep(BaseModel):
    """A loaded, validated sweep: the file's content plus what was derived from it."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    file: Path
    spec: SweepFile
    base: dict[str, Any]  # fully defaulted task parameters (nested)
    dimensions: list[Dimension]
    raw: dict[str, Any]  # the merged document after includes and overrides (logged to MLflow)
    overrides: tuple[str, ...] = ()  # the --set arguments, kept so `sweeper resume` reloads the same sweep
    cwd: Path = Path(".")  # the directory relative paths were resolved against
    objectives: list[Objective] = []  # all objectives; spec.objective is the first (primary)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def task(self) -> TaskSpec:
        """The task's declaration (schema, metrics, eval-grid keys, ...), from the registry."""
        return get_spec(self.spec.task)

    @property
    def max_t(self) -> int:
        """The last epoch a trial may reach: ASHA's max_t, else the planned epochs. On
        `scheduler.time_attr: time_total_s` ASHA's max_t is seconds (`asha_max_t`), not an epoch."""
        timed = self.spec.scheduler.time_attr == "time_total_s"
        rung_max = None if timed else self.spec.scheduler.max_t
        if self.spec.command is not None:
            return rung_max or self.spec.command.epochs or 1
        return rung_max or self.base["train"]["epochs"]

    @property
    def asha_max_t(self) -> int:
        """ASHA's last rung, in its `scheduler.time_attr`: epochs (steps) as `max_t`, or seconds."""
        if self.spec.scheduler.time_attr == "time_total_s" and self.spec.scheduler.max_t:
            return self.spec.scheduler.max_t
        return self.max_t

    @property
    def seed_key(self) -> str:
        abl = self.spec.ablation
        return (abl.seed_key if abl and abl.seed_key else None) or self.task.seed_key

    @property
    def variants(self) -> list[tuple[str, dict[str, Any]]]:
        """An ablation's variants: (name, changed keys), baseline first; [] for a search."""
        abl = self.spec.ablation
        if abl is None:
            return []
        base_values = {k: self.baseline_value(k) for k in abl.factors}
        return ablation_variants(abl.factors, base_values, abl.full_factorial, abl.variants)

    def baseline_value(self, key: str) -> Any:
        """What a trial that does not vary `key` gets: `data.*` from the data section, else from `base`."""
        if is_data_key(key, self.spec):
            return get_or_none(self.spec.data.model_dump(), key.removeprefix("data."))
        return get_or_none(self.base, key)

    @property
    def ablation_points(self) -> list[dict[str, Any]]:
        """Every trial of an ablation: {variant, seed, params}, seed-major."""
        abl = self.spec.ablation
        return ablation_points(self.variants, abl.seed_values, self.seed_key) if abl else []

    @property
    def num_trials(self) -> int:
        """Trials the sweep will run: a grid runs every point `num_samples` times; an ablation
        runs every variant with every seed."""
        if self.spec.ablation is not None:
            return len(self.variants) * len(self.spec.ablation.seed_values)
        if self.spec.search_alg.name == "grid":
            return grid_size(self.dimensions) * self.spec.budget.num_samples
        return self.spec.budget.num_samples

    @property
    def experiment_dir(self) -> str:
        """Where Ray keeps this sweep's state: `storage/name`, with a URI's query
        (`?endpoint_override=...&scheme=http`) kept at the end, where pyarrow reads it."""
        base, sep, query = self.spec.storage.partition("?")
        return f"{base.rstrip('/')}/{self.spec.name}{sep}{query}"


def is_data_key(key: str, spec: SweepFile) -> bool:
    """Whether a searched or ablated key addresses the sweep's `data` section (`data.train`,
    `data.fold`) rather than `base`: for a task that reads data; a command's keys are its own."""
    return key.startswith("data.") and spec.data is not None


def absolute_path(value: str, cwd: Path) -> str:
    """`value` made absolute against `cwd` (a URI is kept): paths in sweep files are relative to the
    launch directory, and trials run elsewhere. Raises ValueError/RuntimeError/OSError for a path
    the OS cannot take (a NUL byte, `~user` of no such user, a symlink loop)."""
    if "://" in value:
        return value
    return str((cwd / Path(value).expanduser()).resolve())


def suggest(word: str, options: list[str]) -> str:
    """` (did you mean 'x'?)` for the closest of `options`, else ''."""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def get_dotted(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def get_or_none(tree: dict[str, Any], dotted: str) -> Any:
    try:
        return get_dotted(tree, dotted)
    except (KeyError, TypeError):
        return None


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    tree[parts[-1]] = value


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"train.lr": ...}; the dotted keys used in MLflow params and `search`."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
