"""The recorded learning curves under bench/curves/ (the replay benchmark's data, made by
bench/record_curves.py): every committed file has the agreed format (the keys bench/replay.py and
`sweeper diagnose` read), the sizes the benchmark promises, finite values in range, and curves
that are not all alike; plus the recorder's pure helpers and its `--quick` mode end to end."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
CURVES = BENCH / "curves"
sys.path.insert(0, str(BENCH))
import record_curves  # noqa: E402  (bench/ is a folder of scripts, not a package)

KEYS = {"name", "objective", "mode", "epochs", "made_by", "made_on", "recorded", "settings", "curves"}
CURVE_KEYS = {"config", "seed", "values", "epoch_s"}
#: set -> (objective, least curves, least configurations, least epochs, seeds per configuration)
PROMISED = {"digits": ("accuracy", 200, 200, 20, 1), "dbnet": ("hmean", 18, 18, 8, 1),
            "detection": ("map50", 54, 27, 8, 2)}


def check_curve_file(path: Path) -> dict[str, Any]:
    """Load one curve-set file and check its format; returns the document."""
    doc = json.loads(path.read_text())
    assert set(doc) == KEYS, f"{path.name}: keys {sorted(doc)}"
    assert doc["name"] == path.stem and doc["mode"] in ("max", "min")
    assert doc["made_by"].startswith(f"python bench/record_curves.py {doc['name']}")
    assert isinstance(doc["settings"], dict) and isinstance(doc["epochs"], int) and doc["epochs"] >= 1
    worst = 0.0 if doc["mode"] == "max" else None
    seen = set()
    for i, curve in enumerate(doc["curves"]):
        where = f"{path.name} curve {i}"
        assert set(curve) == CURVE_KEYS, f"{where}: keys {sorted(curve)}"
        assert isinstance(curve["config"], dict) and curve["config"], where
        assert all(isinstance(k, str) and "." in k for k in curve["config"]), f"{where}: dotted keys"
        assert isinstance(curve["seed"], int), where
        key = (json.dumps(curve["config"], sort_keys=True), curve["seed"])
        assert key not in seen, f"{where}: the same configuration and seed twice"
        seen.add(key)
        assert len(curve["values"]) == len(curve["epoch_s"]) == doc["epochs"], where
        for v in curve["values"]:
            assert isinstance(v, (int, float)) and math.isfinite(v), f"{where}: value {v!r}"
            if worst is not None:  # accuracy, hmean, map50: fractions
                assert 0.0 <= v <= 1.0, f"{where}: value {v!r}"
        assert all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in curve["epoch_s"]), where
    diverged = doc["settings"].get("diverged", [])
    assert all(0 <= d["curve"] < len(doc["curves"]) and 1 <= d["epoch"] <= doc["epochs"] for d in diverged)
    return doc


def committed() -> list[Path]:
    return sorted(CURVES.glob("*.json"))


def test_every_promised_set_is_committed() -> None:
    assert {p.stem for p in committed()} >= set(PROMISED)


@pytest.mark.parametrize("path", committed(), ids=lambda p: p.stem)
def test_committed_curve_file(path: Path) -> None:
    doc = check_curve_file(path)
    if doc["name"] not in PROMISED:
        return
    objective, least_curves, least_configs, least_epochs, seeds = PROMISED[doc["name"]]
    curves = doc["curves"]
    configs = {json.dumps(c["config"], sort_keys=True) for c in curves}
    assert doc["objective"] == objective and doc["mode"] == "max" and not doc["made_by"].endswith("--quick")
    assert doc["epochs"] >= least_epochs
    # a set whose recording was stopped early says so (`settings.partial`); it still holds >= 8 curves
    partial = doc["settings"].get("partial")
    if partial is not None:  # the promised sizes and spread hold only once it is complete
        assert isinstance(partial, str) and len(curves) >= 8
        return
    assert len(curves) >= least_curves and len(configs) >= least_configs
    per_config = {cfg: sum(json.dumps(c["config"], sort_keys=True) == cfg for c in curves) for cfg in configs}
    assert set(per_config.values()) == {seeds}, "every configuration has the same number of seeds"
    assert len({c["seed"] for c in curves}) == seeds
    # meaningful: the finals spread (a benchmark where every configuration ties measures nothing),
    # the best final is well above the worst value, and the curves move over the epochs
    finals = sorted(c["values"][-1] for c in curves)
    assert finals[-1] >= 0.1 and finals[-1] - finals[len(finals) // 2] > 0.005
    assert len(set(finals)) >= len(finals) // 4
    assert sum(c["values"][-1] != c["values"][0] for c in curves) >= len(curves) // 2
    # a knob changes an epoch's cost where the set promises cost-weighted compute (at these tiny
    # sizes evaluation and per-step overhead dominate: 96 px epochs cost ~10% more than 64 px ones)
    if doc["name"] == "detection":
        by_res: dict[int, list[float]] = {}
        for c in curves:
            by_res.setdefault(c["config"]["train.resolution"], []).extend(c["epoch_s"])
        means = [sum(v) / len(v) for _, v in sorted(by_res.items())]
        assert len(means) >= 2 and means[-1] > means[0]


def test_helpers() -> None:
    assert record_curves.sig(0.123456789) == 0.12346 and record_curves.sig(0.0) == 0.0
    assert record_curves.sig(1234567.0) == 1234600.0
    assert record_curves.log_grid(1e-4, 1e-2, 3) == [1e-4, 1e-3, 1e-2]
    assert record_curves.grid({"a.x": [1, 2], "b.y": ["u"]}) == [{"a.x": 1, "b.y": "u"}, {"a.x": 2, "b.y": "u"}]
    curves = [{"values": [0.1, 0.5, v]} for v in (0.2, 0.3, 0.4)]
    assert record_curves.spearman_by_epoch(curves) == {1: None, 2: None, 3: 1.0}
    curves = [{"values": [e, v]} for e, v in ((0.3, 0.1), (0.2, 0.2), (0.1, 0.3))]
    assert record_curves.spearman_by_epoch(curves) == {1: -1.0, 2: 1.0}


def test_plans_are_the_promised_sizes() -> None:
    digits = record_curves.digits_plan(quick=False)
    assert len(digits["jobs"]) >= 200 and digits["epochs"] >= 20
    dbnet, det = record_curves.task_plan("dbnet", quick=False), record_curves.task_plan("detection", quick=False)
    assert len(dbnet["jobs"]) >= 18 and dbnet["epochs"] >= 8
    assert len(det["jobs"]) >= 54 and det["epochs"] >= 8 and {j["seed"] for j in det["jobs"]} == {0, 1}


@pytest.mark.slow
def test_quick_digits_recording(tmp_path: Path) -> None:
    """The recorder end to end on a tiny digits grid (real torch training, ~15 s on a quiet
    machine): the file it writes passes the format check, and a rerun takes every curve from the
    cache (and trains nothing)."""
    cmd = [sys.executable, str(BENCH / "record_curves.py"), "digits", "--quick", "--out", str(tmp_path),
           "--cache", str(tmp_path / "cache.jsonl"), "--processes", "1"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    doc = check_curve_file(tmp_path / "digits.json")
    assert doc["made_by"].endswith("--quick") and len(doc["curves"]) == 2 and doc["epochs"] == 3
    assert any(v > 0.1 for c in doc["curves"] for v in c["values"])  # it learned something
    rerun = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    assert "2 from" in rerun.stdout and json.loads((tmp_path / "digits.json").read_text())["curves"] == doc["curves"]
