"""Loading a sweep file: YAML, `include:` fragments, `--set` overrides, paths made absolute.

    sweep = load_sweep("sweeps/demo.yaml", overrides=["train.epochs=4", "budget.num_samples=6"])

Rules worth knowing:
- Unknown keys are rejected with a "did you mean"; unset optional values stay `None`.
- `include:` paths are relative to the including file; every other path (data, weights,
  storage, a sqlite tracking store) is relative to the directory you launch from, and is made
  absolute here because Ray trials run in other directories and on other nodes.
- `--set KEY=VALUE` parses VALUE as YAML. KEY is a top-level dotted key (`budget.num_samples`)
  or, as everywhere else, a key into `base` (`train.epochs`); `--set` on a searched key fixes it.
- Whatever the text, only SweepConfigError comes out (tests/test_fuzz_config.py fuzzes it): a
  mistake in an include fragment names the fragment; sizes are bounded (sweep_yaml.MAX_DEPTH,
  MAX_NODES; checks.MAX_SEEDS, MAX_ABLATION_TRIALS) so a typo cannot exhaust memory before anything starts.
"""
from __future__ import annotations

import copy
import difflib
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sweeper.config import checks, sampling, search_start, secret_keys, study_storage
from sweeper.config.grace import resolve_grace_period
from sweeper.config.sweep import (Sweep, SweepConfigError, flatten, get_dotted, get_or_none, is_data_key, set_dotted,
                                  suggest)
