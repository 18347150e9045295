"""Load: a 500-trial sweep of the no-op task through the real CLI, Ray and MLflow.

Exactly 500 MLflow child runs with correct statuses, and the driver's peak memory (measured
from /proc while it runs) stays bounded. The figures are printed for the issue note."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from .conftest import mlflow_client, start_sweeper, trial_runs, write_sweep

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from results_io import peak_rss_mb  # noqa: E402  (bench/ is a folder of scripts, not a package)

pytestmark = pytest.mark.slow

TRIALS = 500
SWEEP = f"""
name: load
task: noop
search:
  x: {{uniform: [0.0, 1.0]}}
  y: {{uniform: [0.0, 1.0]}}
objective: {{metric: score, mode: max}}
search_alg: {{name: random, seed: 0}}
scheduler: {{name: fifo}}
budget: {{num_samples: {TRIALS}, max_concurrent: 2}}
"""


def test_500_trials_give_500_runs_with_bounded_driver_memory(tmp_path: Path) -> None:
    write_sweep(tmp_path / "load.yaml", SWEEP)
    t0 = time.time()
    proc = start_sweeper(["launch", "load.yaml"], tmp_path)
    peak, samples = 0.0, []
    import threading

    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        rss = peak_rss_mb(proc.pid)
        if rss:
            peak = max(peak, rss)
            samples.append((time.time() - t0, rss))
        time.sleep(1)
    reader.join(timeout=30)
    wall = time.time() - t0
    assert proc.returncode == 0, "".join(out)[-4000:]
    c = mlflow_client(tmp_path)
    runs = trial_runs(c, "load", max_results=5000)
    assert len(runs) == TRIALS
    assert len({r.data.tags["sweeper.trial_id"] for r in runs}) == TRIALS
    assert all(r.data.tags["sweeper.status"] == "finished" and r.info.status == "FINISHED" for r in runs)
    assert all(0 <= r.data.metrics["score"] <= 1 for r in runs)
    parent = trial_runs(c, "load", kind="sweep")[0]
    assert parent.info.status == "FINISHED"
    # bounded: the high-water mark after the first 100 trials hardly grows over the next 400
    early = max((rss for t, rss in samples if t < wall * 0.2), default=peak)
    print(f"\nload test: {TRIALS} trials in {wall:.0f} s ({wall / TRIALS * 1000:.0f} ms per trial), "
          f"driver peak RSS {peak:.0f} MB (after the first fifth of the run: {early:.0f} MB)")
    assert peak < 2048
    assert peak < early * 1.5 + 100
