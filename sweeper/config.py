"""Sweep files: loading, `include:`, `--set` overrides, path resolution, validation.

A sweep file is validated once, here, before anything heavy starts; every mistake becomes a
`SweepConfigError` naming the file and the dotted field::

    sweep = load_sweep("sweeps/demo.yaml", overrides=["train.epochs=4", "budget.num_samples=6"])
    sweep.name, sweep.dimensions, trial_config(sweep, {"train.lr": 0.01})

Rules worth knowing:
- Unknown keys are rejected with a "did you mean"; unset optional values stay `None`.
- `include:` paths are relative to the including file; every other path (data, weights,
  storage, a sqlite tracking store) is relative to the directory you launch from, and is made
  absolute here because Ray trials run in other directories and on other nodes.
- `--set KEY=VALUE` parses VALUE as YAML. KEY is a top-level dotted key (`budget.num_samples`)
  or, as everywhere else, a key into `base` (`train.epochs`); `--set` on a searched key fixes it.
- Whatever the text, only SweepConfigError comes out (tests/test_fuzz_config.py fuzzes it): a
  mistake in an include fragment names the fragment; sizes are bounded (sweep_yaml.MAX_DEPTH,
  MAX_NODES; MAX_SEEDS, MAX_ABLATION_TRIALS here) so a typo cannot exhaust memory before anything starts.

This module imports no torch, Ray or MLflow so that `--help`, `validate` and `--dry-run` are fast.
"""
from __future__ import annotations

import copy
import difflib
import math
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from sweeper.schema import (
    TASK_BASES,
    TASK_DATA_FORMATS,
    TASK_EVAL_GRID_KEYS,
    TASK_METRIC_PREFIXES,
    TASK_METRICS,
    TASK_SEED_KEYS,
    OPEN_TASKS,
    CommandConfig,
    DataConfig,
    Objective,
    Scheduler,
    SweepFile,
    Tracking,
)
from sweeper.spaces import (
    Dimension,
    SpaceError,
    ablation_points,
    ablation_variants,
    grid_size,
    grid_values,
    parse_search,
)
from sweeper.sweep_yaml import BadYaml, parse_yaml, short_repr, user_loc


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
    def max_t(self) -> int:
        """The last epoch a trial may reach: ASHA's max_t, else the planned epochs."""
        if self.spec.command is not None:
            return self.spec.scheduler.max_t or self.spec.command.epochs or 1
        return self.spec.scheduler.max_t or self.base["train"]["epochs"]

    @property
    def seed_key(self) -> str:
        abl = self.spec.ablation
        return (abl.seed_key if abl and abl.seed_key else None) or TASK_SEED_KEYS[self.spec.task]

    @property
    def variants(self) -> list[tuple[str, dict[str, Any]]]:
        """An ablation's variants: (name, changed keys), baseline first; [] for a search."""
        abl = self.spec.ablation
        if abl is None:
            return []
        base_values = {k: _get_or_none(self.base, k) for k in abl.factors}
        return ablation_variants(abl.factors, base_values, abl.full_factorial)

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
        """Where Ray keeps this sweep's state: `storage/name` (a URI's `?query` stays at the end)."""
        base, sep, query = self.spec.storage.partition("?")
        return f"{base.rstrip('/')}/{self.spec.name}{sep}{query}"


# --------------------------------------------------------------------------- helpers
def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


#: ablation bounds: `seeds: N` builds N seeds and every variant runs with each; more than this is a typo
MAX_SEEDS, MAX_ABLATION_TRIALS = 1000, 100_000


def _raise_validation(file: Path, exc: ValidationError, model: type[BaseModel], prefix: str = "") -> None:
    errors = exc.errors()
    # a union (`objective: {...} | [...]`) reports each member's failure; the one about the
    # shape the user did not write ("should be a valid list") is noise
    shape = {"model_type", "list_type", "dict_type"}
    err = next((e for e in errors if e["type"] not in shape), errors[0])
    loc, owner = user_loc(model, tuple(err["loc"]))
    field = prefix + ".".join(loc) if loc else (prefix.rstrip(".") or None)
    if err["type"] == "extra_forbidden" and loc:
        options = list(owner.model_fields) if owner else []
        msg = f"unknown key{_suggest(loc[-1], options)}; allowed here: {', '.join(options)}"
    elif err["type"] == "missing":
        msg = "is required"
    else:
        msg = f"{err['msg']} (got {short_repr(err.get('input'))})"
    raise SweepConfigError(file, field, msg) from None