from sweeper.config.promote import check_promote
from sweeper.config.reportable import check_reportable
from sweeper.config.trial import DATA_PATH_KEYS
from sweeper.registry import TaskSpec, get_spec, task_names
from sweeper.schema import Ablation, CommandConfig, DataConfig, Scheduler, SweepFile, Tracking
from sweeper.spaces import Dimension
from sweeper.sweep_yaml import BadYaml, parse_yaml, short_repr, user_loc


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
        msg = f"unknown key{suggest(loc[-1], options)}; allowed here: {', '.join(options)}"
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
            raise SweepConfigError(path, unknown[0], f"unknown key{suggest(unknown[0], ['search', 'include'])}; "
                                   "a fragment holds only `search` and `include`")
        own = doc["search"] if doc["search"] is not None else {}
    else:
        for key, value in doc.items():
            if key != "include" and _looks_like_search_block(key, value):
                raise SweepConfigError(path, str(key), f"unknown key{suggest(str(key), ['search', 'include'])}; "
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


def _apply_override(path: Path, doc: dict[str, Any], base_defaults: dict[str, Any] | None, key: str,
                    value: Any) -> None:
    """Apply one `--set`; `base_defaults` is None for a task whose keys are the script's own."""
    top = key.split(".", 1)[0]
    if top in ("search", "eval_grid") and "." in key:
        _put(path, key, doc, key.split(".", 1), value)
        return
    # ablation.factors.KEY and ablation.variants.NAME.KEY: KEY is one dotted key, as in the file
    nested = re.fullmatch(r"ablation\.(factors)\.(.+)|ablation\.(variants)\.([^.]+)\.(.+)", key)
    if nested:
        _put(path, key, doc, ["ablation", *filter(None, nested.groups())], value)
        return
    if top in SweepFile.model_fields:
        _put(path, key, doc, key.split("."), value)
        if top == "data":  # as for a key into `base`: fixing a searched data key takes it out of the search
            _unsearch(doc, key)
        return
    # a key into `base`, written as everywhere else (train.epochs)
    if base_defaults is not None:  # (an open task's keys are the script's own: we cannot know them)
        try:
            get_dotted(base_defaults, key)
        except (KeyError, TypeError):
            options = list(flatten(base_defaults)) + list(SweepFile.model_fields)
            raise SweepConfigError(path, f"--set {key}", f"no such key{suggest(key, options)}") from None
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


def _absolute(value: Any, cwd: Path, file: Path, field: str) -> Any:
    """A path key's value made absolute: a path, or each file of a `{name: path}` mapping (a
    weights file per backbone); anything else (None, a number a check refuses) as it is."""
    if isinstance(value, str) and value:
        return _resolve_path(value, cwd, file, field)
    if isinstance(value, dict):
        return {k: _absolute(v, cwd, file, f"{field}.{k}") for k, v in value.items()}
    return value


def _resolve_path_keys(file: Path, task: TaskSpec, spec: SweepFile, base: dict[str, Any], dims: list[Dimension],
                       cwd: Path) -> tuple[list[Dimension], Ablation | None]:
    """The task's path keys made absolute where `base` holds a mapping, and in searched choices
    and ablation factor values (a trial gets those instead of `base`'s); `base` is changed in
    place, the dimensions and the ablation returned (None: no ablation changed)."""
    for key in task.path_keys:
        value = get_or_none(base, key)
        if isinstance(value, dict):
            set_dotted(base, key, _absolute(value, cwd, file, f"base.{key}"))
    dims = [replace(d, values=tuple(_absolute(v, cwd, file, f"search.{d.key}") for v in d.values))
            if d.key in task.path_keys and d.is_categorical else d for d in dims]
    abl = spec.ablation
    named_keys = {k for changes in abl.variants.values() for k in changes} if abl is not None else set()
    if abl is None or not (set(abl.factors) | named_keys) & set(task.path_keys):
        return dims, None
    factors = {k: [_absolute(v, cwd, file, f"ablation.factors.{k}") for v in values] if k in task.path_keys
               else values for k, values in abl.factors.items()}
    named = {n: {k: _absolute(v, cwd, file, f"ablation.variants.{n}.{k}") if k in task.path_keys else v
                 for k, v in changes.items()} for n, changes in abl.variants.items()}
    return dims, abl.model_copy(update={"factors": factors, "variants": named})


def _check_path_keys(sweep: Sweep) -> None:
    """Every path a task's path key may take exists: `base`'s (a file or a directory, or a
    mapping's files), searched choices' and ablation factor values'."""
    def check(value: Any, field: str) -> None:
        if isinstance(value, dict):
            for name, path in value.items():
                if isinstance(path, str) and path and not Path(path).is_file():
                    raise SweepConfigError(sweep.file, f"{field}.{name}", f"{path} not found")
        elif isinstance(value, str) and value and not Path(value).exists():
            raise SweepConfigError(sweep.file, field, f"{value} not found")

    abl = sweep.spec.ablation
    for key in sweep.task.path_keys:
        check(get_or_none(sweep.base, key), f"base.{key}")
        for d in sweep.dimensions:
            for value in d.values if d.key == key else ():
                check(value, f"search.{key}")
        for value in abl.factors.get(key, []) if abl is not None else ():
            check(value, f"ablation.factors.{key}")
        for name, changes in abl.variants.items() if abl is not None else ():
            if key in changes:
                check(changes[key], f"ablation.variants.{name}.{key}")


def _fragment_path(includer: Path, inc: str) -> Path:
    """An `include:` entry, relative to the file that includes it."""
    try:
        return (includer.parent / inc).resolve()
    except (ValueError, RuntimeError, OSError) as exc:
        raise SweepConfigError(includer, "include", f"{short_repr(inc)} is not a usable path: {exc}") from None


def resolve_tracking_uri(uri: str, cwd: Path) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((cwd / uri[len("sqlite:///"):]).resolve())
    if "://" not in uri:  # a plain directory (file store): refused by check_tracking_uri
        return str((cwd / uri).resolve())
    return uri


#: tracking stores MLflow 3.17 writes: a database (SQLAlchemy URL) or a tracking server
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


def check_tracking_uri(uri: str) -> str | None:
    """Why MLflow cannot use `uri` as this sweep's tracking store; None if it can. A directory
    (MLflow's file store) is refused by the pinned MLflow ("maintenance mode") in the middle of a
    launch, so it is refused here, with the database form to use instead."""
    scheme, sep, rest = uri.partition("://")
    if not sep and re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", uri):  # `sqlite:/x`, `http:host`
        return (f"{uri} is not a URI MLflow reads: write SCHEME://..., e.g. sqlite:///mlruns.db (three slashes) "
                "or http://HOST:PORT")
    if not sep or scheme == "file":
        path = rest if sep else uri
        return (f"{uri} is a directory (MLflow's file store), which MLflow 3.17 no longer writes; use a "
                f"database in it, e.g. sqlite:///{Path(path) / 'mlruns.db'}, or a tracking server (http://...)")
    base = scheme.split("+", 1)[0]  # postgresql+psycopg2://...
    if base not in TRACKING_SCHEMES:
        return f"unknown scheme {scheme!r}; use sqlite:///PATH, postgresql://..., mysql://... or http(s)://HOST:PORT"
    if base == "sqlite" and not rest.startswith("/"):
        return "a sqlite store is sqlite:///PATH (three slashes, then a relative or absolute path)"
    if base in ("http", "https") and not rest.split("/", 1)[0]:
        return f"{uri} names no host; use {base}://HOST:PORT"
    return None


def _storage_problem(storage: str) -> str | None:
    """Why a local `storage` cannot hold experiments (a file, a directory we may not write);
    None for object storage, which Ray checks when it connects."""
    if "://" in storage and not storage.startswith("file://"):
        return None
    path = Path(storage.removeprefix("file://"))
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a directory for Ray's experiments; point storage at a directory"
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this user, so {path} cannot hold the sweep's experiments"
    return None


#: `SWEEP_NAME:best` in a checkpoint key: resolved by the driver (sweeper.checkpoints), not a path
CHECKPOINT_REF = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*):best")


