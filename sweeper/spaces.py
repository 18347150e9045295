"""Search-space DSL: the `search:` block of a sweep file, parsed once into typed dimensions.

Grammar (one entry per dotted key into `base`)::

    train.lr:         {loguniform: [1.0e-4, 3.0e-3]}   # float, log scale, low > 0
    train.momentum:   {uniform: [0.8, 0.99]}           # float, linear
    train.batch_size: {choice: [4, 8]}                  # categorical (scalars only)
    train.epochs:     {randint: [4, 12]}                # int, both ends inclusive; [lo, hi, step] allowed
    train.hflip:      {quniform: [0.0, 1.0, 0.25]}      # float on a grid of `step`
    model.backbone:   {grid: [resnet18, resnet34]}      # every value; only with `search_alg: grid`

`parse_space` validates one entry; `to_optuna` turns parsed dimensions into Optuna distributions
(the searcher is always Optuna: TPE, random or grid sampler), so the same grammar serves every
search algorithm. This module imports no torch or Ray; Optuna is imported only by `to_optuna`.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

KINDS = ("choice", "grid", "uniform", "loguniform", "randint", "quniform")
SCALAR_TYPES = (str, int, float, bool, type(None))


class SpaceError(ValueError):
    """A malformed search-space entry; the caller adds the file and the dotted key."""


@dataclass(frozen=True)
class Dimension:
    """One searched key: `kind` is one of KINDS; `values` for choice/grid, else low/high/step."""

    key: str
    kind: str
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None

    @property
    def is_categorical(self) -> bool:
        return self.kind in ("choice", "grid")

    def describe(self) -> str:
        """Human-readable form used by `--dry-run`."""
        if self.is_categorical:
            return f"{self.kind} {list(self.values)}"
        step = f" step {self.step:g}" if self.step is not None else ""
        return f"{self.kind} [{self.low:g}, {self.high:g}]{step}"

    def representative_values(self) -> list[Any]:
        """Values that a trial may receive (used to type-check them against `base`)."""
        if self.is_categorical:
            return list(self.values)
        if self.kind == "randint":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]


def _number(value: Any, what: str) -> float:
    if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
        try:
            value = int(value) if value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpaceError(f"{what} must be a finite number, got {value!r}")
    return value


def parse_space(key: str, spec: Any) -> Dimension:
    """Parse one `search:` entry such as ``{loguniform: [1e-4, 1e-2]}`` into a Dimension."""
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SpaceError(
            f"expected a mapping with exactly one of {', '.join(KINDS)}, e.g. "
            f"'{{choice: [4, 8]}}'; got {spec!r}"
        )
    (kind, args), = spec.items()
    if kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(str(kind), KINDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpaceError(f"unknown search kind {kind!r}{hint}; use one of {', '.join(KINDS)}")
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise SpaceError(f"{kind} needs a non-empty list of values, got {args!r}")
        for value in args:
            if not isinstance(value, SCALAR_TYPES):
                raise SpaceError(
                    f"{kind} values must be scalars (str, number, bool, null), got {value!r}"
                )
        if len(set(map(repr, args))) != len(args):
            raise SpaceError(f"{kind} lists a value twice: {args!r}")
        return Dimension(key, kind, values=tuple(args))

    expected = "[low, high, step]" if kind == "quniform" else "[low, high] or [low, high, step]"
    if not isinstance(args, list) or len(args) not in ((3,) if kind == "quniform" else (2, 3)):
        raise SpaceError(f"{kind} needs {expected}, got {args!r}")
    if kind == "loguniform" and len(args) != 2:
        raise SpaceError(f"loguniform needs [low, high], got {args!r}")
    low = _number(args[0], f"{kind} low")
    high = _number(args[1], f"{kind} high")
    step = _number(args[2], f"{kind} step") if len(args) == 3 else None
    if low >= high:
        raise SpaceError(f"{kind} needs low < high, got low={low!r} high={high!r}")
    if not math.isfinite(float(high) - float(low)):  # a sampler draws low + u * (high - low)
        raise SpaceError(f"{kind} range [{low}, {high}] is wider than a float can hold; narrow it")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(f"loguniform needs low > 0 (a log scale), got low={low!r}")
    if kind == "randint":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high, step or 1)):
            raise SpaceError(f"randint bounds and step must be integers, got {args!r}")
    if step is not None:
        if step <= 0:
            raise SpaceError(f"{kind} step must be > 0, got {step!r}")
        n_steps = (high - low) / step
        if not math.isfinite(n_steps) or n_steps > 1e9:
            raise SpaceError(f"{kind} range [{low}, {high}] has too many steps of {step} "
                             f"({n_steps:.3g}); use a larger step or no step")
        if abs(n_steps - round(n_steps)) > 1e-9:
            raise SpaceError(
                f"{kind} range [{low}, {high}] is not a whole number of steps of {step}"
            )
    return Dimension(key, kind, low=low, high=high, step=step)


#: names in `search:` that are not searched keys: where the search starts (sweeper.config.search_start)
RESERVED = ("start_from", "warm_start")


def parse_search(search: dict[str, Any]) -> list[Dimension]:
    """Parse a whole `search:` block (its RESERVED entries aside); errors carry the dotted key as a prefix."""
    dims = []
    for key, spec in search.items():
        if key in RESERVED:
            continue
        try:
            dims.append(parse_space(key, spec))
        except SpaceError as exc:
            raise SpaceError(f"search.{key}: {exc}") from None
    return dims


def outside(dim: Dimension, value: Any) -> str | None:
    """Why `value` is not a value `dim` can take (None when it is): a start point or an imported
    trial must be a point the sampler could have proposed, or Optuna refuses it mid-sweep."""
    if dim.is_categorical:
        same = any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in dim.values)
        return None if same else f"{value!r} is not one of {list(dim.values)}"
    try:
        number = _number(value, dim.key)
    except SpaceError:
        return f"{value!r} is not a number"
    if dim.kind == "randint" and (not isinstance(number, int) or isinstance(number, bool)):
        return f"{value!r} is not an integer"
    if not dim.low <= number <= dim.high:
        return f"{value!r} is outside [{dim.low:g}, {dim.high:g}]"
    if dim.step is not None:
        n = (number - dim.low) / dim.step
        if abs(n - round(n)) > 1e-6:
            return f"{value!r} is not on the grid of step {dim.step:g} from {dim.low:g}"
    return None


def to_optuna(dims: list[Dimension]) -> dict[str, Any]:
    """Optuna distributions keyed by the dotted key (for `study.ask(fixed_distributions=...)`)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for d in dims:
        if d.is_categorical:
            out[d.key] = CategoricalDistribution(list(d.values))
        elif d.kind == "randint":
            out[d.key] = IntDistribution(int(d.low), int(d.high), step=int(d.step or 1))
        elif d.kind == "loguniform":
            out[d.key] = FloatDistribution(d.low, d.high, log=True)
        else:  # uniform, quniform
            out[d.key] = FloatDistribution(d.low, d.high, step=d.step)
    return out


