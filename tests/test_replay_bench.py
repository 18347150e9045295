"""bench/replay.py end to end on a small fabricated curve set: the JSON the README table is made from."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_replay import crossing_curves  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_replay_bench_writes_every_scheduler_per_set_and_worker_count(tmp_path: Path) -> None:
    curves = [{"config": {"i": i}, "seed": seed, "values": list(c.values), "epoch_s": list(c.epoch_s)}
              for seed in (0, 1) for i, c in enumerate(crossing_curves(24, 6, seed=seed))]
    (tmp_path / "curves").mkdir()
    (tmp_path / "curves" / "fab.json").write_text(json.dumps(
        {"name": "fab", "objective": "acc", "mode": "max", "epochs": 6, "made_by": "test",
         "settings": {"train": {"warmup_epochs": 1}}, "curves": curves}))
    out = tmp_path / "replay.json"
    run = subprocess.run([sys.executable, "bench/replay.py", "--quick", "--curves", str(tmp_path / "curves"),
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["default"] == "default" and doc["default_settings"]["grace_period"] == "auto"
    fab = doc["curve_sets"]["fab"]
    assert fab["configs"] == 24 and fab["seeds"] == 2 and fab["warmup_epochs"] == 1
    names = set(fab["schedulers"])
    assert {"fifo", "ray-asha", "default", "hyperband", "median-stopping", "top-k-after-1", "random-2x",
            "pasha"} <= names
    fifo = fab["schedulers"]["fifo"]
    assert fifo["compute_fraction"] == 1.0 and fifo["regret"] == 0.0 and fifo["regret_p90"] == 0.0
    for s in fab["schedulers"].values():
        assert set(s) >= {"compute_fraction", "cost_fraction", "regret", "regret_p90", "workers"}
        assert list(s["workers"]) == ["2"] and s["regret"] <= s["regret_p90"]
        assert 0 < s["compute_fraction"] <= 1
    assert set(fab["target"]) == {"regret_le_1pct", "compute_le_33pct", "cost_le_33pct", "regret_vs_ray_asha",
                                  "compute_default_vs_ray_asha"}
    assert fab["target"]["regret_vs_ray_asha"] in ("better", "equal", "worse")
    assert "fab (24 configs x 2 seeds, 6 epochs)" in run.stdout