def _read_yaml(path: Path, field: str | None = None, where: Path | None = None) -> dict[str, Any]:
    """The YAML mapping in `path`; a missing file is blamed on `where` (the including file) if given."""
    if not path.is_file():
        raise SweepConfigError(where or path, field, f"{path} not found" if where else "file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SweepConfigError(path, None, f"cannot read it as UTF-8 text: {exc}") from None
    try:
        doc = parse_yaml(text)
    except BadYaml as exc:
        raise SweepConfigError(path, None, str(exc)) from None
    if not isinstance(doc, dict):
        raise SweepConfigError(path, None, "must be a YAML mapping of keys to values")
    return doc


def _check_include(file: Path, include: Any) -> list[str]:
    if include is None:
        return []
    if not isinstance(include, list) or not all(isinstance(i, str) for i in include):
        raise SweepConfigError(file, "include", f"must be a list of fragment files, got {short_repr(include)}")
    return include


def _looks_like_search_block(key: Any, value: Any) -> bool:
    """In a plain key -> space fragment: a key that is a misspelt `search:` (or `include:`).

    Searched keys are dotted (`train.lr`) and map to one space (`{choice: [...]}`); a misspelt
    block has no dot and either a name close to search/include or a mapping of spaces below it."""
    if not isinstance(key, str) or "." in key:
        return False
    if difflib.get_close_matches(key, ["search", "include"], n=1, cutoff=0.6):
        return True
    return isinstance(value, dict) and bool(value) and all(isinstance(v, dict) for v in value.values())


def _load_fragment(path: Path, stack: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, Path]]:
    """A search-space fragment: `{search: {...}, include: [...]}` or a plain key -> space map.

    Returns its spaces and, per key, the file that set it, so later errors name the fragment."""
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise SweepConfigError(stack[-1], "include", f"circular include: {chain}")
    doc = _read_yaml(path, "include", where=stack[-1])
    if "search" in doc:
        unknown = sorted(map(str, set(doc) - {"search", "include"}))
        if unknown:
            raise SweepConfigError(path, unknown[0], f"unknown key{_suggest(unknown[0], ['search', 'include'])}; "
                                   "a fragment holds only `search` and `include`")
        own = doc["search"] if doc["search"] is not None else {}
    else:
        for key, value in doc.items():
            if key != "include" and _looks_like_search_block(key, value):
                raise SweepConfigError(path, str(key), f"unknown key{_suggest(str(key), ['search', 'include'])}; "
                                       "a fragment holds `search: {dotted key: space}` (and `include`), or "
                                       "only dotted keys mapped to spaces")
        own = {k: v for k, v in doc.items() if k != "include"}
    if not isinstance(own, dict):
        raise SweepConfigError(path, "search", "must be a mapping of dotted keys to spaces")
    bad_key = next((k for k in own if not isinstance(k, str)), None)
    if bad_key is not None:
        raise SweepConfigError(path, f"search.{bad_key}", "keys must be dotted keys (text), e.g. train.lr")
    search: dict[str, Any] = {}
    origins: dict[str, Path] = {}
    for inc in _check_include(path, doc.get("include")):
        inner, inner_origins = _load_fragment(_fragment_path(path, inc), (*stack, path))
        search.update(inner)
        origins.update(inner_origins)
    search.update(own)
    origins.update(dict.fromkeys(own, path))
    return search, origins


def _get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def _get_or_none(tree: dict[str, Any], dotted: str) -> Any:
    try:
        return _get(tree, dotted)
    except (KeyError, TypeError):
        return None


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
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


def parse_override(text: str) -> tuple[str, Any]:
    """`train.lr=1e-3` -> ("train.lr", 0.001); the value is typed as YAML would type it."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][\w/]*(\.[\w/]+)*", key):
        raise SweepConfigError(None, "--set", f"expected KEY=VALUE with a dotted KEY, got {text!r}")
    try:
        parsed = parse_yaml(value) if value.strip() else None
    except BadYaml as exc:
        raise SweepConfigError(None, f"--set {key}", f"value is {exc}") from None
    if isinstance(parsed, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", parsed.strip()):
        parsed = float(parsed)  # YAML 1.1 reads 1e-3 as a string; everyone means a number
    return key, parsed


def _put(file: Path, key: str, tree: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set `tree[parts[0]]...[parts[-1]] = value` for `--set key`, creating missing mappings; a
    value on the way that is not a mapping (`--set name.x=1`) is the user's mistake, said so."""
    for i, part in enumerate(parts[:-1]):
        if tree.get(part) is None:
            tree[part] = {}
        if not isinstance(tree[part], dict):
            above = ".".join(parts[:i + 1])
            raise SweepConfigError(file, f"--set {key}", f"{above} is {short_repr(tree[part])}, not a mapping, "
                                   f"so it has no key {parts[i + 1]!r}")
        tree = tree[part]
    tree[parts[-1]] = value


