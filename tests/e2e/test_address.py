"""`--address auto`: join a running Ray cluster; a diverging trial fails and the sweep goes on."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import RayNode, free_port, launch_sweep, run_sweeper

pytestmark = pytest.mark.slow

SWEEP = """
name: joined
task: detection
data: {train: data/train.json, val: data/val.json, images: data/images, synth: {images: 8, size: 64, seed: 1}}
base:
  model: {arch: retinanet, backbone: resnet18, fpn_channels: 16}
  train: {epochs: 2, batch_size: 2, resolution: 64, warmup_epochs: 0}
search:
  train.lr: {grid: [1.0e+10, 1.0e-3]}     # the first diverges: NaN loss in epoch 1
objective: {metric: map50}
search_alg: {name: grid}
scheduler: {name: fifo}
budget: {num_samples: 1}
"""


@pytest.fixture()
def ray_head(tmp_path: Path) -> Iterator[RayNode]:
    """A real Ray head started with `ray start --block`, stopped by its session."""
    head = RayNode(["--head", f"--port={free_port()}", "--num-cpus=2", "--include-dashboard=false",
                    "--node-ip-address=127.0.0.1"], tmp_path / "head.log", timeout=60)
    try:
        yield head
    finally:
        head.stop()


def test_launch_joins_a_running_cluster_and_survives_a_diverging_trial(tmp_path: Path, ray_head) -> None:  # noqa: ANN001
    proc = launch_sweep(tmp_path, SWEEP, "--address", "auto", file="s.yaml", timeout=300)
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert "1 finished, 0 stopped early by ASHA, 1 failed of 2 trials" in proc.stdout
    board = json.loads(run_sweeper(["leaderboard", "joined", "--format", "json"], tmp_path, check=True).stdout)
    rows = board["rows"]
    assert [r["status"] for r in rows] == ["finished", "diverged"]  # failed trials sort last
    assert float(rows[1]["train.lr"]) == 1e10
    assert "NonFiniteLossError" in rows[1]["error"] and "non-finite training loss" in rows[1]["error"]
    assert rows[0]["epoch"] == 2
