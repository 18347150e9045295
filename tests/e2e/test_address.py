"""`--address auto`: join a running Ray cluster; a diverging trial fails and the sweep goes on."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def ray_head(tmp_path: Path):  # noqa: ANN201
    """A real Ray head started with `ray start --block`, stopped by its process group."""
    ray = Path(sys.executable).parent / "ray"
    head = subprocess.Popen([str(ray), "start", "--head", f"--port={free_port()}", "--num-cpus=2",
                             "--include-dashboard=false", "--node-ip-address=127.0.0.1", "--block"],
                            stdout=(tmp_path / "head.log").open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and "Ray runtime started" not in (tmp_path / "head.log").read_text():
            assert head.poll() is None, (tmp_path / "head.log").read_text()
            time.sleep(0.5)
        yield head
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)


def test_launch_joins_a_running_cluster_and_survives_a_diverging_trial(tmp_path: Path, ray_head) -> None:  # noqa: ANN001
    (tmp_path / "s.yaml").write_text(textwrap.dedent(SWEEP))
    proc = subprocess.run([sys.executable, "-m", "sweeper.cli", "launch", "s.yaml", "--address", "auto"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert "1 finished, 0 stopped early by ASHA, 1 failed of 2 trials" in proc.stdout
    board = json.loads(subprocess.run([sys.executable, "-m", "sweeper.cli", "leaderboard", "joined", "--format", "json"],
                                      cwd=tmp_path, capture_output=True, text=True, check=True).stdout)
    rows = board["rows"]
    assert [r["status"] for r in rows] == ["finished", "diverged"]  # failed trials sort last
    assert float(rows[1]["train.lr"]) == 1e10
    assert "NonFiniteLossError" in rows[1]["error"] and "non-finite training loss" in rows[1]["error"]
    assert rows[0]["epoch"] == 2
