"""`sweeper data stats`: table, JSON, plot, a sweep file as input, and errors with exit 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweeper.cli import app

runner = CliRunner()

COCO = {
    "images": [{"id": 1}, {"id": 2}, {"id": 3}],
    "categories": [{"id": 1, "name": "bolt"}, {"id": 2, "name": "nut"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 6, 6], "area": 36},      # 6 px
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 12, 12], "area": 144},   # 12 px
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0, 0, 20, 20], "area": 400},   # 20 px
        {"id": 4, "image_id": 2, "category_id": 2, "bbox": [0, 0, 50, 50], "area": 2500},  # 50 px
    ],  # image 3 has no boxes
}
SWEEP = """
name: stats
task: detection
data: {train: d/train.json, val: d/val.json, images: d/images}
objective: {metric: map50}
search: {train.lr: {loguniform: [1.0e-4, 1.0e-2]}}
"""


@pytest.fixture()
def coco_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    path = tmp_path / "d" / "train.json"
    path.write_text(json.dumps(COCO))
    return path


def test_table(coco_file):
    res = runner.invoke(app, ["data", "stats", str(coco_file)])
    assert res.exit_code == 0, res.output
    assert "3 images, 4 boxes (0 crowd boxes left out), 1 images without boxes" in res.output
    assert "small" in res.output and "bolt" in res.output and "3 (75%)" in res.output


def test_json_with_thresholds_and_plot(coco_file, tmp_path):
    res = runner.invoke(app, ["data", "stats", str(coco_file), "--thresholds", "8,16,32", "--format", "json",
                              "--plot", str(tmp_path / "sizes.png")])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)  # the plot's message goes to stderr: stdout stays JSON
    assert stats["totals"] == {"0-8": 1, "8-16": 1, "16-32": 1, ">=32": 1}
    assert stats["per_class"]["nut"]["total"] == 2 and stats["images_without_boxes"] == 1
    assert (tmp_path / "sizes.png").stat().st_size > 1000


def test_sweep_file_uses_data_train(coco_file, tmp_path):
    sweep = tmp_path / "stats.yaml"
    sweep.write_text(SWEEP)
    res = runner.invoke(app, ["data", "stats", str(sweep), "--format", "json"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)
    assert stats["file"] == str(coco_file) and stats["boxes"] == 4


@pytest.mark.parametrize("args, message", [
    (["missing.json"], "missing.json: COCO annotation file not found"),
    (["d/train.json", "--thresholds", "96,32"], "--thresholds: need one or more positive, increasing sizes"),
    (["bad.json"], "bad.json: missing top-level key 'images'"),
    (["bad.yaml"], "bad.yaml"),
])
def test_errors_exit_2_without_traceback(coco_file, tmp_path, args, message):
    (tmp_path / "bad.json").write_text('{"annotations": []}')
    (tmp_path / "bad.yaml").write_text("name: x\ntask: detection\nobjectiv: {metric: map}\n")
    res = runner.invoke(app, ["data", "stats", *args])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
