"""The task registry: every task declared once, beside its code, and nowhere else."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import Field

from sweeper.config import SweepConfigError, load_sweep
from sweeper.registry import TASKS, TASKS_ENV, Strict, TaskSpec, TrainBase, get_spec, register, task_names
from sweeper.schema import SweepFile

PACKAGE = Path(__file__).resolve().parents[1] / "sweeper"


def _built_in() -> list[TaskSpec]:
    """The tasks sweeper ships (tests register others of their own)."""
    return [get_spec(name) for name in TASKS]


def test_every_built_in_task_declares_a_trainable_spec() -> None:
    for spec in _built_in():
        assert spec.name in TASKS
        assert spec.missing_train_keys() == []
        if not spec.open_keys:
            assert spec.metrics and spec.entry.startswith("sweeper.tasks.")
            assert all(spec.metric_known(m) for m in spec.metrics)
            spec.base()  # every key has a default


def test_an_unknown_task_lists_the_known_ones_with_the_closest() -> None:
    with pytest.raises(LookupError, match=r"unknown task 'dbnt' \(did you mean 'dbnet'\?\); known tasks: detection"):
        get_spec("dbnt")


def test_a_malformed_tasks_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TASKS_ENV, "tiny")
    with pytest.raises(LookupError, match="SWEEPER_TASKS: expected name=module:ATTRIBUTE"):
        task_names()


class NoBatchTrain(Strict):
    epochs: int = Field(1, ge=1)
    seed: int = 0


class NoBatchBase(Strict):
    train: NoBatchTrain = NoBatchTrain()


def test_a_task_without_the_training_base_fails_at_load_naming_the_key(tmp_path: Path) -> None:
    register(TaskSpec(name="nobatch", base=NoBatchBase, entry="nowhere:Task", metrics=("score",)))
    path = tmp_path / "s.yaml"
    path.write_text("name: s\ntask: nobatch\nobjective: {metric: score}\nbudget: {num_samples: 1}\n")
    with pytest.raises(SweepConfigError, match=r"task: task 'nobatch' cannot be trained: its schema \(NoBatchBase\) "
                                               r"has no train\.batch_size, train\.micro_batches, train\.workers"):
        load_sweep(path)


class WithBase(Strict):
    train: TrainBase = TrainBase()
    x: float = 0.5


def test_a_registered_task_is_validated_from_its_own_spec(tmp_path: Path) -> None:
    register(TaskSpec(name="xtask", base=WithBase, entry="nowhere:Task", metrics=("score",), seed_key="train.seed"))
    path = tmp_path / "s.yaml"
    path.write_text("name: s\ntask: xtask\nsearch: {x: {uniform: [0, 1]}}\nobjective: {metric: score}\n"
                    "budget: {num_samples: 2}\n")
    sweep = load_sweep(path)
    assert sweep.task.name == "xtask" and [d.key for d in sweep.dimensions] == ["x"]
    with pytest.raises(SweepConfigError, match="objective.metric: task 'xtask' does not report 'acc'"):
        load_sweep(path, ["objective.metric=acc"])
    with pytest.raises(SweepConfigError, match="--set y: no such key"):
        load_sweep(path, ["y=1"])


def _task_words() -> set[str]:
    """Names, metrics and keys that belong to one task (or a few), not to sweeper as a whole."""
    words: set[str] = set()
    for spec in _built_in():
        words |= {spec.name, *spec.metrics, *spec.metric_prefixes, *spec.eval_grid_keys, *spec.data_formats,
                  *spec.backbone_keys, *spec.path_keys, *spec.checkpoint_keys}
    # every trainable task's loss is the trainable's own contract; a top-level sweep key (the
    # `command` section) is the sweep file's, whatever task shares its name
    return words - {"train/loss"} - set(SweepFile.model_fields)


def test_no_task_name_metric_or_key_is_written_outside_the_tasks_and_the_registry_map() -> None:
    """sweeper/*.py and sweeper/config/ know tasks only through the registry: a string constant
    equal to a task's name, metric or key there means a task is declared in two places."""
    words = _task_words()
    found = []
    files = [*PACKAGE.glob("*.py"), *(PACKAGE / "config").glob("*.py")]
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip: set[int] = set()
        if path.name == "registry.py":  # the name map itself
            for node in ast.walk(tree):
                if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "TASKS":
                    skip |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                if node.value in words:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}")
    assert not found, "task names/metrics/keys outside tasks/: " + "; ".join(found)