def _task_spec(file: Path, name: Any, field: str) -> TaskSpec:
    """The registered task a sweep names; a built-in task must be trainable (TrainBase keys)."""
    names = task_names()
    if not isinstance(name, str) or name not in names:
        raise SweepConfigError(file, field, f"unknown task {short_repr(name)}{suggest(str(name), names)}; "
                               f"known tasks: {', '.join(names)}")
    try:
        task = get_spec(name)
    except (LookupError, ImportError) as exc:
        raise SweepConfigError(file, field, str(exc)) from None
    checks.check_train_base(file, task)
    return task


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
    task = _task_spec(file, doc.get("task"), "--set task" if task_sets else "task")
    base_model = task.base
    base_defaults = None if task.open_keys else base_model().model_dump()
    for key, value in sets:
        if key.split(".", 1)[0] != "task":
            _apply_override(file, doc, base_defaults, key, value)
    checks.check_time_unit(file, doc, task)

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
        if frag.is_dir():
            raise SweepConfigError(file, "include", f"fragment {inc!r} is a directory ({frag}); name a YAML file in it")
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
    checks.check_task_sections(file, spec, task)
    formats = task.data_formats
    if spec.data is not None and spec.data.format is not None and spec.data.format not in formats:
        raise SweepConfigError(file, "data.format", f"task {spec.task!r} reads {' or '.join(formats)}, "
                               f"not {spec.data.format!r}")
    dims = checks.check_search(file, spec, task, base, origins)
    secret_keys.check_secret_keys(file, spec, dims, origins)  # secrets Tune could not be kept from recording
    if spec.ablation is not None:
        checks.check_ablation(file, spec, task, base)
        if "scheduler" not in doc:  # early stopping would bias a controlled comparison
            spec = spec.model_copy(update={"scheduler": Scheduler(name="fifo")})
    checks.check_data_section(file, spec, dims)
    checks.check_eval_grid(file, spec, task, base)
    for i, objective in enumerate(objectives):
        checks.check_objective(file, spec, task, objective,
                               "objective.metric" if len(objectives) == 1 else f"objective[{i}].metric")
    spec = resolve_grace_period(spec, base, dims)  # `auto` becomes epochs before anything reads it
    checks.check_budget(file, spec, dims, base)
    check_promote(file, spec, bool(dims))
    sampling.check_sampler(file, spec, objectives)
    sampling.check_constraints(file, spec, task)
    search_start.check_search_start(file, spec, dims, spec.budget.num_samples)
    checks.check_notify(file, spec)

    # paths become absolute: trials run elsewhere
    update: dict[str, Any] = {
        "storage": _resolve_path(spec.storage, cwd, file, "storage"),
    }
    problem = check_tracking_uri(spec.tracking.uri)
    if problem:
        raise SweepConfigError(file, "tracking.uri", problem)
    try:
        update["tracking"] = Tracking(uri=resolve_tracking_uri(spec.tracking.uri, cwd))
    except (ValueError, RuntimeError, OSError) as exc:
        raise SweepConfigError(file, "tracking.uri", f"{short_repr(spec.tracking.uri)} is not usable: {exc}") from None
    if spec.search_alg.storage is not None and (problem := study_storage.storage_problem(spec.search_alg.storage)):
        raise SweepConfigError(file, "search_alg.storage", problem)
    update["search_alg"] = spec.search_alg.model_copy(update={"storage": study_storage.resolve_storage(
        spec.search_alg.storage, update["tracking"].uri, cwd)})
    if spec.command is not None:
        update["command"] = _resolve_command(file, spec.command, cwd)
    if spec.data is not None:
        update["data"] = _resolve_data(file, spec, cwd)
    for key in (*task.path_keys, *task.checkpoint_keys):
        value = get_or_none(base, key)
        if isinstance(value, str) and value and not CHECKPOINT_REF.fullmatch(value):
            set_dotted(base, key, _resolve_path(value, cwd, file, f"base.{key}"))
    dims, ablation = _resolve_path_keys(file, task, spec, base, dims, cwd)
    if ablation is not None:
        update["ablation"] = ablation
    spec = spec.model_copy(update=update)
    raw = copy.deepcopy(doc)
    raw.pop("include", None)
    sweep = Sweep(file=file, spec=spec, base=base, dimensions=dims, raw=raw, overrides=tuple(overrides or ()),
                  cwd=cwd, objectives=objectives)
    check_reportable(sweep)  # a metric no trial config can produce (the data's classes: in check_paths)
    if check_data:
        check_paths(sweep)
    return sweep


