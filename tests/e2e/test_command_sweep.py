"""`task: command` end to end: real scripts as trials on real Ray, recorded in real MLflow.

(a) a Hydra + Lightning script, Hydra overrides, metrics tailed from Lightning's CSVLogger file;
(b, c) an argparse script reporting with `sweeper.report`, ASHA stopping long-running trials,
       with no process left behind;
(d, e) a crash mid-trial resumed from the script's own checkpoint, and a script exiting 1.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).parents[1] / "command_scripts"
SWEEPER = [sys.executable, "-m", "sweeper.cli"]


def launch(cwd: Path, text: str, *extra: str, timeout: int = 400) -> subprocess.CompletedProcess:
    sweep = cwd / "sweep.yaml"
    sweep.write_text(textwrap.dedent(text))
    proc = subprocess.run([*SWEEPER, "launch", str(sweep), *extra], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def trial_runs(cwd: Path, name: str) -> list:
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{cwd / 'mlruns.db'}")
    exp = c.get_experiment_by_name(name)
    return c.search_runs([exp.experiment_id], "tags.`sweeper.kind` = 'trial'")


def history(cwd: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{cwd / 'mlruns.db'}")
    return [(m.step, m.value) for m in sorted(c.get_metric_history(run_id, key), key=lambda m: m.step)]


def artifacts(cwd: Path, run_id: str) -> list[str]:
    from mlflow import MlflowClient

    return [a.path for a in MlflowClient(f"sqlite:///{cwd / 'mlruns.db'}").list_artifacts(run_id)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_hydra_lightning_script_with_csv_logger(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("hydra")
    launch(tmp_path, f"""
        name: hydra-lightning
        task: command
        command:
          run: "{{python}} train.py hydra.run.dir={{trial_dir}}/hydra {{overrides}}"
          workdir: {SCRIPTS / 'hydra_lightning'}
          overrides: hydra
          metrics: "csv:{{trial_dir}}/lightning_logs/version_*/metrics.csv"
          epochs: 3
        base:
          trainer.max_epochs: 3
        search:
          models.optimizer.lr: {{loguniform: [1.0e-3, 0.3]}}
          trainer.batch_size: {{choice: [32, 64]}}
        objective: {{metric: val/acc, mode: max}}
        scheduler: {{name: fifo}}
        budget: {{num_samples: 2, max_concurrent: 2}}
    """)
    runs = trial_runs(tmp_path, "hydra-lightning")
    assert len(runs) == 2
    for run in runs:
        assert run.data.tags["sweeper.status"] == "finished", run.data.tags
        acc = history(tmp_path, run.info.run_id, "val/acc")
        assert [s for s, _ in acc] == [1, 2, 3]  # Lightning's epochs 0..2, reported from 1
        assert all(0 <= v <= 1 for _, v in acc)
        assert [s for s, _ in history(tmp_path, run.info.run_id, "train/loss")] == [1, 2, 3]
        assert float(run.data.params["models.optimizer.lr"]) > 0
        assert run.data.params["trainer.max_epochs"] == "3"
        assert "command.log" in artifacts(tmp_path, run.info.run_id)


def test_argparse_script_asha_stops_and_leaves_no_process(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    proc = launch(tmp_path, f"""
        name: asha-script
        task: command
        command:
          run: "{{python}} {SCRIPTS / 'train_argparse.py'} {{overrides}}"
          overrides: argparse
          stop_grace_s: 3
        base:
          epochs: 8
          sleep: 1.0
          pid_file: {pids}
          spawn_child: true
        search:
          lr: {{loguniform: [1.0e-4, 0.5]}}
        objective: {{metric: val/loss, mode: min}}
        scheduler: {{name: asha, grace_period: 1, reduction_factor: 2, max_t: 8}}
        budget: {{num_samples: 4, max_concurrent: 2}}
    """)
    runs = trial_runs(tmp_path, "asha-script")
    assert len(runs) == 4
    stopped = [r for r in runs if r.data.tags["sweeper.status"] == "stopped"]
    assert stopped, [r.data.tags for r in runs]
    for r in stopped:
        assert int(r.data.tags["sweeper.stopped_at_epoch"]) < 8
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 8  # 4 scripts, each with a helper child
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(p) for p in started):
        time.sleep(0.2)
    assert [p for p in started if _alive(p)] == []
    assert "stopped early" in proc.stdout
    board = subprocess.run([*SWEEPER, "leaderboard", "asha-script", "--format", "json"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert board.returncode == 0 and '"val/loss"' in board.stdout


def test_crash_resumes_from_script_checkpoint_and_exit_1_fails_clearly(tmp_path: Path) -> None:
    launch(tmp_path, f"""
        name: faults
        task: command
        command:
          run: "{{python}} {SCRIPTS / 'train_argparse.py'} {{overrides}}"
          overrides: argparse
        base:
          epochs: 5
          crash_at: 3
          crash_marker: {tmp_path / 'crashed'}
        search:
          fail: {{grid: [false, true]}}
        objective: {{metric: val/acc, mode: max}}
        search_alg: {{name: grid}}
        scheduler: {{name: fifo}}
        budget: {{num_samples: 1, max_concurrent: 1, max_failures: 1}}
        checkpoint: {{min_interval_s: 0}}
    """)
    runs = {r.data.params["fail"]: r for r in trial_runs(tmp_path, "faults")}
    ok, bad = runs["False"], runs["True"]
    assert (tmp_path / "crashed").exists()
    assert ok.data.tags["sweeper.status"] == "finished", ok.data.tags
    assert [s for s, _ in history(tmp_path, ok.info.run_id, "val/acc")] == [1, 2, 3, 4, 5]  # no epoch twice
    assert history(tmp_path, ok.info.run_id, "resumed_from")[-1] == (5, 3.0)  # continued, not restarted
    assert bad.data.tags["sweeper.status"] == "failed"
    assert "FileNotFoundError: dataset /data/missing.json" in bad.data.tags["sweeper.error"]  # the leaderboard's line
    from mlflow import MlflowClient

    error = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}").download_artifacts(bad.info.run_id, "error.txt", str(tmp_path))
    text = Path(error).read_text()
    assert "command exited with code 1" in text
    assert "FileNotFoundError: dataset /data/missing.json does not exist" in text
    assert "command.log" in artifacts(tmp_path, bad.info.run_id)
