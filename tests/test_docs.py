"""Every sweep-file key is documented in README's reference tables (docs for every key)."""
from __future__ import annotations

import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from sweeper import schema
from sweeper.registry import TASKS, get_spec

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def dotted_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Leaf keys of a schema model, dotted (`train.lr`); nested models are walked."""
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if typing.get_origin(ann) in (typing.Union, types.UnionType):  # `X | None`: walk X if it is a model
            models = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
            ann = models[0] if len(models) == 1 else ann
        if isinstance(ann, type) and issubclass(ann, BaseModel) and ann.model_fields:
            keys += dotted_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


@pytest.mark.parametrize("task", [t for t in map(get_spec, TASKS) if not t.open_keys], ids=lambda t: t.name)
def test_every_base_key_of_a_task_is_in_the_readme(task) -> None:  # noqa: ANN001 - a TaskSpec
    missing = [k for k in dotted_keys(task.base) if f"`{k}`" not in README]
    assert not missing, f"README documents no `{task}` key(s): {missing}"


def test_every_top_level_sweep_key_is_in_the_readme() -> None:
    keys = dotted_keys(schema.SweepFile)
    missing = [k for k in keys if f"`{k}`" not in README and f"`{k.split('.')[0]}`" not in README]
    assert not missing, f"README documents no sweep key(s): {missing}"


SWEEPS = sorted((Path(__file__).resolve().parents[1] / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_shipped_sweep_file_loads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep files users launch are valid (their datasets may not exist here: not checked)."""
    from sweeper.config import load_sweep

    monkeypatch.chdir(path.parents[1])
    sweep = load_sweep(path, [], check_data=False)
    assert sweep.spec.name and (sweep.dimensions or sweep.spec.ablation is not None)