def check_paths(sweep: Sweep) -> None:
    """The files and directories a sweep names exist: the command's workdir, the dataset (unless
    `data.synth` generates it on first launch) and the task's path keys (weights). Separate from
    loading, so a launch loads its sweep once: loaded, data generated if asked, then checked."""
    spec, file = sweep.spec, sweep.file
    problem = _storage_problem(spec.storage)
    if problem:
        raise SweepConfigError(file, "storage", problem)
    if spec.command is not None and not Path(spec.command.workdir).is_dir():
        raise SweepConfigError(file, "command.workdir", f"{spec.command.workdir} is not a directory; point it at "
                               "the directory your training command runs in")
    data = spec.data
    generated_later = data is not None and data.synth is not None and not all(
        Path(p).exists() for p in (data.train, data.val, data.images) if p is not None)
    if data is not None and not generated_later:
        _check_data(sweep)
        _check_data_contents(sweep)
        check_reportable(sweep, with_data=True)
    _check_path_keys(sweep)
    for key in sweep.task.checkpoint_keys:
        value = get_or_none(sweep.base, key)
        if isinstance(value, str) and value and not CHECKPOINT_REF.fullmatch(value) and not Path(value).is_file():
            raise SweepConfigError(file, f"base.{key}", f"{value} not found")


def _data_values(sweep: Sweep) -> list[tuple[str, str, Any]]:
    """(field, data key, value) for every value a trial's data may take: the data section's own
    (absolute already), then searched choices, ablation factor values and named variants' values
    (absolute here, as `trial_data` makes them for the trial)."""
    spec, file = sweep.spec, sweep.file
    assert spec.data is not None
    out = [(f"data.{k}", k, getattr(spec.data, k)) for k in ("train", "val", "images", "fold")]
    varied = [(f"search.{d.key}", d.key, v) for d in sweep.dimensions for v in d.values]
    abl = spec.ablation
    if abl is not None:
        varied += [(f"ablation.factors.{k}", k, v) for k, values in abl.factors.items() for v in values]
        varied += [(f"ablation.variants.{n}.{k}", k, v) for n, c in abl.variants.items() for k, v in c.items()]
    for field, key, value in varied:
        if is_data_key(key, spec):
            sub = key.removeprefix("data.")
            if sub in DATA_PATH_KEYS and isinstance(value, str):
                value = _resolve_path(value, sweep.cwd, file, field)
            out.append((field, sub, value))
    return out


