"""Dependencies point one way: config and task specs load no torch, Ray or MLflow; task code loads
no Ray or MLflow; reading the leaderboard loads no Ray or Optuna. Each check is a fresh
interpreter, so nothing imported by another test can hide an import."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sweeper.registry import TASKS

ROOT = Path(__file__).resolve().parents[1]
TASK_MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "sweeper" / "tasks").rglob("*.py")
    if p.name != "command_guard.py"  # a script the command task runs, not a module to import
)


def _loaded_after(code: str) -> set[str]:
    """Top-level packages loaded by a fresh interpreter running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_config_and_every_task_spec_load_no_torch_ray_or_mlflow() -> None:
    code = "import sweeper.config, sweeper.registry\n" + "".join(
        f"sweeper.registry.get_spec({name!r})\n" for name in TASKS)
    assert not _loaded_after(code) & {"torch", "torchvision", "timm", "ray", "mlflow", "optuna"}


@pytest.mark.parametrize("module", TASK_MODULES)
def test_task_code_loads_no_ray_or_mlflow(module: str) -> None:
    assert not _loaded_after(f"import {module}") & {"ray", "mlflow", "optuna"}


def _store(tmp_path: Path) -> str:
    """A real sqlite MLflow store holding one launch of a searched noop sweep with one trial."""
    db = f"sqlite:///{tmp_path / 'mlruns.db'}"
    from mlflow import MlflowClient

    c = MlflowClient(db)
    exp = c.create_experiment("demo")
    parent = c.create_run(exp, tags={"sweeper.kind": "sweep", "sweeper.task": "noop", "sweeper.objective": "score",
                                     "sweeper.mode": "max", "sweeper.searched": '["x"]'})
    trial = c.create_run(exp, tags={"sweeper.kind": "trial", "sweeper.trial_id": "t1", "sweeper.status": "finished",
                                    "mlflow.parentRunId": parent.info.run_id})
    c.log_param(trial.info.run_id, "x", "0.3")
    for epoch, score in enumerate([0.9, 0.97], 1):
        c.log_metric(trial.info.run_id, "score", score, step=epoch)
        c.log_metric(trial.info.run_id, "epoch", epoch, step=epoch)
    c.log_metric(trial.info.run_id, "best_objective", 0.97)
    return db


def test_the_leaderboard_path_loads_no_ray_or_optuna(tmp_path: Path) -> None:
    """`sweeper leaderboard` on a real sqlite store, in a fresh interpreter."""
    db = _store(tmp_path)
    code = ("from sweeper.cli import app\n"
            f"app(['leaderboard', 'demo', '--tracking-uri', {db!r}], standalone_mode=False)")
    loaded = _loaded_after(code)
    assert "mlflow" in loaded and not loaded & {"ray", "optuna", "torch"}


def test_the_report_path_loads_no_ray(tmp_path: Path) -> None:
    """`sweeper report` reads MLflow and draws; Optuna only for importances (lazily), never Ray."""
    db = _store(tmp_path)
    code = ("from sweeper.cli import app\n"
            f"app(['report', 'demo', '--tracking-uri', {db!r}, '--out', {str(tmp_path / 'r')!r}], "
            "standalone_mode=False)")
    loaded = _loaded_after(code)
    assert (tmp_path / "r" / "report.md").is_file()
    assert "mlflow" in loaded and not loaded & {"ray", "torch"}
