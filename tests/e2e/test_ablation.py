"""An ablation end to end on CPU: 2 factors x 2 seeds through the real CLI, Ray and MLflow,
then `sweeper leaderboard --group variant` and `sweeper report` checked against what MLflow holds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import mlflow_client, run_sweeper, trial_runs, write_sweep

pytestmark = pytest.mark.slow

SWEEP = """
name: abl
task: detection
data: {train: data/train.json, val: data/val.json, images: data/images, synth: {images: 10, size: 64, seed: 1}}
base:
  model: {arch: retinanet, backbone: resnet18, fpn_channels: 16}
  train: {epochs: 2, batch_size: 4, resolution: 64, warmup_epochs: 0, lr: 0.001, optimizer: adamw}
ablation:
  factors:
    train.lr: [0.00001]
    model.fpn_channels: [8]
  seeds: 2
objective: {metric: train/loss, mode: min}
budget: {max_concurrent: 2}
"""


@pytest.fixture(scope="module")
def ablation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("ablation")
    write_sweep(cwd / "abl.yaml", SWEEP)
    dry = run_sweeper(["launch", "abl.yaml", "--dry-run"], cwd, timeout=60, check=True)
    assert "ablation plan" in dry.stdout and "train.lr: 0.001 -> 1e-05" in dry.stdout
    run_sweeper(["launch", "abl.yaml"], cwd, timeout=400, check=True)
    return cwd


def test_every_variant_ran_with_every_seed_and_only_its_change(ablation: Path) -> None:
    runs = trial_runs(ablation, "abl")
    seen = sorted((r.data.tags["sweeper.variant"], r.data.tags["sweeper.seed"]) for r in runs)
    assert seen == [(v, s) for v in ("baseline", "model.fpn_channels=8", "train.lr=1e-05") for s in ("0", "1")]
    base = {r.data.tags["sweeper.seed"]: r.data.params for r in runs if r.data.tags["sweeper.variant"] == "baseline"}
    for r in runs:
        assert r.data.tags["sweeper.status"] == "finished"
        p, b = r.data.params, base[r.data.tags["sweeper.seed"]]
        assert p["train.seed"] == r.data.tags["sweeper.seed"]
        changed = {k for k in b if p.get(k) != b[k]}
        expected = {"baseline": set(), "train.lr=1e-05": {"train.lr"},
                    "model.fpn_channels=8": {"model.fpn_channels"}}[r.data.tags["sweeper.variant"]]
        assert changed == expected


def test_grouped_leaderboard_matches_mlflow(ablation: Path) -> None:
    from sweeper import stats

    proc = run_sweeper(["leaderboard", "abl", "--group", "variant", "--format", "json"], ablation, timeout=60,
                       check=True)
    rows = {r["variant"]: r for r in json.loads(proc.stdout)["rows"]}
    groups: dict[str, dict[int, float]] = {}
    for r in trial_runs(ablation, "abl"):
        groups.setdefault(r.data.tags["sweeper.variant"], {})[int(r.data.tags["sweeper.seed"])] = r.data.metrics["train/loss"]
    expected = {r["variant"]: r for r in stats.ablation_table(groups, "baseline", "min")}
    assert set(rows) == set(expected) and all(rows[v]["n"] == 2 for v in rows)
    for v, row in rows.items():
        assert row["train/loss mean"] == pytest.approx(expected[v]["mean"])
        if v != "baseline":
            assert row["p (Holm)"] == pytest.approx(expected[v]["p_holm"], nan_ok=True)
    md = run_sweeper(["leaderboard", "abl", "--group", "variant", "--format", "markdown"], ablation, timeout=60,
                     check=True).stdout
    assert md.splitlines()[0].startswith("| variant | n | train/loss mean | ± 95% CI | Δ vs baseline | p (Holm)")


def test_report_files_hold_the_numbers_mlflow_holds(ablation: Path) -> None:
    from sweeper import stats

    proc = run_sweeper(["report", "abl"], ablation, timeout=180, check=True)
    out = ablation / "reports" / "abl"
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "wrote" in proc.stdout
    groups: dict[str, dict[int, float]] = {}
    for r in trial_runs(ablation, "abl"):
        groups.setdefault(r.data.tags["sweeper.variant"], {})[int(r.data.tags["sweeper.seed"])] = r.data.metrics["train/loss"]
    for row in stats.ablation_table(groups, "baseline", "min"):
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {row['variant']} |"))
        assert f"{row['mean']:.4f}" in line
        assert row["variant"] in html
    pngs = sorted((out / "figures").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert html.count('src="data:image/png;base64,') >= len(pngs)
    c = mlflow_client(ablation)
    parent = trial_runs(c, "abl", kind="sweep")[0]
    assert {a.path for a in c.list_artifacts(parent.info.run_id, "report")} >= {"report/report.md", "report/report.html"}
