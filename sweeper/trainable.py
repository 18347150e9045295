"""The one Ray Tune function trainable: where a task meets Ray.

Per trial: build the task from the sweep's `base` plus the trial's searched values, restore it
from `tune.get_checkpoint()` if Tune hands one back (a retry or a resumed sweep), then per epoch
train, evaluate and `tune.report` the metrics, with a checkpoint when `checkpoint.min_interval_s`
has passed since the last one and always at the trial's last epoch. Reported keys: the
task's metrics, `epoch` (ASHA's time attribute), `epochs_total` (the trial's planned epochs, so
callbacks can tell "finished" from "stopped early") and `best_objective` (best so far).

    trainable = tune.with_parameters(run_trial, sweep=sweep)
"""
from __future__ import annotations

import gc
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

from sweeper.config import Sweep, trial_config, trial_params

STATE_FILE = "trial_state.pt"
#: subdirectory of a trial's directory for the task's evaluation files (tracking attaches them)
ARTIFACTS_DIR = "artifacts"


def _threads_for_trial(sweep: Sweep) -> int:
    """Torch threads = the trial's CPUs: over-subscribing cores is a classic slowdown."""
    return max(1, int(sweep.spec.resources.cpu))


class CheckpointError(ValueError):
    """A trial checkpoint that cannot be resumed from: unreadable, or saved by another task/model."""


def load_trial_state(path: Path, task_name: str, device: str) -> dict[str, Any]:
    """Read a trial checkpoint (`weights_only`: a checkpoint is data, never code to run) and check
    it was saved by this task; errors name the file and say what is wrong."""
    import torch

    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types on a damaged file
        raise CheckpointError(f"{path}: cannot read the trial checkpoint (truncated, or not a sweeper checkpoint?): "
                              f"{type(exc).__name__}: {str(exc)[:300]}") from None
    if not isinstance(saved, dict) or not {"task", "epoch"} <= set(saved):
        raise CheckpointError(f"{path}: not a sweeper trial checkpoint (expected the keys task, epoch)")
    if saved.get("task_name", task_name) != task_name:
        raise CheckpointError(f"{path}: saved by task {saved['task_name']!r}, but this trial runs task "
                              f"{task_name!r}; resume it with its own sweep file, or launch with --fresh")
    return saved


