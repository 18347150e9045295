"""Fuzzing the sweep-file loader: whatever the text, only SweepConfigError may come out.

``parse_override`` on any text, ``load_sweep`` on any YAML-ish document (random nests of
dicts/lists/scalars, real sweeps with parts replaced by wrong-typed values, raw text made of YAML
tokens) and on a valid sweep with fuzzed ``--set`` texts. Other exceptions are crashes: the CLI
shows them as tracebacks (exit 1) instead of one message naming the file (exit 2).

Crashes already found are listed in :data:`KNOWN_CRASHES`, each with its minimal input, and pinned
by strict xfails (``test_known_crash``): they turn into failures the day ``sweeper/config.py``
fixes them, and the entry is then deleted. The fuzz tests let only those crash families pass, so
any new crash fails them.
"""
from __future__ import annotations

import copy
import string
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweeper.config import SweepConfigError, load_sweep, parse_override

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# --------------------------------------------------------------------------- known crashes
#: id -> minimal input and what is wrong. `call`: "override" = parse_override(text); "load" =
#: load_sweep on the YAML `doc` (with `frag` as frag.yaml beside it, `sets` as --set texts);
#: "num_trials" = the same, then `sweep.num_trials` (what `validate` and `--dry-run` print).
KNOWN_CRASHES: dict[str, dict[str, Any]] = {
    "yaml_impossible_date": {
        "call": "load", "doc": "name: 2024-02-30\n", "raises": ValueError,
        "why": "PyYAML reads YYYY-MM-DD as a date and raises ValueError (not YAMLError) for an impossible "
               "one; config._read_yaml and parse_override catch only yaml.YAMLError",
    },
    "yaml_impossible_date_in_set": {
        "call": "override", "text": "name=2024-13-01", "raises": ValueError,
        "why": "as yaml_impossible_date, in a --set value",
    },
    "yaml_bad_tagged_scalar": {
        "call": "override", "text": "a=!!float", "raises": IndexError,
        "why": "PyYAML raises IndexError/ValueError/KeyError/AttributeError for explicit core tags with bad "
               "scalars ('!!float', '!!int x', '!!bool x', '!!timestamp x'); only YAMLError is caught",
    },
    "yaml_deep_nesting": {
        "call": "override", "text": "a=" + "[" * 1000, "raises": RecursionError,
        "why": "PyYAML recurses once per nesting level; 1000 '[' exceed Python's recursion limit",
    },
    "task_unhashable": {
        "call": "load", "doc": "task: [detection]\n", "raises": TypeError,
        "why": "load_sweep: `task not in TASK_BASES` with a list/dict task: unhashable type",
    },
    "base_not_a_mapping": {
        "call": "load", "doc": "name: t\ntask: detection\nbase: [1]\nsearch: {train.lr: {choice: [0.1]}}\n",
        "raises": AttributeError,
        "why": "load_sweep: flatten(raw_base) (with a non-empty search; also _apply_override's _set) "
               "assumes `base` is a mapping",
    },
    "set_below_a_scalar": {
        "call": "load", "doc": "name: t\ntask: detection\nobjective: {metric: map50}\n", "sets": ["name.x=1"],
        "raises": TypeError,
        "why": "_apply_override/_set: a dotted --set key below a top-level scalar (name.x, "
               "budget.num_samples.x) assigns into a str/int",
    },
    "set_unknown_task": {
        "call": "load", "doc": "name: t\ntask: detection\nobjective: {metric: map50}\n", "sets": ["task=nope"],
        "raises": KeyError,
        "why": "load_sweep checks `task` before applying --set, so `--set task=nope` reaches "
               "TASK_DATA_FORMATS[spec.task] (and a valid `--set task=dbnet` keeps detection's `base` schema)",
    },
    "command_base_model_not_a_mapping": {
        "call": "load", "doc": "name: t\ntask: command\ncommand: {run: 'python train.py {overrides}', workdir: ., "
                               "epochs: 1}\nbase: {model: unet}\nobjective: {metric: loss}\nbudget: {num_samples: 1}\n",
        "raises": AttributeError,
        "why": "load_sweep: `base.get('model', {}).get('weights')` runs before the command-task check, so a "
               "command script's own `model` key that is not a mapping (model: unet, or --set model=null) crashes "
               "a valid sweep",
    },
    "fragment_not_a_search_map": {
        "call": "load", "doc": "name: t\ntask: detection\ninclude: [frag.yaml]\nobjective: {metric: map50}\n",
        "frag": "include: 1\n", "raises": TypeError,
        "why": "_load_fragment uses a fragment's `include` / `search` without checking their types "
               "(include: 1 or [1] -> TypeError; search: [1] -> ValueError)",
    },
    "capitalised_unknown_key": {
        "call": "load", "doc": "name: t\ntask: detection\nobjective: {metric: map50}\nBudget: 1\n",
        "raises": IndexError,
        "why": "_raise_validation drops loc parts matching [A-Z]\\w* (meant for pydantic model names), so an "
               "unknown top-level key starting with a capital leaves an empty loc: loc[-1] IndexError "
               "(nested, e.g. budget: {Num_samples: 1}, it names the wrong field: 'budget: unknown key "
               "(did you mean 'budget'?)')",
    },
    "huge_seed_count": {
        "call": "num_trials",
        "doc": "name: t\ntask: detection\ndata: {train: a, val: b, images: c, synth: {}}\n"
               "ablation: {factors: {train.lr: [0.5]}, seeds: 1000000000000000000}\nobjective: {metric: map50}\n",
        "raises": MemoryError,
        "why": "load_sweep accepts any seed count, then Ablation.seed_values builds list(range(seeds)) "
               "for num_trials (validate, --dry-run): MemoryError at 10**18, minutes of swapping or an OOM kill "
               "at ~10**9",
    },
}