def _unsearch(doc: dict[str, Any], key: str) -> None:
    """Fixing a searched key takes it out of the search."""
    if isinstance(doc.get("search"), dict):
        doc["search"].pop(key, None)


def _apply_override(path: Path, doc: dict[str, Any], base_defaults: dict[str, Any], key: str, value: Any) -> None:
    top = key.split(".", 1)[0]
    if top in ("search", "eval_grid") and "." in key:
        _put(path, key, doc, key.split(".", 1), value)
        return
    if top in SweepFile.model_fields:
        _put(path, key, doc, key.split("."), value)
        return
    # a key into `base`, written as everywhere else (train.epochs)
    if doc.get("task") not in OPEN_TASKS:  # the script's own keys (command task): we cannot know them
        try:
            _get(base_defaults, key)
        except (KeyError, TypeError):
            options = list(flatten(base_defaults)) + list(SweepFile.model_fields)
            raise SweepConfigError(path, f"--set {key}", f"no such key{_suggest(key, options)}") from None
    _put(path, key, doc, ["base", *key.split(".")], value)
    _unsearch(doc, key)


def _resolve_path(value: str, cwd: Path, file: Path, field: str) -> str:
    """`value` made absolute against `cwd` (a URI is kept); a path the OS cannot take (a NUL byte,
    `~user` of no such user, a symlink loop) is the user's mistake in `field`."""
    if "://" in value:
        return value
    try:
        return str((cwd / Path(value).expanduser()).resolve())
    except (ValueError, RuntimeError, OSError) as exc:
        raise SweepConfigError(file, field, f"{short_repr(value)} is not a usable path: {exc}") from None


def _fragment_path(includer: Path, inc: str) -> Path:
    """An `include:` entry, relative to the file that includes it."""
    try:
        return (includer.parent / inc).resolve()
    except (ValueError, RuntimeError, OSError) as exc:
        raise SweepConfigError(includer, "include", f"{short_repr(inc)} is not a usable path: {exc}") from None


def resolve_tracking_uri(uri: str, cwd: Path) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((cwd / uri[len("sqlite:///"):]).resolve())
    if "://" not in uri:  # a plain directory (file store)
        return str((cwd / uri).resolve())
    return uri