def restore_task(task: Any, saved: dict[str, Any]) -> None:
    """Load a checkpoint into a built task; a model that does not fit (another arch or backbone
    than the sweep file now says) is a CheckpointError, not a page of missing keys."""
    try:
        task.load_state_dict(saved["task"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"trial checkpoint {saved.get('source', STATE_FILE)} (epoch {saved.get('epoch')}) does "
                              "not fit this trial's model or optimizer (was the sweep file's model changed? "
                              f"launch with --fresh): {str(exc)[:400]}") from None


def _better(a: float, b: float | None, mode: str) -> bool:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return True
    return a > b if mode == "max" else a < b


def _raise_if_worker_crash(exc: RuntimeError, during: str) -> None:
    """torch reports a dead DataLoader worker as a bare RuntimeError; the trial's error (MLflow,
    leaderboard) should say it was a data-loader worker crash and what to look at."""
    from sweeper.tasks.training import worker_crash

    crash = worker_crash(exc, during)
    if crash is not None:
        raise crash from exc


def run_trial(config: dict[str, Any], sweep: Sweep) -> None:
    """Train one trial; `config` holds the searched values as dotted keys (`train.lr`), or an
    ablation point (`{"ablation": {"variant", "seed", "params"}}`)."""
    config = trial_params(config)
    if sweep.spec.command is not None:
        run_command_trial(config, sweep)
        return
    import torch

    from sweeper.tasks import load_task
    from sweeper.tasks.training import loader_settings

    torch.set_num_threads(_threads_for_trial(sweep))
    cfg = trial_config(sweep, config)
    # files a task writes at evaluation (confusion matrix), attached to the trial's MLflow run
    cfg["artifacts_dir"] = str(Path(tune.get_context().get_trial_dir()) / ARTIFACTS_DIR)
    device = "cuda" if sweep.spec.resources.gpu > 0 and torch.cuda.is_available() else "cpu"
    # `train.workers: auto` from the trial's CPUs, not the node's (the task alone cannot know them)
    cfg["train"]["workers"] = loader_settings(cfg["train"].get("workers"), device=device,
                                              cpus=sweep.spec.resources.cpu)["num_workers"]
    epochs = int(cfg["train"]["epochs"])
    objective, mode = sweep.spec.objective.metric, sweep.spec.objective.mode

    saved: dict[str, Any] | None = None  # the last checkpoint's content: where a retry resumes
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            saved = load_trial_state(Path(ckpt_dir) / STATE_FILE, cfg["task"], device)
    oom_retries = int(saved.get("oom_retries", 0)) if saved else 0
    if saved:
        cfg["train"]["micro_batches"] = int(saved.get("micro_batches", cfg["train"].get("micro_batches", 1)))

    def build() -> tuple[Any, int, float | None]:
        """The task, restored from `saved` if there is one; returns (task, first epoch, best)."""
        task = load_task(cfg["task"])(cfg, device=device)
        if saved is None:
            return task, 1, None
        restore_task(task, saved)
        return task, int(saved["epoch"]) + 1, saved.get("best_objective")

    task, epoch, best = build()
    last_epoch = min(epochs, sweep.max_t)
    last_saved = time.monotonic()
    while epoch <= epochs:
        try:
            metrics = dict(task.train_one_epoch(epoch))
        except torch.OutOfMemoryError as exc:
            micro, batch = int(cfg["train"].get("micro_batches", 1)), int(cfg["train"]["batch_size"])
            if oom_retries >= sweep.spec.budget.oom_retries or micro >= batch:
                raise RuntimeError(f"CUDA out of memory at epoch {epoch} with a per-step batch of "
                                   f"{-(-batch // micro)} ({micro} micro-batches of {batch}) after {oom_retries} "
                                   f"retries (budget.oom_retries {sweep.spec.budget.oom_retries}): lower "
                                   "train.batch_size or train.resolution, or give the trial a larger GPU") from exc
            oom_retries += 1
            cfg["train"]["micro_batches"] = min(batch, micro * 2)
            del task
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            task, epoch, best = build()
            print(f"out of memory at a per-step batch of {-(-batch // micro)}: retrying from epoch {epoch} with "
                  f"{cfg['train']['micro_batches']} micro-batches (effective batch {batch} kept)", flush=True)
            continue
        except RuntimeError as exc:
            _raise_if_worker_crash(exc, f"training epoch {epoch}")
            raise
        try:
            metrics.update(task.evaluate())
        except RuntimeError as exc:
            _raise_if_worker_crash(exc, f"evaluating epoch {epoch}")
            raise
        value = metrics.get(objective)
        if value is not None and _better(value, best, mode):
            best = value
        metrics.update(epoch=epoch, epochs_total=epochs, best_objective=best, oom_retries=oom_retries,
                       **{"train/micro_batches": int(cfg["train"].get("micro_batches", 1))})
        due = time.monotonic() - last_saved >= sweep.spec.checkpoint.min_interval_s
        if not (due or epoch >= last_epoch):
            tune.report(metrics)
            epoch += 1
            continue
        last_saved = time.monotonic()
        saved = {"task": task.state_dict(), "task_name": cfg["task"], "source": STATE_FILE, "epoch": epoch,
                 "best_objective": best, "oom_retries": oom_retries,
                 "micro_batches": int(cfg["train"].get("micro_batches", 1))}
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(saved, os.path.join(tmp, STATE_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        epoch += 1


def run_command_trial(config: dict[str, Any], sweep: Sweep) -> None:
    """A `task: command` trial: the user's script in a subprocess, one `tune.report` per epoch.

    The script's checkpoint directory (`command.checkpoint_dir_env`) is persisted with the
    reports (same interval policy as built-in tasks) and put back in place when Tune restores
    the trial, so a script that resumes from its own last checkpoint continues. If Tune stops
    the trial (ASHA), `tune.report` raises SystemExit and the `finally` ends the process group.
    """
    import ray

    from sweeper.config import script_params
    from sweeper.tasks.command import CommandTrial

    spec = sweep.spec
    assert spec.command is not None
    trial_dir = tune.get_context().get_trial_dir()
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    trial = CommandTrial(spec.command.model_dump(), script_params(sweep, config), trial_dir=trial_dir,
                         objective=spec.objective.metric, cpus=spec.resources.cpu, gpu_ids=gpu_ids)
    objective, mode = spec.objective.metric, spec.objective.mode
    best = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            best = trial.restore(Path(ckpt_dir)).get("best_objective")
    epochs_total = sweep.max_t
    last_saved = time.monotonic()
    try:
        for epoch, metrics in trial.epochs():
            value = metrics.get(objective)
            if value is not None and _better(value, best, mode):
                best = value
            metrics.update(epoch=epoch, epochs_total=epochs_total, best_objective=best)
            due = time.monotonic() - last_saved >= spec.checkpoint.min_interval_s
            if not (due or epoch >= epochs_total):
                tune.report(metrics)
                continue
            last_saved = time.monotonic()
            with tempfile.TemporaryDirectory() as tmp:
                trial.snapshot(Path(tmp), {"epoch": epoch, "best_objective": best})
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
    finally:
        trial.stop()
