"""End-to-end sweeps through the real CLI: real Ray, real MLflow (sqlite), a tiny detector.

What a user would check after `sweeper launch`: one MLflow child run per trial with its params and
per-epoch metrics, ASHA's early stops recorded, a leaderboard sorted by the objective, a dry run
that starts nothing, and a relaunch after Ctrl-C that continues without duplicating runs.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import mlflow_client, run_sweeper, start_sweeper, trial_runs, write_sweep

pytestmark = pytest.mark.slow

# Objective `train/loss`: it always differs between learning rates, so ASHA has something to cut
# even after a few seconds of CPU training (map50 of a 2-epoch detector is often exactly 0).
SWEEP = """
name: {name}
task: detection
data: {{train: data/train.json, val: data/val.json, images: data/images, synth: {{images: 10, size: 64, seed: 1}}}}
base:
  model: {{arch: retinanet, backbone: resnet18, fpn_channels: 16}}
  train: {{epochs: 3, batch_size: 4, resolution: 64, warmup_epochs: 0}}
search:
  train.lr: {{loguniform: [1.0e-5, 1.0e-2]}}
  train.optimizer: {{choice: [sgd, adamw]}}
objective: {{metric: train/loss, mode: min}}
search_alg: {{name: optuna, seed: 3}}
scheduler: {{name: asha, grace_period: 1, reduction_factor: 2}}
budget: {{num_samples: {n}, max_concurrent: {conc}}}
resources: {{cpu: 1}}
checkpoint: {{min_interval_s: {ckpt_s}}}
"""


def asha_sweep(tmp: Path, name: str, n: int = 4, conc: int = 1, ckpt_s: float = 60) -> Path:
    return write_sweep(tmp / f"{name}.yaml", SWEEP.format(name=name, n=n, conc=conc, ckpt_s=ckpt_s))


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    cwd = tmp_path_factory.mktemp("asha")
    proc = run_sweeper(["launch", str(asha_sweep(cwd, "asha"))], cwd, check=True)
    return cwd, proc


def test_dry_run_starts_nothing(tmp_path: Path) -> None:
    proc = run_sweeper(["launch", str(asha_sweep(tmp_path, "dry")), "--dry-run"], tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "train.lr" in proc.stdout and "loguniform" in proc.stdout and "ASHA" in proc.stdout
    assert "dry run: nothing was started" in proc.stdout
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()
    assert not (tmp_path / "data").exists()


def test_one_child_run_per_trial_with_params_and_epoch_metrics(finished_sweep) -> None:  # noqa: ANN001
    cwd, _ = finished_sweep
    runs = trial_runs(cwd, "asha")
    assert len(runs) == 4
    assert len({r.data.tags["sweeper.trial_id"] for r in runs}) == 4
    c = mlflow_client(cwd)
    for run in runs:
        params = run.data.params
        assert float(params["train.lr"]) > 0 and params["train.optimizer"] in ("sgd", "adamw")
        assert params["model.arch"] == "retinanet" and params["train.epochs"] == "3"
        assert run.data.tags["sweeper.status"] in ("finished", "stopped")
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")]
        assert steps == list(range(1, int(run.data.metrics["epoch"]) + 1))
        for key in ("map", "map50", "map_small", "ap/circle"):
            assert key in run.data.metrics
        assert run.info.status == "FINISHED"


def test_asha_stops_some_trials_and_says_where(finished_sweep) -> None:  # noqa: ANN001
    cwd, proc = finished_sweep
    runs = trial_runs(cwd, "asha")
    stopped = [r for r in runs if r.data.tags["sweeper.status"] == "stopped"]
    assert stopped, [r.data.tags for r in runs]
    for r in stopped:
        assert int(r.data.tags["sweeper.stopped_at_epoch"]) < 3
        assert int(r.data.metrics["epoch"]) == int(r.data.tags["sweeper.stopped_at_epoch"])
    assert "stopped early" in proc.stdout


def test_short_epochs_checkpoint_only_their_last_epoch(finished_sweep) -> None:  # noqa: ANN001
    """checkpoint.min_interval_s 60 with second-long epochs: only a trial's final epoch is saved."""
    cwd, _ = finished_sweep
    for run in trial_runs(cwd, "asha"):
        trial_dir = next((cwd / "runs" / "asha").glob(f"*{run.data.tags['sweeper.trial_id']}*"))
        saved = sorted(trial_dir.glob("checkpoint_*"))
        if run.data.tags["sweeper.status"] == "stopped":
            assert saved == [], saved
        else:
            assert len(saved) == 1, saved
            import torch

            state = torch.load(saved[0] / "trial_state.pt", weights_only=True)
            assert state["epoch"] == int(run.data.metrics["epoch"]) == 3


