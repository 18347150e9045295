"""The one Ray Tune function trainable: where a task meets Ray.

Per trial: build the task from the sweep's `base` plus the trial's searched values, restore it
from `tune.get_checkpoint()` if Tune hands one back (a retry or a resumed sweep), then per epoch
train, evaluate and `tune.report` the metrics together with a checkpoint. Reported keys: the
task's metrics, `epoch` (ASHA's time attribute), `epochs_total` (the trial's planned epochs, so
callbacks can tell "finished" from "stopped early") and `best_objective` (best so far).

    trainable = tune.with_parameters(run_trial, sweep=sweep)
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from sweeper.config import Sweep, trial_config

STATE_FILE = "trial_state.pt"


def _threads_for_trial(sweep: Sweep) -> int:
    """Torch threads = the trial's CPUs: over-subscribing cores is a classic slowdown."""
    return max(1, int(sweep.spec.resources.cpu))


def _better(a: float, b: float | None, mode: str) -> bool:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return True
    return a > b if mode == "max" else a < b


def run_trial(config: dict[str, Any], sweep: Sweep) -> None:
    """Train one trial; `config` holds the searched values as dotted keys (`train.lr`)."""
    import torch

    from sweeper.tasks import load_task

    torch.set_num_threads(_threads_for_trial(sweep))
    cfg = trial_config(sweep, config)
    device = "cuda" if sweep.spec.resources.gpu > 0 and torch.cuda.is_available() else "cpu"
    task = load_task(cfg["task"])(cfg, device=device)
    epochs = int(cfg["train"]["epochs"])
    objective, mode = sweep.spec.objective.metric, sweep.spec.objective.mode

    start, best = 1, None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            # weights_only: a checkpoint is data, never code to run
            state = torch.load(Path(ckpt_dir) / STATE_FILE, map_location=device, weights_only=True)
        task.load_state_dict(state["task"])
        start, best = state["epoch"] + 1, state.get("best_objective")

    for epoch in range(start, epochs + 1):
        metrics = dict(task.train_one_epoch(epoch))
        metrics.update(task.evaluate())
        value = metrics.get(objective)
        if value is not None and _better(value, best, mode):
            best = value
        metrics.update(epoch=epoch, epochs_total=epochs, best_objective=best)
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"task": task.state_dict(), "epoch": epoch, "best_objective": best},
                       os.path.join(tmp, STATE_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
