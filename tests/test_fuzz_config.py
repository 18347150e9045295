"""Fuzzing the sweep-file loader: whatever the text, only SweepConfigError may come out.

``parse_override`` on any text, ``load_sweep`` on any YAML-ish document (random nests of
dicts/lists/scalars, real sweeps with parts replaced by wrong-typed values, raw text made of YAML
tokens) and on a valid sweep with fuzzed ``--set`` texts. Other exceptions are crashes: the CLI
shows them as tracebacks (exit 1) instead of one message naming the file (exit 2).

Crashes the fuzzing found are in :data:`FOUND_CRASHES`, each with its minimal input and the
clear error it gets now. A crash found but not fixed yet is pinned by a strict xfail
(``pytest.mark.xfail(strict=True, raises=...)``), so that its fix turns into a failure that asks
for the pin to go, and listed in :data:`PINNED` so that the fuzz tests let it pass meanwhile.
More examples than the committed ones, once, locally::

    SWEEPER_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest -q tests/test_fuzz_config.py
"""
from __future__ import annotations

import copy
import os
import string
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweeper.config import MAX_ABLATION_TRIALS, MAX_SEEDS, SweepConfigError, load_sweep, parse_override
from sweeper.sweep_yaml import MAX_DEPTH, MAX_NODES

