"""Faults injected into real trials on CPU: CUDA out-of-memory (through the test hook in the
training step) falls back to micro-batches that keep the effective batch; past the retry budget
the trial fails with a message that says what to change."""
from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import launch_sweep, mlflow_client, run_sweeper, sweeper_env, trial_runs

pytestmark = pytest.mark.slow

SWEEP = """
name: oom
task: detection
data: {train: data/train.json, val: data/val.json, images: data/images, synth: {images: 12, size: 64, seed: 1}}
base:
  model: {arch: retinanet, backbone: resnet18, fpn_channels: 16}
  train: {epochs: 2, resolution: 64, warmup_epochs: 0, lr: 0.001, optimizer: adamw}
search:
  train.batch_size: {grid: [2, 4]}
objective: {metric: train/loss, mode: min}
search_alg: {name: grid}
scheduler: {name: fifo}
budget: {num_samples: 1, max_concurrent: 2, oom_retries: 1}
checkpoint: {min_interval_s: 0}
"""


def test_out_of_memory_halves_the_per_step_batch_then_gives_up(tmp_path: Path) -> None:
    # every micro-batch above 1 image "runs out of memory": batch 2 needs 1 retry (2 micro-batches),
    # batch 4 would need 2 but the budget allows 1
    proc = launch_sweep(tmp_path, SWEEP, file="oom.yaml", env=sweeper_env(SWEEPER_INJECT_OOM_ABOVE="1"))
    c = mlflow_client(tmp_path)
    runs = {r.data.params["train.batch_size"]: r for r in trial_runs(c, "oom")}
    ok, failed = runs["2"], runs["4"]
    assert ok.data.tags["sweeper.status"] == "finished"
    assert ok.data.tags["sweeper.oom_retries"] == "1" and ok.data.tags["sweeper.micro_batches"] == "2"
    assert [m.value for m in c.get_metric_history(ok.info.run_id, "train/micro_batches")] == [2.0, 2.0]
    assert failed.data.tags["sweeper.status"] == "failed"
    assert "CUDA out of memory" in failed.data.tags["sweeper.error"]
    assert "budget.oom_retries 1" in failed.data.tags["sweeper.error"]
    assert "out of memory at a per-step batch of 2: retrying from epoch 1 with 2 micro-batches" in proc.stdout + proc.stderr


WORKER_CRASH_SWEEP = """
name: worker-crash
task: detection
data: {train: data/train.json, val: data/val.json, images: data/images, synth: {images: 8, size: 64, seed: 2}}
base:
  model: {arch: retinanet, backbone: resnet18, fpn_channels: 16}
  train: {epochs: 2, batch_size: 2, resolution: 64, warmup_epochs: 0, lr: 0.001, optimizer: adamw, workers: 1}
objective: {metric: train/loss, mode: min}
scheduler: {name: fifo}
budget: {num_samples: 1}
"""


def test_a_dead_data_loader_worker_fails_the_trial_saying_so(tmp_path: Path) -> None:
    """The worker loading epoch 2 is SIGKILLed (the test hook in the detection dataset): the trial
    fails with a DataLoaderWorkerError naming the crash, the signal and what to change, in MLflow
    and on the leaderboard, after epoch 1 was recorded."""
    env = sweeper_env(SWEEPER_INJECT_WORKER_CRASH="2")
    launch_sweep(tmp_path, WORKER_CRASH_SWEEP, file="crash.yaml", env=env)
    c = mlflow_client(tmp_path)
    (run,) = trial_runs(c, "worker-crash")
    error = run.data.tags["sweeper.error"]
    assert run.data.tags["sweeper.status"] == "failed" and run.info.status == "FAILED"
    assert error.startswith("sweeper.tasks.training.DataLoaderWorkerError: DataLoader worker crash: worker "
                            "process (pid "), error
    assert "died while training epoch 2, killed by signal SIGKILL" in error and "Lower train.workers" in error, error
    assert [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")] == [1]
    board = run_sweeper(["leaderboard", "worker-crash", "--format", "json"], tmp_path, timeout=120, env=env)
    assert board.returncode == 0, board.stdout + board.stderr
    assert "DataLoader worker crash" in board.stdout and "SIGKILL" in board.stdout, board.stdout
