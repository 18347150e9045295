"""An ablation end to end on CPU: 2 factors x 2 seeds through the real CLI, Ray and MLflow,
then `sweeper leaderboard --group variant` and `sweeper report` checked against what MLflow holds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SWEEPER = [sys.executable, "-m", "sweeper.cli"]

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


def cli(args: list[str], cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    proc = subprocess.run([*SWEEPER, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def ablation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("ablation")
    (cwd / "abl.yaml").write_text(textwrap.dedent(SWEEP))
    dry = cli(["launch", "abl.yaml", "--dry-run"], cwd, timeout=60)
    assert "ablation plan" in dry.stdout and "train.lr: 0.001 -> 1e-05" in dry.stdout
    cli(["launch", "abl.yaml"], cwd)
    return cwd


def _runs(cwd: Path) -> list:
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{cwd / 'mlruns.db'}")
    exp = c.get_experiment_by_name("abl")
    return c.search_runs([exp.experiment_id], "tags.`sweeper.kind` = 'trial'")


def test_every_variant_ran_with_every_seed_and_only_its_change(ablation: Path) -> None:
    runs = _runs(ablation)
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

    proc = cli(["leaderboard", "abl", "--group", "variant", "--format", "json"], ablation, timeout=60)
    rows = {r["variant"]: r for r in json.loads(proc.stdout)["rows"]}
    groups: dict[str, dict[int, float]] = {}
    for r in _runs(ablation):
        groups.setdefault(r.data.tags["sweeper.variant"], {})[int(r.data.tags["sweeper.seed"])] = r.data.metrics["train/loss"]
    expected = {r["variant"]: r for r in stats.ablation_table(groups, "baseline", "min")}
    assert set(rows) == set(expected) and all(rows[v]["n"] == 2 for v in rows)
    for v, row in rows.items():
        assert row["train/loss mean"] == pytest.approx(expected[v]["mean"])
        if v != "baseline":
            assert row["p (Holm)"] == pytest.approx(expected[v]["p_holm"], nan_ok=True)
    md = cli(["leaderboard", "abl", "--group", "variant", "--format", "markdown"], ablation, timeout=60).stdout
    assert md.splitlines()[0].startswith("| variant | n | train/loss mean | ± 95% CI | Δ vs baseline | p (Holm)")


def test_report_files_hold_the_numbers_mlflow_holds(ablation: Path) -> None:
    from sweeper import stats

    proc = cli(["report", "abl"], ablation, timeout=180)
    out = ablation / "reports" / "abl"
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "wrote" in proc.stdout
    groups: dict[str, dict[int, float]] = {}
    for r in _runs(ablation):
        groups.setdefault(r.data.tags["sweeper.variant"], {})[int(r.data.tags["sweeper.seed"])] = r.data.metrics["train/loss"]
    for row in stats.ablation_table(groups, "baseline", "min"):
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {row['variant']} |"))
        assert f"{row['mean']:.4f}" in line
        assert row["variant"] in html
    pngs = sorted((out / "figures").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert html.count('src="data:image/png;base64,') >= len(pngs)
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{ablation / 'mlruns.db'}")
    exp = c.get_experiment_by_name("abl")
    parent = c.search_runs([exp.experiment_id], "tags.`sweeper.kind` = 'sweep'")[0]
    assert {a.path for a in c.list_artifacts(parent.info.run_id, "report")} >= {"report/report.md", "report/report.html"}