FUZZ = settings(max_examples=int(os.environ.get("SWEEPER_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# --------------------------------------------------------------------------- crashes found
OK = ("name: t\ntask: detection\ndata: {train: a, val: b, images: c, synth: {}}\nobjective: {metric: map50}\n"
      "budget: {num_samples: 1}\n")
WITH_FRAG = OK + "include: [frag.yaml]\n"
ALIAS_BOMB = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcde", "bcdef"))
FACTORIAL = ("ablation: {full_factorial: true, seeds: 10, factors: {"
             + ", ".join(f"{k}: [{', '.join(str(v / 10) for v in range(1, 10) if v / 10 != d)}]"
                         for k, d in [("train.lr", 0.01), ("train.momentum", 0.9), ("train.hflip", 0.5),
                                      ("post.score_thresh", 0.05), ("post.nms_iou", 0.5), ("train.weight_decay", 0)])
             + "}}\n")


@dataclass(frozen=True)
class Crash:
    """An input that once crashed the loader, and the SweepConfigError it gets now."""

    name: str
    call: str  # override: parse_override(text); load: load_sweep(doc, sets) with frag.yaml beside it
    text: str  # the --set text, or the sweep file
    file: str | None  # the file the error names: s.yaml, frag.yaml, or None (a --set alone)
    field: str | None
    words: tuple[str, ...]  # in the message
    sets: tuple[str, ...] = ()
    frag: str | None = None


FOUND_CRASHES = [
    # PyYAML raises ValueError/IndexError/KeyError/AttributeError/RecursionError, not only YAMLError
    Crash("yaml_impossible_date", "load", "name: 2024-02-30\n", "s.yaml", None,
          ("not valid YAML", "day is out of range for month", "quote values")),
    Crash("yaml_impossible_date_in_set", "override", "name=2024-13-01", None, "--set name",
          ("value is not valid YAML", "month must be in 1..12")),
    *(Crash(f"yaml_bad_tagged_scalar_{i}", "override", f"a={tag}", None, "--set a", ("value is not valid YAML",))
      for i, tag in enumerate(["!!float", "!!int x", "!!bool x", "!!timestamp x"])),
    Crash("yaml_deep_nesting", "override", "a=" + "[" * 1000, None, "--set a", ("nested more than",)),
    Crash("yaml_deep_nesting_in_file", "load", "name: " + "[" * 40 + "]" * 40 + "\n", "s.yaml", None,
          (f"nested more than {MAX_DEPTH} levels",)),
    Crash("yaml_recursive_alias", "load", "name: &a [*a]\n", "s.yaml", None, ("nested more than",)),
    Crash("yaml_alias_bomb", "load", ALIAS_BOMB, "s.yaml", None, (f"more than {MAX_NODES} values",)),
    # wrong shapes the loader used before validating them
    Crash("task_unhashable", "load", "task: [detection]\n", "s.yaml", "task", ("unknown task ['detection']",)),
    Crash("base_not_a_mapping", "load", "name: t\ntask: detection\nbase: [1]\nsearch: {train.lr: {choice: [0.1]}}\n",
          "s.yaml", "base", ("must be a mapping", "got [1]")),
    Crash("set_below_a_scalar", "load", OK, "s.yaml", "--set name.x", ("name is 't', not a mapping",),
          sets=("name.x=1",)),
    Crash("set_below_a_nested_scalar", "load", OK, "s.yaml", "--set budget.num_samples.x",
          ("budget.num_samples is 1, not a mapping",), sets=("budget.num_samples.x=1",)),
    Crash("set_into_a_base_list", "load", OK + "base: [1]\n", "s.yaml", "--set train.epochs",
          ("base is [1], not a mapping",), sets=("train.epochs=2",)),
    Crash("set_unknown_task", "load", OK, "s.yaml", "--set task", ("unknown task 'nope'",), sets=("task=nope",)),
    Crash("fragment_include_not_a_list", "load", WITH_FRAG, "frag.yaml", "include", ("must be a list",),
          frag="include: 1\n"),
    Crash("fragment_include_not_paths", "load", WITH_FRAG, "frag.yaml", "include", ("got [1]",), frag="include: [1]\n"),
    Crash("fragment_search_not_a_mapping", "load", WITH_FRAG, "frag.yaml", "search", ("must be a mapping",),
          frag="search: [1]\n"),
    Crash("fragment_includes_a_missing_file", "load", WITH_FRAG, "frag.yaml", "include", ("nope.yaml not found",),
          frag="include: [nope.yaml]\n"),
    # paths no OS call can take: a NUL byte, ~user of no such user
    Crash("nul_byte_in_a_path", "load", OK + "storage: \"runs\\0x\"\n", "s.yaml", "storage",
          ("is not a usable path: embedded null byte",)),
    Crash("nul_byte_in_an_include", "load", WITH_FRAG, "frag.yaml", "include", ("embedded null byte",),
          frag="include: [\"a\\0b\"]\n"),
    Crash("unknown_user_in_a_path", "load", OK.replace("train: a", "train: ~nouser-sweeper/a"), "s.yaml", "data.train",
          ("'~nouser-sweeper/a' is not a usable path",)),
    Crash("unknown_user_in_a_metrics_path", "load", OK.replace("task: detection", "task: command").replace(
              "data: {train: a, val: b, images: c, synth: {}}", "command: {run: 'x {overrides}', epochs: 1, "
              "metrics: 'csv:~nouser-sweeper/m.csv'}").replace("map50", "loss"),
          "s.yaml", "command.metrics", ("is not a usable path",)),
    # pydantic's union tags told from the user's keys by the schema, not by a capital letter
    Crash("capitalised_unknown_key", "load", OK + "Budget: 1\n", "s.yaml", "Budget",
          ("unknown key (did you mean 'budget'?)",)),
    Crash("capitalised_unknown_nested_key", "load", OK.replace("{num_samples: 1}", "{Num_samples: 1}"), "s.yaml",
          "budget.Num_samples", ("did you mean 'num_samples'?", "allowed here: num_samples")),
    Crash("unknown_key_in_a_union_member", "load", OK.replace("{metric: map50}", "[{metric: map50, Mode: max}]"),
          "s.yaml", "objective.0.Mode", ("did you mean 'mode'?", "allowed here: metric, mode")),
    # sizes that exhaust memory
    Crash("huge_seed_count", "load", OK + "ablation: {factors: {train.lr: [0.5]}, seeds: 1000000000000000000}\n",
          "s.yaml", "ablation.seeds", (f"more than {MAX_SEEDS}",)),
    Crash("huge_full_factorial", "load", OK.replace("budget: {num_samples: 1}\n", "") + FACTORIAL, "s.yaml",
          "ablation.factors", ("729000 variants x 10 seeds", f"more than {MAX_ABLATION_TRIALS}")),
    # a fragment's mistakes name the fragment, not the sweep file
    Crash("fragment_typo", "load", WITH_FRAG, "frag.yaml", "serach", ("unknown key (did you mean 'search'?)",),
          frag="serach: {train.lr: {choice: [0.1]}}\n"),
    Crash("fragment_bad_space", "load", WITH_FRAG, "frag.yaml", "search.train.lr", ("low > 0",),
          frag="search: {train.lr: {loguniform: [0, 1]}}\n"),
    Crash("fragment_unknown_key", "load", WITH_FRAG, "frag.yaml", "search.train.lrr", ("did you mean 'train.lr'?",),
          frag="search: {train.lrr: {choice: [0.1]}}\n"),
    Crash("fragment_value_of_wrong_type", "load", WITH_FRAG, "frag.yaml", "search.train.lr",
          ("value 'x' does not fit",),
          frag="train.lr: {choice: [0.1, x]}\n"),
]


@pytest.mark.parametrize("case", FOUND_CRASHES, ids=lambda c: c.name)
def test_found_crash_gets_a_clear_error(case: Crash) -> None:
    with pytest.raises(SweepConfigError) as info:
        if case.call == "override":
            parse_override(case.text)
        else:
            _load_text(case.text, list(case.sets), case.frag)
    exc, msg = info.value, str(info.value)
    assert (Path(exc.file).name if exc.file else None) == case.file, msg
    assert exc.field == case.field, msg
    assert all(w in msg for w in case.words), msg
    assert len(msg) < 1000, msg


def test_quniform_with_an_astronomical_step_count_is_refused() -> None:
    with pytest.raises(SweepConfigError, match="too many steps"):
        _load_text(OK + "search: {train.lr: {quniform: [0, 1.0e+300, 1.0e-300]}}\n")


def _check_known(call: Callable[[], Any]) -> None:
    """A pinned crash: SweepConfigError (fixed) passes, so the strict xfail fails and gets deleted."""
    try:
        call()
    except SweepConfigError:
        pass


def test_set_task_applies_before_the_keys_it_defines() -> None:
    """`--set task=dbnet` decides which keys the other --set may name, wherever it stands."""
    sweep = _load_text(_dump({**DBNET, "task": "detection"}), ["model.channels=8", "task=dbnet"])
    assert sweep.spec.task == "dbnet" and sweep.base["model"]["channels"] == 8


def test_command_script_keys_may_be_anything() -> None:
    """A command script's own `model` key is not ours: `model: unet` once crashed the weights check."""
    doc = {**COMMAND, "base": {"model": "unet"}}
    assert _load_text(_dump(doc)).base == {"model": "unet"}
    assert _load_text(_dump(COMMAND), ["model=null"]).base["model"] is None


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


#: (module, function, exception type) of crashes pinned by a strict xfail above, which the fuzz
#: tests let pass until they are fixed (then delete the entry with its xfail)
PINNED: set[tuple[str, str, type]] = set()


def _check(call: Callable[[], Any]) -> None:
    """Run `call`: success and SweepConfigError are fine, a PINNED crash is tolerated; anything
    else is a new crash, reported with where it came from."""
    try:
        call()
    except SweepConfigError as exc:
        assert str(exc)
    except Exception as exc:  # noqa: BLE001 - finding these is the point
        if (*_where(exc), type(exc)) not in PINNED:
            raise AssertionError(f"new crash: {type(exc).__name__} from {_where(exc)}: {exc}") from exc


def _load_text(text: str, overrides: list[str] | None = None, frag: str | None = None,
               then: Callable[[Any], Any] | None = None) -> Any:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.yaml"
        path.write_text(text)
        if frag is not None:
            (Path(d) / "frag.yaml").write_text(frag)
        sweep = load_sweep(path, overrides or [], cwd=d)
        if then is not None:
            then(sweep)
        return sweep


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
NOOP = {"name": "fuzz-noop", "task": "noop", "search": {"x": {"uniform": [0.0, 1.0]}}, "objective": {"metric": "score"},
        "budget": {"num_samples": 2}}
BASES = [GOOD, ABLATION, DBNET, COMMAND, NOOP]

WORDS = ["name", "task", "data", "base", "include", "search", "ablation", "eval_grid", "objective", "search_alg",
         "scheduler", "budget", "resources", "tracking", "checkpoint", "storage", "command", "train", "val",
         "images", "synth", "format", "model", "arch", "backbone", "weights", "post", "metric", "mode", "factors",
         "seeds", "seed_key", "num_samples", "max_t", "grace_period", "run", "workdir", "overrides", "epochs",
         "train.lr", "train.epochs", "model.backbone", "post.score_thresh", "choice", "grid", "uniform",
         "loguniform", "randint", "quniform", "detection", "dbnet", "map50", "hmean", "max", "min", "optuna",
         "random", "asha", "fifo", "ufo", "coco", "resnet18", "{overrides}", "s.yaml", "frag.yaml", "", ".", "..",
         "/", "-1", "0", "1e-3", "sqlite:///x.db", "true", "null", "~", "env", "stdout", "csv:m.csv",
         "~nouser-sweeper/x", "a\x00b", "csv:~nouser-sweeper/m.csv"]
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
def _use(sweep: Any) -> None:
    """What `validate` and `--dry-run` compute from a loaded sweep (10**18 seeds once crashed here)."""
    sweep.num_trials, sweep.max_t, sweep.seed_key, sweep.variants


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
    _check(lambda: _load_text(_dump(doc), frag=frag, then=_use))


@FUZZ
@given(text=yaml_texts)
def test_load_sweep_on_any_text_raises_only_sweep_config_errors(text: str) -> None:
    _check(lambda: _load_text(text, then=_use))


@FUZZ
@given(base=st.sampled_from(BASES), overrides=st.lists(override_texts, min_size=1, max_size=3))
def test_load_sweep_with_any_overrides_raises_only_sweep_config_errors(base: dict[str, Any],
                                                                      overrides: list[str]) -> None:
    _check(lambda: _load_text(_dump(base), overrides, then=_use))


def test_the_bases_are_valid() -> None:
    for base in BASES:
        assert _load_text(_dump(base), then=_use).name == base["name"]
    assert sys.getrecursionlimit() >= 1000  # yaml_deep_nesting's input assumes the default limit
