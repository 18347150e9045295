"""Data keys, folds and named variants end to end on CPU: a full-factorial ablation of a named
variant (which also trains on another file) x the held-out fold, through the real CLI, Ray and
MLflow, then `--group variant` (pooled over folds) and `--group data.fold` from what MLflow holds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import run_sweeper, trial_runs, write_sweep

pytestmark = pytest.mark.slow

SWEEP = """
name: cv
task: detection
data:
  train: data/train.json
  val: data/val.json
  images: data/images
  synth: {images: 16, size: 64, seed: 1}
  folds: {k: 2, seed: 0}
  fold: 0
base:
  model: {arch: retinanet, backbone: resnet18, fpn_channels: 16}
  train: {epochs: 1, batch_size: 4, resolution: 64, warmup_epochs: 0, lr: 0.001, optimizer: adamw}
ablation:
  factors: {data.fold: [1]}
  variants:
    small: {model.fpn_channels: 8, data.train: data/train_half.json}
  full_factorial: true
  seeds: 2
objective: {metric: train/loss, mode: min}
budget: {max_concurrent: 2}
"""
VARIANTS = ["baseline", "data.fold=1", "small", "small,data.fold=1"]


@pytest.fixture(scope="module")
def cv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sweeper.tasks.detection.synth import make_synthetic_coco

    cwd = tmp_path_factory.mktemp("cv")
    make_synthetic_coco(cwd / "data", images=16, size=64, seed=1)  # what data.synth would make
    train = json.loads((cwd / "data" / "train.json").read_text())
    images = train["images"][: len(train["images"]) // 2]
    ids = {im["id"] for im in images}
    (cwd / "data" / "train_half.json").write_text(json.dumps(
        {**train, "images": images, "annotations": [a for a in train["annotations"] if a["image_id"] in ids]}))
    write_sweep(cwd / "cv.yaml", SWEEP)
    dry = run_sweeper(["launch", "cv.yaml", "--dry-run"], cwd, timeout=60, check=True)
    assert all(v in dry.stdout for v in VARIANTS) and "8 trials" in dry.stdout
    run_sweeper(["launch", "cv.yaml"], cwd, timeout=500, check=True)
    return cwd


def test_every_variant_trained_on_its_data_and_fold(cv: Path) -> None:
    runs = trial_runs(cv, "cv")
    seen = sorted((r.data.tags["sweeper.variant"], r.data.tags["sweeper.seed"]) for r in runs)
    assert seen == [(v, s) for v in sorted(VARIANTS) for s in ("0", "1")]
    for r in runs:
        variant, p = r.data.tags["sweeper.variant"], r.data.params
        assert r.data.tags["sweeper.status"] == "finished"
        assert p["data.fold"] == ("1" if "data.fold=1" in variant else "0")
        small = variant.startswith("small")
        # the trial's own value as written; the baseline's from its reported config (absolute)
        assert p["data.train"] == ("data/train_half.json" if small else str(cv / "data" / "train.json"))
        assert p["model.fpn_channels"] == ("8" if small else "16")
        assert p["data.folds.k"] == "2" and "map" in r.data.metrics  # evaluated on the held-out fold


def test_group_variant_pools_the_folds_and_group_fold_splits_them(cv: Path) -> None:
    from sweeper import stats

    proc = run_sweeper(["leaderboard", "cv", "--group", "variant", "--format", "json"], cv, timeout=60, check=True)
    rows = {r["variant"]: r for r in json.loads(proc.stdout)["rows"]}
    runs = trial_runs(cv, "cv")
    groups: dict[str, dict[str, float]] = {}
    for r in runs:
        recipe = "small" if r.data.tags["sweeper.variant"].startswith("small") else "baseline"
        unit = f"seed {r.data.tags['sweeper.seed']}, fold {r.data.params['data.fold']}"
        groups.setdefault(recipe, {})[unit] = r.data.metrics["train/loss"]
    expected = {r["variant"]: r for r in stats.ablation_table(groups, "baseline", "min")}
    assert set(rows) == {"baseline", "small"} and all(rows[v]["n"] == 4 for v in rows)
    assert rows["small"]["test"] == "paired t"
    for v, row in rows.items():
        assert row["train/loss mean"] == pytest.approx(expected[v]["mean"])
    assert rows["small"]["p (Holm)"] == pytest.approx(expected["small"]["p_holm"], nan_ok=True)

    proc = run_sweeper(["leaderboard", "cv", "--group", "data.fold", "--format", "json"], cv, timeout=60, check=True)
    cells = [(r["variant"], r["data.fold"], r["n"]) for r in json.loads(proc.stdout)["rows"]]
    assert cells == [("baseline", "0", 2), ("baseline", "1", 2), ("small", "0", 2), ("small", "1", 2)]
