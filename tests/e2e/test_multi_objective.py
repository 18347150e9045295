"""A multi-objective search end to end: Optuna's multi-objective TPE proposes, MLflow records both
objectives, the leaderboard shows both and `sweeper report` draws the Pareto front."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import run_sweeper, write_sweep

pytestmark = pytest.mark.slow

SWEEP = """
name: mo
task: detection
data: {train: data/train.json, val: data/val.json, images: data/images, synth: {images: 10, size: 64, seed: 1}}
base:
  model: {arch: retinanet, backbone: resnet18, fpn_channels: 16}
  train: {epochs: 2, batch_size: 4, resolution: 64, warmup_epochs: 0}
search:
  train.lr: {loguniform: [1.0e-5, 1.0e-2]}
objective:
  - {metric: train/loss, mode: min}
  - {metric: map_small, mode: max}
scheduler: {name: fifo}
budget: {num_samples: 3, max_concurrent: 2}
"""


def test_multi_objective_search_reports_a_pareto_front(tmp_path: Path) -> None:
    write_sweep(tmp_path / "mo.yaml", SWEEP)
    assert "multi-objective" in run_sweeper(["launch", "mo.yaml", "--dry-run"], tmp_path, timeout=60, check=True).stdout
    run_sweeper(["launch", "mo.yaml"], tmp_path, timeout=400, check=True)
    board = json.loads(run_sweeper(["leaderboard", "mo", "--format", "json"], tmp_path, timeout=60, check=True).stdout)
    assert board["secondary"] == ["map_small"] and len(board["rows"]) == 3
    losses = [r["train/loss"] for r in board["rows"]]
    assert losses == sorted(losses) and all(r["map_small"] is not None for r in board["rows"])
    md = run_sweeper(["leaderboard", "mo", "--format", "markdown"], tmp_path, timeout=60, check=True).stdout
    assert md.splitlines()[0].startswith("| trial | status | epoch | train/loss | map_small | train.lr")
    run_sweeper(["report", "mo"], tmp_path, timeout=180, check=True)
    out = tmp_path / "reports" / "mo"
    assert (out / "figures" / "pareto.png").is_file()
    assert "Pareto" in (out / "report.md").read_text()
