"""Where a search starts: `search.start_from` (points tried first) and `search.warm_start`
(earlier sweeps whose trials seed the sampler). Both live under `search:`, beside the searched
keys, as reserved names (`sweeper.spaces.RESERVED`)::

    search:
      train.lr: {loguniform: [1.0e-4, 1.0e-2]}
      model.backbone: {choice: [resnet18, resnet50]}
      start_from:                      # the first trials, in order (Optuna enqueue_trial)
        - {train.lr: 0.001, model.backbone: resnet50}
      warm_start: {sweep: lr-pilot}    # or a list: [{sweep: a}, {sweep: b}]

A start point names searched keys only, each with a value the space can take (a key it leaves
out is sampled). Warm-start sweeps are read from the tracking store by `sweeper.warm_start`,
in the driver; here only their names are checked. No torch, Ray or MLflow.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeper.config.sweep import SweepConfigError, suggest
from sweeper.schema import SweepFile
from sweeper.spaces import Dimension, outside
from sweeper.sweep_yaml import short_repr

START_FROM, WARM_START = "start_from", "warm_start"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class SearchStart:
    """The start of a search: points to try first (typed as the space's values) and the names of
    earlier sweeps to learn from."""

    start_from: tuple[dict[str, Any], ...] = ()
    warm_start: tuple[str, ...] = ()


def typed(dim: Dimension, value: Any) -> Any:
    """`value` as the sampler holds it: the matching choice, an int for randint, else a float."""
    if dim.is_categorical:
        return next(v for v in dim.values if v == value and isinstance(v, bool) == isinstance(value, bool))
    number = int(value) if dim.kind == "randint" else float(value)
    return number


def search_start(spec: SweepFile, dims: list[Dimension]) -> SearchStart:
    """The sweep's start points and warm-start sweeps (checked at load by `check_search_start`)."""
    by_key = {d.key: d for d in dims}
    points = tuple({k: typed(by_key[k], _number_text(v)) for k, v in point.items()}
                   for point in spec.search.get(START_FROM) or [])
    warm = spec.search.get(WARM_START) or []
    warm = [warm] if isinstance(warm, dict) else warm
    return SearchStart(points, tuple(dict.fromkeys(w["sweep"] for w in warm)))


def _number_text(value: Any) -> Any:
    """YAML 1.1 reads `1e-4` (no dot) as text: a number it is."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def check_search_start(file: Path, spec: SweepFile, dims: list[Dimension], num_trials: int) -> None:
    """`start_from` points inside the space, naming searched keys; `warm_start` well formed."""
    field = f"search.{START_FROM}"
    given = [k for k in (START_FROM, WARM_START) if k in spec.search]
    if given and spec.search_alg.name == "grid":
        raise SweepConfigError(file, f"search.{given[0]}", "a grid runs every point in order; start points "
                               "and warm starts need search_alg.name: optuna (or random)")
    if given and not dims:
        raise SweepConfigError(file, f"search.{given[0]}", "nothing is searched: add keys to `search`")
    points = spec.search.get(START_FROM)
    if START_FROM in spec.search:
        if not isinstance(points, list) or not points:
            raise SweepConfigError(file, field, "must be a list of points, e.g. [{train.lr: 0.001}]; got "
                                   f"{short_repr(points)}")
        if len(points) > num_trials:
            raise SweepConfigError(file, field, f"lists {len(points)} points but the sweep runs {num_trials} "
                                   "trials (budget.num_samples): the rest would never run")
        by_key = {d.key: d for d in dims}
        for i, point in enumerate(points):
            if not isinstance(point, dict) or not point:
                raise SweepConfigError(file, f"{field}[{i}]", "must be a mapping of searched keys to values, "
                                       f"e.g. {{{dims[0].key}: ...}}; got {short_repr(point)}")
            for key, value in point.items():
                where = f"{field}[{i}].{key}"
                if key not in by_key:
                    raise SweepConfigError(file, where, f"{short_repr(key)} is not searched{suggest(str(key), list(by_key))}"
                                           f"; a start point sets searched keys only ({', '.join(by_key)})")
                why = outside(by_key[key], _number_text(value))
                if why:
                    raise SweepConfigError(file, where, f"{why}: a start point must lie inside the space "
                                           f"({by_key[key].describe()})")
    if WARM_START in spec.search:
        warm = spec.search[WARM_START]
        entries = [warm] if isinstance(warm, dict) else warm
        if not isinstance(entries, list) or not entries:
            raise SweepConfigError(file, f"search.{WARM_START}", "must be {sweep: NAME} or a list of them; got "
                                   f"{short_repr(warm)}")
        for i, entry in enumerate(entries):
            where = f"search.{WARM_START}" + (f"[{i}]" if isinstance(warm, list) else "")
            if not isinstance(entry, dict) or "sweep" not in entry:
                raise SweepConfigError(file, where, f"must be {{sweep: NAME}}; got {short_repr(entry)}")
            extra = [str(k) for k in entry if k != "sweep"]
            if extra:
                raise SweepConfigError(file, f"{where}.{extra[0]}", f"unknown key{suggest(extra[0], ['sweep'])}; "
                                       "allowed here: sweep")
            if not isinstance(entry["sweep"], str) or not _NAME.fullmatch(entry["sweep"]):
                raise SweepConfigError(file, f"{where}.sweep", f"{short_repr(entry['sweep'])} is not a sweep name")