def _run_case(case: dict[str, Any]) -> None:
    if case["call"] == "override":
        parse_override(case["text"])
    elif case["call"] == "load":
        _load_text(case["doc"], case.get("sets"), case.get("frag"))
    else:
        _load_text(case["doc"], then=lambda sweep: sweep.num_trials)


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, raises=case["raises"], reason=(
        f"{case['why']}; minimal input: {case.get('text') or case['doc']!r}"
        + (f" with --set {case['sets']}" if "sets" in case else "")
        + (f" and frag.yaml {case['frag']!r}" if "frag" in case else ""))))
    for name, case in KNOWN_CRASHES.items()])
def test_known_crash(name: str) -> None:
    """Each known crash, pinned: the day it raises SweepConfigError instead, this xfail passes
    strictly, i.e. fails: delete the entry (and its family in `_known`)."""
    try:
        _run_case(KNOWN_CRASHES[name])
    except SweepConfigError:
        pass


def _where(exc: BaseException) -> tuple[str, str]:
    """(module, function) an exception came from: 'yaml' if from inside PyYAML, else the innermost
    frame of the sweeper package."""
    frames = traceback.extract_tb(exc.__traceback__)
    for fr in reversed(frames):
        if "/yaml/" in fr.filename.replace("\\", "/"):
            return "yaml", fr.name
    for fr in reversed(frames):
        if "/sweeper/" in fr.filename.replace("\\", "/"):
            return Path(fr.filename).stem, fr.name
    return "?", "?"


#: (module, function, exception type) -> the KNOWN_CRASHES entry it belongs to
_FAMILIES: dict[tuple[str, str, type], str] = {
    ("config", "load_sweep", TypeError): "task_unhashable",
    ("config", "load_sweep", KeyError): "set_unknown_task",
    ("config", "load_sweep", AttributeError): "command_base_model_not_a_mapping",
    ("config", "_raise_validation", IndexError): "capitalised_unknown_key",
    ("config", "flatten", AttributeError): "base_not_a_mapping",
    ("config", "_set", AttributeError): "base_not_a_mapping",
    ("config", "_set", TypeError): "set_below_a_scalar",
    ("config", "_load_fragment", TypeError): "fragment_not_a_search_map",
    ("config", "_load_fragment", ValueError): "fragment_not_a_search_map",
    ("config", "_load_fragment", AttributeError): "fragment_not_a_search_map",
}


