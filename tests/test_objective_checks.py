"""An objective (or constraint) no trial can report is refused before dispatch: `map_<name>` /
`ar_<name>` without that `eval.area_ranges` entry in every trial config, `ap/<class>` for a class
the dataset does not have."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweeper.config import SweepConfigError, load_sweep
from sweeper.tasks.detection.objective import check_metric

SWEEP = """
name: t
task: detection
data: {train: d/train.json, val: d/val.json, images: d/images}
base:
  model: {backbone: resnet18, fpn_channels: 32}
  train: {epochs: 2, resolution: 64}
search:
  train.lr: {loguniform: [1.0e-4, 1.0e-2]}
objective: {metric: map50, mode: max}
scheduler: {name: fifo}
budget: {num_samples: 2}
"""

TINY = {"eval": {"area_ranges": {"tiny": (0, 16)}}}
NONE: dict = {"eval": {"area_ranges": {}}}


@pytest.mark.parametrize("metric, configs, categories, expect", [
    ("map_tiny", [TINY], None, None),
    ("ar_tiny", [TINY], None, None),
    ("map_small", [NONE], None, None),  # COCO's own ranges are always there
    ("ar_100", [NONE], None, None),  # a max-detections recall, not a range
    ("map", [NONE], ["a"], None),
    ("map_tiny", [NONE], None, "entries: none"),
    ("ar_huge", [TINY], None, "named 'huge'"),
    ("map_tiny", [TINY, NONE], None, "lacks in some trials' configs (entries: tiny)"),
    ("ap/circle", [NONE], ["square", "circle"], None),
    ("ap/circle", [NONE], None, None),  # data not read yet: classes unknown
    ("ap/dog", [NONE], ["square", "circle"], "no class 'dog'; its classes are square, circle"),
])
def test_check_metric_table(metric: str, configs: list, categories: list | None, expect: str | None) -> None:
    problem = check_metric(metric, configs, categories)
    if expect is None:
        assert problem is None
    else:
        assert problem is not None and expect in problem


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from sweeper.tasks.detection.synth import make_synthetic_coco

    d = tmp_path / "d"  # classes square, circle, triangle
    make_synthetic_coco(d, images=2, size=32, seed=0)
    monkeypatch.chdir(tmp_path)
    return d


def _load(tmp_path: Path, text: str, **kw):  # noqa: ANN003, ANN202
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    return load_sweep(path, **kw)


def _refused(tmp_path: Path, text: str, **kw) -> SweepConfigError:  # noqa: ANN003
    with pytest.raises(SweepConfigError) as info:
        _load(tmp_path, text, **kw)
    assert info.value.file == (tmp_path / "s.yaml").resolve()
    return info.value


def test_a_range_metric_needs_its_area_ranges_entry(tmp_path: Path, data_dir: Path) -> None:
    text = SWEEP.replace("metric: map50", "metric: map_tiny")
    err = _refused(tmp_path, text, check_data=False)  # known from the config alone
    assert err.field == "objective.metric" and "'tiny'" in str(err) and "entries: none" in str(err)
    ok = text.replace("train: {epochs: 2", "eval: {area_ranges: {tiny: [0, 16]}}\n  train: {epochs: 2")
    assert _load(tmp_path, ok).objectives[0].metric == "map_tiny"


def test_an_ablated_variant_without_the_entry_is_refused(tmp_path: Path, data_dir: Path) -> None:
    # only the variant has the range: the baseline's trials could not report the objective
    text = SWEEP.replace("metric: map50", "metric: map_tiny").replace(
        "search:\n  train.lr: {loguniform: [1.0e-4, 1.0e-2]}\n",
        "ablation:\n  variants: {ranged: {eval.area_ranges: {tiny: [0, 16]}}}\n  seeds: 1\n")
    err = _refused(tmp_path, text)
    assert err.field == "objective.metric" and "in some trials' configs (entries: tiny)" in str(err)


def test_a_class_the_dataset_lacks_is_refused_once_the_data_is_read(tmp_path: Path, data_dir: Path) -> None:
    assert _load(tmp_path, SWEEP.replace("metric: map50", "metric: ap/circle")).objectives[0].metric == "ap/circle"
    text = SWEEP.replace("metric: map50", "metric: ap/dog")
    assert _load(tmp_path, text, check_data=False)  # the classes come from the data
    err = _refused(tmp_path, text)
    assert err.field == "objective.metric"
    assert "no class 'dog'" in str(err) and "square, circle, triangle" in str(err)


def test_multi_objective_and_constraint_fields_are_named(tmp_path: Path, data_dir: Path) -> None:
    multi = SWEEP.replace("objective: {metric: map50, mode: max}",
                          "objective: [{metric: map50, mode: max}, {metric: ap/dog, mode: max}]\n"
                          "search_alg: {name: optuna}")
    assert _refused(tmp_path, multi).field == "objective[1].metric"
    constrained = SWEEP + "search_alg: {name: optuna}\nconstraints: [{metric: map_tiny, min: 0.1}]\n"
    err = _refused(tmp_path, constrained)
    assert err.field == "constraints[0].metric" and "'tiny'" in str(err)


def test_validate_exits_2_naming_file_and_field(tmp_path: Path, data_dir: Path) -> None:
    from sweeper.cli import app

    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(SWEEP.replace("metric: map50", "metric: ap/dog")))
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 2, res.output
    assert f"{path}: objective.metric: " in res.output and "no class 'dog'" in res.output
    assert "Traceback" not in res.output