# --------------------------------------------------------------------------- loading
def load_sweep(path: str | os.PathLike, overrides: list[str] | None = None, *,
               cwd: str | os.PathLike | None = None, check_data: bool = True) -> Sweep:
    """Load, merge, override, resolve and validate a sweep file; raise SweepConfigError."""
    file = Path(path).expanduser().resolve()
    cwd = Path(cwd or os.getcwd()).resolve()
    doc = _read_yaml(file)

    # `--set task=...` first: the task decides which other keys exist
    sets = [parse_override(text) for text in overrides or []]
    task_sets = [(k, v) for k, v in sets if k.split(".", 1)[0] == "task"]
    for key, value in task_sets:
        _apply_override(file, doc, {}, key, value)
    task = doc.get("task")
    if not isinstance(task, str) or task not in TASK_BASES:
        raise SweepConfigError(file, "--set task" if task_sets else "task",
                               f"unknown task {short_repr(task)}{_suggest(str(task), list(TASK_BASES))}; "
                               f"known tasks: {', '.join(TASK_BASES)}")
    base_model = TASK_BASES[task]
    base_defaults = base_model().model_dump()
    for key, value in sets:
        if key.split(".", 1)[0] != "task":
            _apply_override(file, doc, base_defaults, key, value)

    includes = _check_include(file, doc.get("include"))
    if not isinstance(doc.get("search", {}) or {}, dict):
        raise SweepConfigError(file, "search", "must be a mapping of dotted keys to spaces")
    raw_base = doc.get("base") or {}
    if not isinstance(raw_base, dict):
        raise SweepConfigError(file, "base", f"must be a mapping of the task's settings, e.g. "
                               f"{{train: {{epochs: 4}}}}; got {short_repr(raw_base)}")
    search: dict[str, Any] = {}
    origins: dict[str, Path] = {}  # searched key -> the fragment that set it
    for inc in includes:
        frag = _fragment_path(file, inc)
        if not frag.is_file():
            raise SweepConfigError(file, "include", f"fragment {inc!r} not found (looked at {frag})")
        inner, inner_origins = _load_fragment(frag, (file,))
        search.update(inner)
        origins.update(inner_origins)
    own = doc.get("search") or {}
    search.update(own)
    for key in own:
        origins.pop(key, None)
    for key in [k for k in search if k in flatten(raw_base)]:
        if any(o.split("=", 1)[0].strip() == key for o in overrides or []):
            search.pop(key)
        else:
            raise SweepConfigError(file, f"search.{key}", "is both fixed in `base` and searched; "
                                   "remove it from one of them")
    doc = {**doc, "search": search}

    try:
        spec = SweepFile.model_validate(doc)
    except ValidationError as exc:
        _raise_validation(file, exc, SweepFile)
    try:
        base = base_model.model_validate(raw_base).model_dump()
    except ValidationError as exc:
        _raise_validation(file, exc, base_model, prefix="base.")

    objectives = list(spec.objective) if isinstance(spec.objective, list) else [spec.objective]
    if not objectives:
        raise SweepConfigError(file, "objective", "needs a metric (and mode), or a list of them")
    if len({o.metric for o in objectives}) != len(objectives):
        raise SweepConfigError(file, "objective", "lists a metric twice")
    if len(objectives) > 1 and spec.ablation is None and spec.search_alg.name != "optuna":
        raise SweepConfigError(file, "search_alg.name", "a multi-objective search needs Optuna (name: optuna)")
    spec = spec.model_copy(update={"objective": objectives[0]})
    _check_task_sections(file, spec)
    formats = TASK_DATA_FORMATS[spec.task]
    if spec.data is not None and spec.data.format is not None and spec.data.format not in formats:
        raise SweepConfigError(file, "data.format", f"task {spec.task!r} reads {' or '.join(formats)}, "
                               f"not {spec.data.format!r}")
    dims = _check_search(file, spec, base_model, base, origins)
    if spec.ablation is not None:
        _check_ablation(file, spec, base_model, base)
        if "scheduler" not in doc:  # early stopping would bias a controlled comparison
            spec = spec.model_copy(update={"scheduler": Scheduler(name="fifo")})
    _check_eval_grid(file, spec, base_model, base)
    for i, objective in enumerate(objectives):
        _check_objective(file, spec.model_copy(update={"objective": objective}),
                         "objective" if len(objectives) == 1 else f"objective[{i}].metric")
    _check_budget(file, spec, dims, base)

    # paths become absolute: trials run elsewhere
    update: dict[str, Any] = {
        "storage": _resolve_path(spec.storage, cwd, file, "storage"),
    }
    try:
        update["tracking"] = Tracking(uri=resolve_tracking_uri(spec.tracking.uri, cwd))
    except (ValueError, RuntimeError, OSError) as exc:
        raise SweepConfigError(file, "tracking.uri", f"{short_repr(spec.tracking.uri)} is not usable: {exc}") from None
    if spec.command is not None:
        update["command"] = _resolve_command(file, spec.command, cwd, check_data)
    if spec.data is not None:
        update["data"] = _resolve_data(file, spec, cwd, check_data)
    # (a command script's own `model` key may be anything: `model: unet`)
    if spec.task not in OPEN_TASKS and isinstance(base.get("model"), dict) and base["model"].get("weights"):
        base["model"]["weights"] = _resolve_path(base["model"]["weights"], cwd, file, "base.model.weights")
        if check_data and not Path(base["model"]["weights"]).is_file():
            raise SweepConfigError(file, "base.model.weights", f"{base['model']['weights']} not found")
    spec = spec.model_copy(update=update)
    raw = copy.deepcopy(doc)
    raw.pop("include", None)
    return Sweep(file=file, spec=spec, base=base, dimensions=dims, raw=raw, overrides=tuple(overrides or ()),
                 cwd=cwd, objectives=objectives)


def _resolve_data(file: Path, spec: SweepFile, cwd: Path, check_data: bool) -> DataConfig:
    assert spec.data is not None
    data = spec.data.model_dump()
    data["format"] = data["format"] or TASK_DATA_FORMATS[spec.task][0]
    for key in ("train", "val", "images"):
        data[key] = _resolve_path(data[key], cwd, file, f"data.{key}")
    if check_data and spec.data.synth is None:
        for key in ("train", "val", "images"):
            if not Path(data[key]).exists():
                raise SweepConfigError(file, f"data.{key}", f"{data[key]} does not exist; point it at "
                                       "your dataset (--set data.train=... --set data.val=... --set "
                                       "data.images=...), make synthetic data there (sweeper data synth "
                                       f"--task {spec.task} --out DIR), or add `data: {{synth: {{}}}}` "
                                       "to generate it on first launch")
    return DataConfig.model_validate(data)


