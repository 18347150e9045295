"""`scheduler.grace_period: auto` (the default): the rule, its resolution at load, the dry-run line."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from sweeper.config import SweepConfigError, load_sweep
from sweeper.rungs import auto_grace_period
from sweeper.schema import Scheduler

SWEEP = """
name: g
task: detection
data: {train: d/train.json, val: d/val.json, images: d/images}
base:
  model: {backbone: resnet18, fpn_channels: 32}
  train: {epochs: EPOCHS, resolution: 64, warmup_epochs: WARMUP}
search:
  train.lr: {loguniform: [1.0e-4, 1.0e-2]}
objective: {metric: map50, mode: max}
SCHEDULER
budget: {num_samples: 4}
"""


@pytest.fixture()
def sweep_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    (tmp_path / "d" / "images").mkdir(parents=True)
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100,
                             "iscrowd": 0}],
            "categories": [{"id": 1, "name": "box"}]}
    for name in ("train.json", "val.json"):
        (tmp_path / "d" / name).write_text(json.dumps(coco))
    monkeypatch.chdir(tmp_path)

    def make(epochs: int = 8, warmup: float = 1.0, scheduler: str = "") -> Path:
        path = tmp_path / "g.yaml"
        path.write_text(textwrap.dedent(SWEEP).replace("EPOCHS", str(epochs)).replace("WARMUP", str(warmup))
                        .replace("SCHEDULER", scheduler))
        return path

    return make


@pytest.mark.parametrize("max_t, warmup, grace", [
    (1, 0, 1), (1, 1, 1), (2, 2, 2),  # never beyond max_t
    (3, 0, 1), (4, 0, 1), (5, 0, 2), (8, 0, 2), (9, 0, 3), (25, 0, 3), (300, 0, 3),  # max_t / 4, at most 3
    (4, 0.5, 2), (4, 1, 2), (8, 1, 2), (25, 1, 3), (8, 3, 4), (100, 4.5, 6), (24, 1, 3), (2, 0.5, 2),  # after warmup
])
def test_auto_grace_period(max_t: int, warmup: float, grace: int) -> None:
    assert auto_grace_period(max_t, warmup) == grace


def test_the_default_is_auto_and_resolves_at_load(sweep_file) -> None:  # noqa: ANN001
    assert Scheduler().grace_period == "auto"
    sweep = load_sweep(sweep_file(epochs=8, warmup=2), check_data=False)
    assert sweep.spec.scheduler.grace_period == 3 and sweep.max_t == 8
    assert load_sweep(sweep_file(epochs=20, warmup=1), check_data=False).spec.scheduler.grace_period == 3
    assert load_sweep(sweep_file(epochs=8, warmup=0), check_data=False).spec.scheduler.grace_period == 2
    explicit = load_sweep(sweep_file(scheduler="scheduler: {name: asha, grace_period: 1}"), check_data=False)
    assert explicit.spec.scheduler.grace_period == 1  # a number is kept as it is
    shorter = load_sweep(sweep_file(epochs=24, warmup=1, scheduler="scheduler: {name: asha, max_t: 4}"), check_data=False)
    assert shorter.spec.scheduler.grace_period == 2  # from ASHA's max_t, not train.epochs


def test_a_searched_warmup_counts_its_longest(sweep_file, tmp_path: Path) -> None:  # noqa: ANN001
    path = sweep_file(epochs=8, warmup=0)
    text = path.read_text().replace(", warmup_epochs: 0}", "}")
    path.write_text(text.replace("search:\n", "search:\n  train.warmup_epochs: {choice: [0.0, 3.0]}\n"))
    assert load_sweep(path, check_data=False).spec.scheduler.grace_period == 4


def test_bad_grace_periods_are_refused(sweep_file) -> None:  # noqa: ANN001
    for value, needle in (("0", "grace_period"), ("soon", "grace_period"), ("9", "max_t")):
        with pytest.raises(SweepConfigError) as exc:
            load_sweep(sweep_file(scheduler=f"scheduler: {{name: asha, grace_period: {value}}}"), check_data=False)
        assert exc.value.field is not None and "grace_period" in exc.value.field, (value, exc.value)
        assert needle in str(exc.value)


def test_dry_run_shows_the_resolved_grace_period(sweep_file) -> None:  # noqa: ANN001
    from typer.testing import CliRunner

    from sweeper.cli import app

    out = CliRunner().invoke(app, ["launch", str(sweep_file(epochs=8, warmup=1)), "--dry-run"], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "rungs at epochs [2, 6]" in out.output
    assert "grace period: auto = 2 epochs (a full epoch after the 1-epoch warmup, or a quarter of max_t 8, at " \
           "most 3" in out.output
    assert "stops most trials at 2 epochs" in out.output
    explicit = CliRunner().invoke(app, ["launch", str(sweep_file(scheduler="scheduler: {name: asha, grace_period: 1}")),
                                        "--dry-run"], terminal_width=200)
    assert explicit.exit_code == 0 and "grace period: auto" not in explicit.output