def _known(exc: BaseException) -> str | None:
    """The KNOWN_CRASHES family an unexpected exception belongs to, or None (a new crash)."""
    module, func = _where(exc)
    if module == "yaml":  # every non-YAMLError out of PyYAML: dates, tagged scalars, nesting
        return "yaml_*"
    return next((name for (mod, fn, typ), name in _FAMILIES.items()
                 if (mod, fn) == (module, func) and isinstance(exc, typ)), None)


def _check(call: Callable[[], Any]) -> None:
    """Run `call`: success and SweepConfigError are fine, a known crash is tolerated (pinned by
    test_known_crash), anything else fails, saying where it came from."""
    try:
        call()
    except SweepConfigError as exc:
        assert str(exc)
    except Exception as exc:  # noqa: BLE001 - finding these is the point
        if _known(exc) is None:
            raise AssertionError(f"new crash: {type(exc).__name__} from {_where(exc)}: {exc}") from exc


def _load_text(text: str, overrides: list[str] | None = None, frag: str | None = None,
               then: Callable[[Any], Any] | None = None) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.yaml"
        path.write_text(text)
        if frag is not None:
            (Path(d) / "frag.yaml").write_text(frag)
        sweep = load_sweep(path, overrides or [], cwd=d)
        if then is not None:
            then(sweep)


# --------------------------------------------------------------------------- strategies
GOOD: dict[str, Any] = {
    "name": "fuzz",
    "task": "detection",
    "data": {"train": "s/train.json", "val": "s/val.json", "images": "s/images", "synth": {"images": 8}},
    "base": {"model": {"backbone": "resnet18", "fpn_channels": 32}, "train": {"epochs": 4, "resolution": 64}},
    "search": {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}, "train.batch_size": {"choice": [2, 4]}},
    "eval_grid": {"post.score_thresh": [0.05, 0.3]},
    "objective": {"metric": "map50", "mode": "max"},
    "search_alg": {"name": "optuna", "seed": 0},
    "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 3},
    "budget": {"num_samples": 4, "max_concurrent": 2},
    "resources": {"cpu": 1, "gpu": 0},
}
GOOD_TEXT = yaml.safe_dump(GOOD, sort_keys=False)
ABLATION = {**{k: v for k, v in GOOD.items() if k not in ("search", "eval_grid")},
            "ablation": {"factors": {"train.resolution": [96], "model.backbone": ["resnet34"]}, "seeds": 2}}
DBNET = {**GOOD, "task": "dbnet", "data": {**GOOD["data"], "format": "ufo"}, "eval_grid": {"post.box_thresh": [0.3]},
         "objective": {"metric": "hmean"}, "base": {"model": {"backbone": "resnet18", "channels": 16}}}
COMMAND = {"name": "fuzz-cmd", "task": "command",
           "command": {"run": "python train.py {overrides}", "workdir": ".", "epochs": 3, "metrics": "stdout"},
           "base": {"trainer.max_epochs": 3}, "search": {"optim.lr": {"loguniform": [1.0e-4, 1.0e-2]}},
           "objective": {"metric": "val/loss", "mode": "min"}, "budget": {"num_samples": 2}}
BASES = [GOOD, ABLATION, DBNET, COMMAND]

WORDS = ["name", "task", "data", "base", "include", "search", "ablation", "eval_grid", "objective", "search_alg",
         "scheduler", "budget", "resources", "tracking", "checkpoint", "storage", "command", "train", "val",
         "images", "synth", "format", "model", "arch", "backbone", "weights", "post", "metric", "mode", "factors",
         "seeds", "seed_key", "num_samples", "max_t", "grace_period", "run", "workdir", "overrides", "epochs",
         "train.lr", "train.epochs", "model.backbone", "post.score_thresh", "choice", "grid", "uniform",
         "loguniform", "randint", "quniform", "detection", "dbnet", "map50", "hmean", "max", "min", "optuna",
         "random", "asha", "fifo", "ufo", "coco", "resnet18", "{overrides}", "s.yaml", "frag.yaml", "", ".", "..",
         "/", "-1", "0", "1e-3", "sqlite:///x.db", "true", "null", "~", "env", "stdout", "csv:m.csv"]