def _resolve_command(file: Path, command: CommandConfig, cwd: Path, check: bool) -> CommandConfig:
    """`workdir` absolute (trials run elsewhere) and present; relative metric files under it."""
    workdir = Path(_resolve_path(command.workdir, cwd, file, "command.workdir"))
    if check and not workdir.is_dir():
        raise SweepConfigError(file, "command.workdir", f"{workdir} is not a directory; point it at "
                               "the directory your training command runs in")
    metrics = command.metrics
    kind, _, path = metrics.partition(":")
    try:
        if path and not path.startswith("{trial_dir}") and not Path(path).expanduser().is_absolute():
            metrics = f"{kind}:{workdir / path}"
        elif path:
            metrics = f"{kind}:{Path(path).expanduser()}" if not path.startswith("{") else metrics
    except RuntimeError as exc:  # ~user of no such user
        raise SweepConfigError(file, "command.metrics", f"{short_repr(path)} is not a usable path: {exc}") from None
    return command.model_copy(update={"workdir": str(workdir), "metrics": metrics})


def _check_task_sections(file: Path, spec: SweepFile) -> None:
    """Built-in tasks read `data`; the command task runs `command` and reads no data of ours."""
    if spec.task in OPEN_TASKS:
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
        raise SweepConfigError(file, "command", f"only task 'command' runs a command; task {spec.task!r} "
                               "trains its own model")
    reads_data = bool(TASK_DATA_FORMATS[spec.task])
    if spec.data is None and reads_data:
        raise SweepConfigError(file, "data", f"task {spec.task!r} needs a `data` section (train, val, images)")
    if spec.data is not None and not reads_data:
        raise SweepConfigError(file, "data", f"task {spec.task!r} reads no data; remove `data`")


def _check_value(file: Path, field: str, base_model: type[BaseModel], base: dict[str, Any],
                 key: str, value: Any) -> None:
    trial = copy.deepcopy(base)
    _set(trial, key, value)
    try:
        base_model.model_validate(trial)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SweepConfigError(file, field, f"value {value!r} does not fit {key}: {err['msg']}") from None


def _check_key(file: Path, field: str, base: dict[str, Any], key: str) -> None:
    flat = flatten(base)
    if key not in flat:
        raise SweepConfigError(file, field, f"{key!r} is not a key of `base`{_suggest(key, list(flat))}")


def _check_search(file: Path, spec: SweepFile, base_model: type[BaseModel], base: dict[str, Any],
                  origins: dict[str, Path]) -> list[Dimension]:
    """The search space; an error about a key an include fragment set names that fragment."""
    try:
        dims = parse_search(spec.search)
    except SpaceError as exc:
        field, _, msg = str(exc).partition(": ")
        raise SweepConfigError(origins.get(field.removeprefix("search."), file), field, msg) from None
    for d in dims:
        if spec.task in OPEN_TASKS:
            continue  # the script's keys: only the script can check them
        where = origins.get(d.key, file)
        _check_key(where, f"search.{d.key}", base, d.key)
        for value in d.representative_values():
            _check_value(where, f"search.{d.key}", base_model, base, d.key, value)
        if d.kind == "grid" and spec.search_alg.name != "grid":
            raise SweepConfigError(file, f"search.{d.key}", "`grid` needs `search_alg: {name: grid}`; "
                                   "with Optuna or random search use `choice`")
    if spec.search_alg.name == "grid":
        try:
            grid_values(dims)
        except SpaceError as exc:
            raise SweepConfigError(file, "search_alg.name", str(exc)) from None
    return dims