def grid_values(dims: list[Dimension]) -> dict[str, list[Any]]:
    """Values per key for a grid search; every dimension must be categorical."""
    bad = [d.key for d in dims if not d.is_categorical]
    if bad:
        raise SpaceError(
            f"search_alg grid needs `grid` (or `choice`) values for every key; "
            f"ranges given for: {', '.join(bad)}"
        )
    return {d.key: list(d.values) for d in dims}


def grid_size(dims: list[Dimension]) -> int:
    """Number of points in the full grid (product of the value counts)."""
    return math.prod(len(d.values) for d in dims) if dims else 1


def grid_points(dims: list[Dimension]) -> list[dict[str, Any]]:
    """Every grid point, in a stable order (for `--dry-run`)."""
    values = grid_values(dims)
    return [dict(zip(values, combo)) for combo in itertools.product(*values.values())]


def example_points(dims: list[Dimension], n: int, *, grid: bool = False, seed: int | None = 0) -> list[dict[str, Any]]:
    """The first `n` points a sweep would try, for `--dry-run`: grid points in order, else a
    seeded random draw (what Optuna's TPE samples before it has results to model)."""
    if not dims:
        return [{}]
    if grid:
        return grid_points(dims)[:n]
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    dists = to_optuna(dims)
    return [study.ask(dists).params for _ in range(n)]


# --------------------------------------------------------------------------- ablations
BASELINE = "baseline"


def _fmt(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def ablation_variants(factors: dict[str, list[Any]], base_values: dict[str, Any],
                      full_factorial: bool = False,
                      named: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(name, changes) per variant, baseline first. One factor at a time: each value of each
    factor alone against `base`, then each named variant (`ablation.variants`: keys changed
    together) alone; full factorial: every combination of base and factor values, each with the
    baseline or one named variant (named variants are the values of one more factor, so two of
    them never combine). A variant's changes are exactly the keys it names, so it differs from
    the baseline in them only."""
    named = named or {}
    variants: list[tuple[str, dict[str, Any]]] = [(BASELINE, {})]
    if not full_factorial:
        for key, values in factors.items():
            for value in values:
                variants.append((f"{key}={_fmt(value)}", {key: value}))
        variants += [(name, dict(changes)) for name, changes in named.items()]
        return variants
    keys = list(factors)
    options = [[(False, base_values.get(k))] + [(True, v) for v in factors[k]] for k in keys]
    for recipe in [None, *named]:
        for combo in itertools.product(*options):
            changes = {k: v for k, (changed, v) in zip(keys, combo) if changed}
            parts = [f"{k}={_fmt(v)}" for k, v in changes.items()]
            if recipe is not None:
                changes, parts = {**named[recipe], **changes}, [recipe, *parts]
            if changes:
                variants.append((",".join(parts), changes))
    return variants


def ablation_points(variants: list[tuple[str, dict[str, Any]]], seeds: list[int],
                    seed_key: str) -> list[dict[str, Any]]:
    """Every (variant, seed) trial, seed-major: the first results already cover every variant."""
    return [{"variant": name, "seed": seed, "params": {**changes, seed_key: seed}}
            for seed in seeds for name, changes in variants]


#: the key of the held-out fold (`data.fold`): as an ablation factor, a unit results pair by
FOLD_KEY = "data.fold"


def without_factor(variant: str, key: str, values: list[Any]) -> tuple[str, Any]:
    """(the variant's name without `key`'s part, the value that part named, or None): an ablation
    whose factor is `key` = data.fold, read as one variant per recipe over every fold."""
    if variant == BASELINE:
        return variant, None
    parts = variant.split(",")
    for value in values:
        part = f"{key}={_fmt(value)}"
        if part in parts:
            rest = [p for p in parts if p != part]
            return (",".join(rest) or BASELINE), value
    return variant, None