def _check_data(sweep: Sweep) -> None:
    """Every file a trial's data may name exists; when trials train or validate on different files,
    all of them have the same categories (a detector's classes); with folds, every training file
    can be split into them (k images at least; the fold files name images of it)."""
    from sweeper.tasks.folds import FoldError, categories, fold_files_keys, image_key, image_names

    spec, file = sweep.spec, sweep.file
    data = spec.data
    assert data is not None
    values = _data_values(sweep)
    for field, key, path in values:
        if key not in DATA_PATH_KEYS or path is None or Path(path).exists():
            continue
        if field.startswith("data."):
            raise SweepConfigError(file, field, f"{path} does not exist; point it at "
                                   "your dataset (--set data.train=... --set data.val=... --set "
                                   "data.images=...), make synthetic data there (sweeper data synth "
                                   f"--task {spec.task} --out DIR), or add `data: {{synth: {{}}}}` "
                                   "to generate it on first launch")
        raise SweepConfigError(file, field, f"{path} does not exist (a trial would get it as data.{key})")
    for path in data.folds.files if data.folds is not None and data.folds.files else []:
        if not Path(path).exists():
            raise SweepConfigError(file, "data.folds.files", f"{path} does not exist")
    files: dict[str, str] = {}  # annotation file -> the first field naming it, the data section's first
    for field, key, path in values:
        if key in ("train", "val") and path is not None:
            files.setdefault(path, field)

    def read(what: Any, path: Any, field: str) -> Any:
        try:
            return what(path)
        except FoldError as exc:
            raise SweepConfigError(file, field, str(exc)) from None

    if any(not field.startswith("data.") for field in files.values()):  # trials get different files
        reference = read(categories, data.train, "data.train")
        for path, field in files.items():
            found = read(categories, path, field)
            if found != reference:
                raise SweepConfigError(file, field, f"{path}: its categories {_names(found)} differ from "
                                       f"those of {data.train} ({_names(reference)}); every training and "
                                       "validation file of one sweep needs the same categories")
    if data.folds is None or not any(key == "fold" and value is not None for _, key, value in values):
        return
    fold_keys = read(fold_files_keys, data.folds.files, "data.folds.files") if data.folds.files else []
    for path, field in files.items():
        if field != "data.train" and not field.endswith(".data.train"):
            continue
        keys = {image_key(n) for n in read(image_names, path, field)}
        if data.folds.k is not None and len(keys) < data.folds.k:
            raise SweepConfigError(file, field, f"{path} has {len(keys)} images, fewer than "
                                   f"data.folds.k ({data.folds.k}): a fold would be empty")
        for fold_file, held in zip(data.folds.files or [], fold_keys):
            stray = sorted(held - keys)
            if stray:
                raise SweepConfigError(file, "data.folds.files", f"{fold_file} names image {stray[0]!r}, "
                                       f"which {path} does not hold; a fold file names images of data.train")


def _check_data_contents(sweep: Sweep) -> None:
    """Read every annotation file a trial may get, with every images directory, through the task's
    own reader (`TaskSpec.check_data`), so a dataset every trial would fail on is refused here
    (exit 2) instead of inside each trial while the launch exits 0. After `_check_data`, whose
    errors (a missing file, categories that differ) are the more telling."""
    checker = sweep.task.data_checker()
    if checker is None or sweep.spec.data is None:
        return
    values = _data_values(sweep)
    files: dict[str, str] = {}  # annotation file -> the first field naming it, the data section's first
    for field, key, path in values:
        if key in ("train", "val") and path is not None:
            files.setdefault(path, field)
    image_dirs = dict.fromkeys(path for _, key, path in values if key == "images" and path is not None)
    for path, field in files.items():
        for images in image_dirs:
            try:
                checker(path, images, split=field.rsplit(".", 1)[-1], format=sweep.spec.data.format)
            except ValueError as exc:
                raise SweepConfigError(sweep.file, field, str(exc)) from None


def _names(cats: list[tuple[Any, str]] | None) -> str:
    return "none" if cats is None else "[" + ", ".join(f"{i}: {n}" for i, n in cats) + "]"


def _resolve_data(file: Path, spec: SweepFile, cwd: Path) -> DataConfig:
    assert spec.data is not None
    data = spec.data.model_dump()
    data["format"] = data["format"] or get_spec(spec.task).data_formats[0]
    for key in ("train", "val", "images"):
        if data[key] is not None:
            data[key] = _resolve_path(data[key], cwd, file, f"data.{key}")
    if data["folds"] and data["folds"]["files"]:
        data["folds"]["files"] = [_resolve_path(f, cwd, file, "data.folds.files") for f in data["folds"]["files"]]
    return DataConfig.model_validate(data)


def _resolve_command(file: Path, command: CommandConfig, cwd: Path) -> CommandConfig:
    """`workdir` absolute (trials run elsewhere); relative metric files under it."""
    workdir = Path(_resolve_path(command.workdir, cwd, file, "command.workdir"))
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