def test_leaderboard_order_matches_metrics(finished_sweep) -> None:  # noqa: ANN001
    cwd, _ = finished_sweep
    proc = run_sweeper(["leaderboard", "asha", "--format", "json"], cwd, timeout=60)
    assert proc.returncode == 0, proc.stderr
    board = json.loads(proc.stdout)
    values = [row["train/loss"] for row in board["rows"]]
    assert len(values) == 4 and values == sorted(values)  # mode min: lowest first
    runs = {r.data.tags["sweeper.trial_id"]: r for r in trial_runs(cwd, "asha")}
    for row in board["rows"]:
        assert row["train/loss"] == pytest.approx(runs[row["trial"]].data.metrics["best_objective"])
    md = run_sweeper(["leaderboard", "asha", "--format", "markdown", "--top", "2"], cwd, timeout=60).stdout
    assert md.splitlines()[0].startswith("| trial | status | epoch | train/loss | train.lr")
    assert len(md.strip().splitlines()) == 4
    csv_out = run_sweeper(["leaderboard", "asha", "--format", "csv"], cwd, timeout=60).stdout
    assert len(csv_out.strip().splitlines()) == 5 and "map_small" in csv_out.splitlines()[0]


@pytest.mark.parametrize("how", ["relaunch", "resume"])
def test_interrupted_sweep_continues_without_duplicate_runs(tmp_path: Path, how: str) -> None:
    sweep = asha_sweep(tmp_path, "resume", n=4, conc=1, ckpt_s=0)  # every epoch, so a kill has something
    proc = start_sweeper(["launch", str(sweep)], tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline:  # wait until two trials have checkpointed (files, not MLflow:
        # reading the store while the launch creates it would race its schema migration)
        if len({p.parent for p in (tmp_path / "runs" / "resume").glob("*/checkpoint_*")}) >= 2:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert f"to continue: sweeper resume {tmp_path / 'runs' / 'resume'}" in out
    before = {r.data.tags["sweeper.trial_id"]: r.info.run_id for r in trial_runs(tmp_path, "resume")}
    assert 2 <= len(before) <= 4

    args = ["launch", str(sweep)] if how == "relaunch" else ["resume", "resume"]  # NAME under ./runs
    again = run_sweeper(args, tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "continuing sweep" in again.stdout
    runs = trial_runs(tmp_path, "resume")
    ids = [r.data.tags["sweeper.trial_id"] for r in runs]
    assert len(ids) == 4 and len(set(ids)) == 4
    for trial_id, run_id in before.items():  # the same run continued, not a new one
        assert {r.data.tags["sweeper.trial_id"]: r.info.run_id for r in runs}[trial_id] == run_id
    c = mlflow_client(tmp_path)
    for run in runs:
        assert run.data.tags["sweeper.status"] in ("finished", "stopped")
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "epoch")]
        assert steps == sorted(set(steps)), f"epoch logged twice: {steps}"


def test_changed_sweep_is_not_silently_continued(finished_sweep) -> None:  # noqa: ANN001
    cwd, _ = finished_sweep
    proc = run_sweeper(["launch", str(cwd / "asha.yaml"), "--set", "train.epochs=2"], cwd, timeout=120)
    assert proc.returncode == 2
    assert "different configuration" in proc.stderr and "--fresh" in proc.stderr


def test_driver_sigkill_then_resume_finishes_every_trial_exactly_once(tmp_path: Path) -> None:
    """The driver dies without any chance to clean up (SIGKILL, as on a reboot or an OOM kill):
    `sweeper resume` continues from what Ray and MLflow had persisted."""
    sweep = asha_sweep(tmp_path, "killed", n=4, conc=2, ckpt_s=0)
    proc = start_sweeper(["launch", str(sweep)], tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rung_file = tmp_path / "runs" / "killed" / "scheduler" / "asha_rungs.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        # two trials have saved a checkpoint and the driver has processed a result (ASHA wrote its
        # rungs): a worker persists its checkpoint before the driver sees the report
        if len({p.parent for p in (tmp_path / "runs" / "killed").glob("*/checkpoint_*")}) >= 2 and rung_file.is_file():
            break
        time.sleep(0.5)
    proc.kill()
    proc.wait(timeout=30)
    before = {r.data.tags["sweeper.trial_id"]: r for r in trial_runs(tmp_path, "killed")}
    assert before and any(r.data.tags["sweeper.status"] == "running" for r in before.values())
    rungs_before = json.loads(rung_file.read_text())["brackets"][0]
    assert any(recorded for _, recorded in rungs_before)

    again = run_sweeper(["resume", "killed"], tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    c = mlflow_client(tmp_path)
    runs = trial_runs(tmp_path, "killed")
    assert sorted(r.data.tags["sweeper.trial_id"] for r in runs) == sorted({r.data.tags["sweeper.trial_id"] for r in runs})
    assert len(runs) == 4
    for run in runs:
        assert run.data.tags["sweeper.status"] in ("finished", "stopped"), run.data.tags
        assert run.info.status == "FINISHED"
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")]
        assert steps == list(range(1, int(run.data.metrics["epoch"]) + 1)), steps  # none lost, none twice
        if run.data.tags["sweeper.trial_id"] in before:
            assert before[run.data.tags["sweeper.trial_id"]].info.run_id == run.info.run_id
    # ASHA's rungs came back with the sweep: every record made before the kill is still there
    # (a fresh scheduler would have started from empty rungs and judged the rest against nothing)
    rungs_after = dict((m, rec) for m, rec in json.loads(rung_file.read_text())["brackets"][0])
    for milestone, recorded in rungs_before:
        assert recorded.items() <= rungs_after[milestone].items()