def _check_eval_grid(file: Path, spec: SweepFile, base_model: type[BaseModel], base: dict[str, Any]) -> None:
    allowed = TASK_EVAL_GRID_KEYS.get(spec.task, ())
    if spec.eval_grid and (spec.objective.mode != "max" or spec.objective.metric.startswith("train/")):
        raise SweepConfigError(file, "eval_grid", "the grid point is chosen by the objective, so it needs "
                               "an evaluation metric with mode max (e.g. map50)")
    for key, values in spec.eval_grid.items():
        field = f"eval_grid.{key}"
        if key not in allowed:
            raise SweepConfigError(file, field, f"task {spec.task!r} sweeps only {', '.join(allowed) or 'nothing'} "
                                   f"at evaluation{_suggest(key, list(allowed))}")
        if not values:
            raise SweepConfigError(file, field, "needs a non-empty list of values")
        if key in spec.search:
            raise SweepConfigError(file, field, "is also in `search`: sweep it at evaluation or by training, not both")
        for value in values:
            _check_value(file, field, base_model, base, key, value)


def metric_known(task: str, metric: str, eval_grid: bool = False) -> bool:
    """Whether `task` reports `metric` (used to check the objective before anything runs)."""
    if task in OPEN_TASKS:
        return True
    if eval_grid and metric.startswith("default/"):
        metric = metric[len("default/"):]
    return metric in TASK_METRICS[task] or metric.startswith(TASK_METRIC_PREFIXES.get(task, ()))


def _check_objective(file: Path, spec: SweepFile, field: str = "objective") -> None:
    assert isinstance(spec.objective, Objective)
    if field == "objective":
        field = "objective.metric"
    if not metric_known(spec.task, spec.objective.metric, bool(spec.eval_grid)):
        known = list(TASK_METRICS[spec.task])
        prefixes = ", ".join(f"{p}<name>" for p in TASK_METRIC_PREFIXES.get(spec.task, ()))
        raise SweepConfigError(file, field, f"task {spec.task!r} does not report "
                               f"{spec.objective.metric!r}{_suggest(spec.objective.metric, known)}; "
                               f"it reports {', '.join(known)}" + (f", {prefixes}" if prefixes else ""))


def _check_ablation(file: Path, spec: SweepFile, base_model: type[BaseModel], base: dict[str, Any]) -> None:
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
    seed_key = abl.seed_key or TASK_SEED_KEYS[spec.task]
    if spec.task not in OPEN_TASKS:
        _check_key(file, "ablation.seed_key", base, seed_key)
    for key, values in abl.factors.items():
        field = f"ablation.factors.{key}"
        if key == seed_key:
            raise SweepConfigError(file, field, "is the seed key; seeds come from `ablation.seeds`")
        if not isinstance(values, list) or not values:
            raise SweepConfigError(file, field, "needs a non-empty list of values to compare with the baseline")
        if spec.task not in OPEN_TASKS:
            _check_key(file, field, base, key)
            for value in values:
                _check_value(file, field, base_model, base, key, value)
        base_value = _get_or_none(base, key)
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


def _check_budget(file: Path, spec: SweepFile, dims: list[Dimension], base: dict[str, Any]) -> None:
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


def trial_config(sweep: Sweep, params: dict[str, Any]) -> dict[str, Any]:
    """The nested config one trial's task receives: `base` with the trial's values applied."""
    cfg = copy.deepcopy(sweep.base)
    for key, value in params.items():
        _set(cfg, key, value)
    cfg["task"] = sweep.spec.task
    if sweep.spec.task in OPEN_TASKS:
        return cfg
    cfg["data"] = sweep.spec.data.model_dump() if sweep.spec.data is not None else None
    cfg["eval_grid"] = dict(sweep.spec.eval_grid)
    cfg["objective_metric"] = sweep.spec.objective.metric.removeprefix("default/")
    return cfg


#: names whose values are never logged or printed: tokens, secrets, passwords, credentials, API keys
SECRET_NAME = re.compile(r"token|secret|passw(or)?d|credential|(^|[./])key$|(api|access|private|auth)[_-]?key$",
                         re.IGNORECASE)
REDACTED = "***"


def redact(tree: Any) -> Any:
    """A copy of `tree` with the values of secret-looking keys (SECRET_NAME) replaced by ***."""
    if isinstance(tree, dict):
        return {k: REDACTED if isinstance(k, str) and SECRET_NAME.search(k) else redact(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    return tree


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's own values as dotted keys, from the config Ray hands the trial: the searched
    values, or an ablation point's changed keys plus its seed."""
    if "ablation" in config and isinstance(config["ablation"], dict):
        return dict(config["ablation"]["params"])
    return dict(config)


def script_params(sweep: Sweep, params: dict[str, Any]) -> dict[str, Any]:
    """What a command trial passes to its script: `base` with the trial's values, as dotted keys."""
    cfg = copy.deepcopy(sweep.base)
    for key, value in params.items():
        _set(cfg, key, value)
    return flatten(cfg)
