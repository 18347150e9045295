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
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sweeper.config import checks
from sweeper.config.sweep import Sweep, SweepConfigError, flatten, get_dotted, get_or_none, set_dotted, suggest
from sweeper.registry import TaskSpec, get_spec, task_names
from sweeper.schema import CommandConfig, DataConfig, Scheduler, SweepFile, Tracking
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
    if top in SweepFile.model_fields:
        _put(path, key, doc, key.split("."), value)
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
    checks.check_task_sections(file, spec, task)
    formats = task.data_formats
    if spec.data is not None and spec.data.format is not None and spec.data.format not in formats:
        raise SweepConfigError(file, "data.format", f"task {spec.task!r} reads {' or '.join(formats)}, "
                               f"not {spec.data.format!r}")
    dims = checks.check_search(file, spec, task, base, origins)
    if spec.ablation is not None:
        checks.check_ablation(file, spec, task, base)
        if "scheduler" not in doc:  # early stopping would bias a controlled comparison
            spec = spec.model_copy(update={"scheduler": Scheduler(name="fifo")})
    checks.check_eval_grid(file, spec, task, base)
    for i, objective in enumerate(objectives):
        checks.check_objective(file, spec, task, objective,
                               "objective.metric" if len(objectives) == 1 else f"objective[{i}].metric")
    checks.check_budget(file, spec, dims, base)

    # paths become absolute: trials run elsewhere
    update: dict[str, Any] = {
        "storage": _resolve_path(spec.storage, cwd, file, "storage"),
    }
    try:
        update["tracking"] = Tracking(uri=resolve_tracking_uri(spec.tracking.uri, cwd))
    except (ValueError, RuntimeError, OSError) as exc:
        raise SweepConfigError(file, "tracking.uri", f"{short_repr(spec.tracking.uri)} is not usable: {exc}") from None
    if spec.command is not None:
        update["command"] = _resolve_command(file, spec.command, cwd)
    if spec.data is not None:
        update["data"] = _resolve_data(file, spec, cwd)
    for key in (*task.path_keys, *task.checkpoint_keys):
        value = get_or_none(base, key)
        if isinstance(value, str) and value and not CHECKPOINT_REF.fullmatch(value):
            set_dotted(base, key, _resolve_path(value, cwd, file, f"base.{key}"))
    spec = spec.model_copy(update=update)
    raw = copy.deepcopy(doc)
    raw.pop("include", None)
    sweep = Sweep(file=file, spec=spec, base=base, dimensions=dims, raw=raw, overrides=tuple(overrides or ()),
                  cwd=cwd, objectives=objectives)
    if check_data:
        check_paths(sweep)
    return sweep


def check_paths(sweep: Sweep) -> None:
    """The files and directories a sweep names exist: the command's workdir, the dataset (unless
    `data.synth` generates it on first launch) and the task's path keys (weights). Separate from
    loading, so a launch loads its sweep once: loaded, data generated if asked, then checked."""
    spec, file = sweep.spec, sweep.file
    if spec.command is not None and not Path(spec.command.workdir).is_dir():
        raise SweepConfigError(file, "command.workdir", f"{spec.command.workdir} is not a directory; point it at "
                               "the directory your training command runs in")
    if spec.data is not None and spec.data.synth is None:
        for key in ("train", "val", "images"):
            path = getattr(spec.data, key)
            if not Path(path).exists():
                raise SweepConfigError(file, f"data.{key}", f"{path} does not exist; point it at "
                                       "your dataset (--set data.train=... --set data.val=... --set "
                                       "data.images=...), make synthetic data there (sweeper data synth "
                                       f"--task {spec.task} --out DIR), or add `data: {{synth: {{}}}}` "
                                       "to generate it on first launch")
    for key in (*sweep.task.path_keys, *sweep.task.checkpoint_keys):
        value = get_or_none(sweep.base, key)
        if isinstance(value, str) and value and not CHECKPOINT_REF.fullmatch(value) and not Path(value).is_file():
            raise SweepConfigError(file, f"base.{key}", f"{value} not found")


def _resolve_data(file: Path, spec: SweepFile, cwd: Path) -> DataConfig:
    assert spec.data is not None
    data = spec.data.model_dump()
    data["format"] = data["format"] or get_spec(spec.task).data_formats[0]
    for key in ("train", "val", "images"):
        data[key] = _resolve_path(data[key], cwd, file, f"data.{key}")
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
