"""The small-object knobs end to end: a sweep searching `augment.mosaic_ratio` and
`loss.size_weights.small` (RetinaNet + PAFPN, NMS IoU in the eval grid, a custom size range)
through the real CLI, Ray and MLflow; each trial's confusion matrix lands in its MLflow run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import launch_sweep, mlflow_client, trial_runs

pytestmark = pytest.mark.slow

SWEEP = """
name: small
task: detection
data: {train: data/train.json, val: data/val.json, images: data/images, synth: {images: 10, size: 64, seed: 1}}
base:
  model: {arch: retinanet, backbone: resnet18, neck: pafpn, fpn_channels: 16}
  train: {epochs: 2, batch_size: 4, resolution: 64, warmup_epochs: 0, lr: 0.001, optimizer: adamw}
  augment: {mosaic_until: 0.5}
  loss: {size_thresholds: [12, 24]}
  eval: {area_ranges: {tiny: [0, 8]}, confusion_score: 0.0}
search:
  augment.mosaic_ratio: {uniform: [0.0, 1.0]}
  loss.size_weights.small: {uniform: [1.0, 4.0]}
eval_grid:
  post.nms_iou: [0.4, 0.6]
objective: {metric: map50, mode: max}
scheduler: {name: fifo}
budget: {num_samples: 2, max_concurrent: 2}
checkpoint: {min_interval_s: 0}
"""


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("small")
    launch_sweep(cwd, SWEEP, file="small.yaml", timeout=600)
    return cwd


def test_each_trial_trained_its_own_knobs_and_reported_the_size_metrics(sweep_dir: Path) -> None:
    c = mlflow_client(sweep_dir)
    runs = trial_runs(c, "small")
    assert len(runs) == 2
    ratios = {float(r.data.params["augment.mosaic_ratio"]) for r in runs}
    weights = {float(r.data.params["loss.size_weights.small"]) for r in runs}
    assert len(ratios) == 2 and all(0 <= v <= 1 for v in ratios)
    assert len(weights) == 2 and all(1 <= v <= 4 for v in weights)
    for r in runs:
        assert r.data.tags["sweeper.status"] == "finished"
        m = r.data.metrics
        assert {"map50", "map_small", "map_tiny", "ar_tiny", "best/post.nms_iou"} <= set(m)
        assert m["best/post.nms_iou"] in (0.4, 0.6)
        # the epoch history: both epochs logged once
        assert [h.step for h in c.get_metric_history(r.info.run_id, "train/loss")] == [1, 2]
        files = {a.path for a in c.list_artifacts(r.info.run_id, "artifacts")}
        assert files == {"artifacts/confusion_matrix.json", "artifacts/confusion_matrix.png"}
        local = c.download_artifacts(r.info.run_id, "artifacts/confusion_matrix.json", str(sweep_dir))
        matrix = json.loads(Path(local).read_text())
        assert matrix["names"][-1] == "background" and matrix["score"] == 0.0