keys = st.one_of(st.sampled_from(WORDS), st.text(max_size=8))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(), st.sampled_from(WORDS),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(keys, inner, max_size=4)), max_leaves=16)


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, (*prefix, k))
    return out


@st.composite
def mutated_sweeps(draw: st.DrawFn) -> dict[str, Any]:
    """A real sweep with 1-3 parts replaced by random values, deleted, or given extra keys."""
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc) or [("name",)]))
        parent = doc
        for part in path[:-1]:
            parent = parent[part] if isinstance(parent, dict) and isinstance(parent.get(part), dict) else None
            if parent is None:
                break
        if not isinstance(parent, dict):
            continue
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            parent.pop(path[-1], None)
        else:
            parent[draw(keys)] = draw(values)
    return doc


YAML_TOKENS = ["name: ", "task: ", "search: ", "base: ", "include: ", "objective: ", "budget: ", "\n", "  ", "- ",
               "{", "}", "[", "]", ", ", ": ", "detection", "map50", "train.lr", "{choice: [1, 2]}", "&a ", "*a",
               "!!str ", "!!int ", "!!float ", "!!bool ", "!!binary ", "!!set ", "!!python/name:os.system ", "? ",
               "'", '"', "#", "---", "...", "|", ">", "%YAML 1.1", "\t", "1e-3", "2024-01-01", ".nan", "~"]
yaml_texts = st.lists(st.one_of(st.sampled_from(YAML_TOKENS), st.text(string.printable, max_size=6)),
                      max_size=30).map("".join)


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- fuzz tests
override_keys = st.one_of(st.sampled_from(WORDS + ["search.train.momentum", "eval_grid.post.max_dets", "budget.x",
                                                   "base.train.epochs", "data.train", "objective.metric", "name.x",
                                                   "budget.num_samples.x", "model.backbone.x"]),
                          st.text(max_size=10))
override_values = st.one_of(st.text(max_size=20), yaml_texts, values.map(lambda v: _dump(v).strip()))
override_texts = st.one_of(st.text(max_size=30), st.builds(lambda k, v: f"{k}={v}", override_keys, override_values))


@FUZZ
@given(text=override_texts)
def test_parse_override_raises_only_sweep_config_errors(text: str) -> None:
    _check(lambda: parse_override(text))


@FUZZ
@given(doc=st.one_of(mutated_sweeps(), st.dictionaries(keys, values, max_size=6), values),
       frag=st.one_of(st.none(), values.map(_dump)))
def test_load_sweep_on_any_document_raises_only_sweep_config_errors(doc: Any, frag: str | None) -> None:
    if isinstance(doc, dict) and frag is not None:
        doc = {**doc, "include": ["frag.yaml"]}
    _check(lambda: _load_text(_dump(doc), frag=frag))


@FUZZ
@given(text=yaml_texts)
def test_load_sweep_on_any_text_raises_only_sweep_config_errors(text: str) -> None:
    _check(lambda: _load_text(text))


@FUZZ
@given(base=st.sampled_from(BASES), overrides=st.lists(override_texts, min_size=1, max_size=3))
def test_load_sweep_with_any_overrides_raises_only_sweep_config_errors(base: dict[str, Any],
                                                                      overrides: list[str]) -> None:
    _check(lambda: _load_text(_dump(base), overrides))


def test_the_bases_are_valid() -> None:
    for base in BASES:
        _load_text(_dump(base))
    assert sys.getrecursionlimit() >= 1000  # yaml_deep_nesting's input assumes the default limit
