"""The command line: exit codes, error messages without tracebacks, eval and data commands."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweeper.cli import app

runner = CliRunner()

SWEEP = """
name: cli
task: detection
data: {train: d/train.json, val: d/val.json, images: d/images, synth: {images: 8, size: 64}}
base: {model: {backbone: resnet18}}
search: {train.lr: {loguniform: [1.0e-4, 1.0e-2]}}
objective: {metric: map50}
budget: {num_samples: 2}
"""


@pytest.fixture()
def sweep_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "cli.yaml"
    path.write_text(SWEEP)
    return path


def test_bad_sweep_exits_2_with_one_message(sweep_file: Path) -> None:
    sweep_file.write_text(SWEEP.replace("num_samples", "num_sampels"))
    res = runner.invoke(app, ["launch", str(sweep_file)])
    assert res.exit_code == 2
    assert f"{sweep_file}: budget.num_sampels: unknown key (did you mean 'num_samples'?)" in res.output
    assert "Traceback" not in res.output


def test_debug_shows_the_traceback(sweep_file: Path) -> None:
    sweep_file.write_text(SWEEP.replace("num_samples", "num_sampels"))
    res = runner.invoke(app, ["--debug", "launch", str(sweep_file)])
    assert res.exit_code != 0 and res.exception is not None


def test_validate_checks_timm_backbones(sweep_file: Path) -> None:
    assert runner.invoke(app, ["validate", str(sweep_file)]).exit_code == 0
    sweep_file.write_text(SWEEP.replace("backbone: resnet18", "backbone: resnet_18"))
    res = runner.invoke(app, ["validate", str(sweep_file)])
    assert res.exit_code == 2
    assert "base.model.backbone" in res.output and "resnet18" in res.output
    sweep_file.write_text(SWEEP.replace("base: {model: {backbone: resnet18}}", "base: {}"))
    res = runner.invoke(app, ["validate", str(sweep_file), "--set", "search.model.backbone={choice: [resnet18, resnett50]}"])
    assert res.exit_code == 2 and "search.model.backbone" in res.output and "resnett50" in res.output


def test_dry_run_prints_the_plan(sweep_file: Path) -> None:
    res = runner.invoke(app, ["launch", str(sweep_file), "--dry-run", "--set", "train.epochs=4"])
    assert res.exit_code == 0, res.output
    assert "train.lr" in res.output and "loguniform [0.0001, 0.01]" in res.output
    assert "train.epochs                   │ 4" in res.output or "train.epochs" in res.output
    assert "2 trials, at most 8 trial-epochs" in res.output


def test_data_synth(tmp_path: Path) -> None:
    res = runner.invoke(app, ["data", "synth", "--task", "detection", "--out", str(tmp_path / "s"), "--images", "8",
                              "--size", "64"])
    assert res.exit_code == 0, res.output
    train = json.loads((tmp_path / "s" / "train.json").read_text())
    assert len(train["categories"]) >= 3 and train["images"]


def test_eval_reproduces_the_coco_fixture(shared_fixtures: Path) -> None:
    d = shared_fixtures / "coco_fake100"
    res = runner.invoke(app, ["eval", "--task", "detection", "--gt", str(d / "instances_val2014_100.json"),
                              "--pred", str(d / "instances_val2014_fakebbox100_results.json"), "--format", "json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.output)
    assert metrics["map"] == pytest.approx(0.5045806987249628, abs=1e-12)
    assert metrics["map50"] == pytest.approx(0.6969727247299577, abs=1e-12)
    assert metrics["ar_large"] == pytest.approx(0.5642905982905982, abs=1e-12)
    assert "ap/person" in metrics
    table = runner.invoke(app, ["eval", "--gt", str(d / "instances_val2014_100.json"),
                                "--pred", str(d / "instances_val2014_fakebbox100_results.json")])
    assert table.exit_code == 0 and "map50" in table.output and "0.6970" in table.output


def test_eval_bad_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "gt.json").write_text("{not json")
    (tmp_path / "p.json").write_text("[]")
    res = runner.invoke(app, ["eval", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "p.json")])
    assert res.exit_code == 2 and "gt.json" in res.output


def test_leaderboard_unknown_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["leaderboard", "nope"])
    assert res.exit_code == 2 and "no MLflow store" in res.output
    assert not (tmp_path / "mlruns.db").exists()  # looking must not create a store


def test_dry_run_imports_neither_torch_nor_ray(sweep_file: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from sweeper.cli import app; "
            f"r = CliRunner().invoke(app, ['launch', {str(sweep_file)!r}, '--dry-run']); "
            "print(r.exit_code, sorted(m for m in ('torch', 'ray', 'mlflow', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0 []"


@pytest.mark.parametrize("metric, hmean", [("icdar15", 0.9134026630381961), ("cleval", 0.977989360950786),
                                           ("cleval_per_image", 0.965508315610499)])
def test_eval_dbnet_reproduces_the_receipt_fixture(shared_fixtures: Path, metric: str, hmean: float) -> None:
    d = shared_fixtures / "cleval_receipts_kr"
    res = runner.invoke(app, ["eval", "--task", "dbnet", "--metric", metric, "--gt", str(d / "gt_eval_doc_v1_kr.zip"),
                              "--pred", str(d / "res_eval_doc_v1_kr.zip"), "--format", "json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out) == {"precision", "recall", "hmean"}
    assert out["hmean"] == pytest.approx(hmean, abs=1e-9)


def test_eval_dbnet_unknown_metric_exits_2(shared_fixtures: Path) -> None:
    d = shared_fixtures / "cleval_receipts_kr"
    res = runner.invoke(app, ["eval", "--task", "dbnet", "--metric", "deteval", "--gt", str(d / "gt_eval_doc_v1_kr.zip"),
                              "--pred", str(d / "res_eval_doc_v1_kr.zip")])
    assert res.exit_code == 2 and "--metric" in res.output


def test_data_synth_dbnet_and_dbnet_sweep_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["data", "synth", "--task", "dbnet", "--out", "r", "--images", "4", "--size", "96"])
    assert res.exit_code == 0, res.output
    ufo = json.loads((tmp_path / "r" / "train.json").read_text())
    assert ufo["images"]
    sweep = tmp_path / "d.yaml"
    sweep.write_text("name: d\ntask: dbnet\ndata: {train: r/train.json, val: r/val.json, images: r/images}\n"
                     "search: {post.box_thresh: {uniform: [0.3, 0.6]}}\nobjective: {metric: hmean}\n")
    assert runner.invoke(app, ["validate", str(sweep)]).exit_code == 0
    bad = runner.invoke(app, ["validate", str(sweep), "--set", "data.format=coco"])
    assert bad.exit_code == 2 and "data.format" in bad.output and "ufo or icdar2015" in bad.output
    bad = runner.invoke(app, ["validate", str(sweep), "--set", "objective.metric=map50"])
    assert bad.exit_code == 2 and "hmean" in bad.output


def test_dbnet_sweep_without_data_says_how_to_get_some(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    repo_sweep = Path(__file__).resolve().parents[1] / "sweeps" / "dbnet.yaml"
    res = runner.invoke(app, ["launch", str(repo_sweep)])
    assert res.exit_code == 2
    assert "data.train" in res.output and "sweeper data synth --task dbnet" in res.output
    dry = runner.invoke(app, ["launch", str(repo_sweep), "--dry-run"])
    assert dry.exit_code == 0 and "post.box_thresh" in dry.output


def test_resume_without_an_experiment_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["resume", "nope"])
    assert res.exit_code == 2
    assert "no sweep experiment at 'nope'" in res.output and "runs/nope" in res.output


def test_dry_run_of_a_command_sweep_prints_the_first_command_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """sweeps/command-demo.yaml: the exact lines the first trials run, as the seeded sampler draws them."""
    import optuna

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    result = runner.invoke(app, ["launch", "sweeps/command-demo.yaml", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("trial ")]
    assert len(lines) == 3
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))  # what launch's searcher asks first
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    first = study.ask({"lr": FloatDistribution(1e-3, 0.5, log=True), "hidden": CategoricalDistribution([8, 32])}).params
    script = "tests/command_scripts/train_argparse.py"
    import sys

    assert lines[0] == (f"trial 1: {sys.executable} {script} --epochs 6 --sleep 1.0 "
                        f"--lr {first['lr']!r} --hidden {first['hidden']}")
    assert "overrides: argparse; metrics: stdout; checkpoint dir in $SWEEPER_CHECKPOINT_DIR" in result.output
