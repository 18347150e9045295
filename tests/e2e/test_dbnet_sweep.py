"""A DBNet sweep end to end on synthetic receipts: real Ray, real MLflow, the eval grid."""
from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import launch_sweep, mlflow_client, trial_runs

pytestmark = pytest.mark.slow

SWEEP = """
name: dbnet-e2e
task: dbnet
data: {train: r/train.json, val: r/val.json, images: r/images, synth: {images: 40, size: 256, seed: 0}}
base:
  model: {backbone: resnet18, decoder: unet, channels: 32}
  train: {epochs: 4, batch_size: 4, resolution: 256, warmup_epochs: 0.5, lr: 4.0e-3}
  post: {thresh: 0.5, box_thresh: 0.5}        # the defaults are a grid point
eval_grid:
  post.box_thresh: [0.3, 0.5]
  post.thresh: [0.4, 0.5]
objective: {metric: hmean, mode: max}
scheduler: {name: fifo}
budget: {num_samples: 1}
resources: {cpu: 1}
"""


def test_dbnet_sweep_improves_hmean_and_logs_the_chosen_grid_point(tmp_path: Path) -> None:
    proc = launch_sweep(tmp_path, SWEEP, file="s.yaml", timeout=600)
    assert "1 finished" in proc.stdout
    c = mlflow_client(tmp_path)
    runs = trial_runs(c, "dbnet-e2e")
    assert len(runs) == 1
    for run in runs:
        m = run.data.metrics
        for key in ("precision", "recall", "hmean", "default/hmean", "best/post.box_thresh", "best/post.thresh"):
            assert key in m, key
        assert m["best/post.box_thresh"] in (0.3, 0.5) and m["best/post.thresh"] in (0.4, 0.5)
        assert m["hmean"] >= m["default/hmean"]  # the defaults are one of the grid points
        history = [h.value for h in c.get_metric_history(run.info.run_id, "train/loss")]
        assert len(history) == 4 and history[-1] < history[0]
        hmean = [h.value for h in sorted(c.get_metric_history(run.info.run_id, "hmean"), key=lambda h: h.step)]
        assert hmean[-1] > hmean[0] and hmean[-1] > 0.3, hmean  # it learns to read receipts
