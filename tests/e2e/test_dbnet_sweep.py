"""A DBNet sweep end to end on synthetic receipts: real Ray, real MLflow, the eval grid."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SWEEP = """
name: dbnet-e2e
task: dbnet
data: {train: r/train.json, val: r/val.json, images: r/images, synth: {images: 12, size: 128, seed: 2}}
base:
  model: {backbone: resnet18, channels: 16}
  train: {epochs: 3, batch_size: 4, resolution: 128, warmup_epochs: 0, lr: 3.0e-3}
  post: {thresh: 0.3, box_thresh: 0.3}        # the defaults are a grid point
search:
  model.decoder: {grid: [unet, fpn]}
eval_grid:
  post.box_thresh: [0.3, 0.5]
  post.thresh: [0.2, 0.3]
objective: {metric: hmean, mode: max}
search_alg: {name: grid}
scheduler: {name: fifo}
budget: {num_samples: 1}
resources: {cpu: 1}
"""


def test_dbnet_sweep_logs_hmean_per_epoch_and_the_chosen_grid_point(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(textwrap.dedent(SWEEP))
    proc = subprocess.run([sys.executable, "-m", "sweeper.cli", "launch", "s.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 finished" in proc.stdout
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = c.get_experiment_by_name("dbnet-e2e")
    runs = c.search_runs([exp.experiment_id], "tags.`sweeper.kind` = 'trial'")
    assert sorted(r.data.params["model.decoder"] for r in runs) == ["fpn", "unet"]
    for run in runs:
        m = run.data.metrics
        for key in ("precision", "recall", "hmean", "default/hmean", "best/post.box_thresh", "best/post.thresh"):
            assert key in m, key
        assert m["best/post.box_thresh"] in (0.3, 0.5) and m["best/post.thresh"] in (0.2, 0.3)
        assert m["hmean"] >= m["default/hmean"]  # the defaults are one of the grid points
        history = [h.value for h in c.get_metric_history(run.info.run_id, "train/loss")]
        assert len(history) == 3 and history[-1] < history[0]
