"""The one Ray Tune function trainable: where a task meets Ray.

Per trial: build the task from the sweep's `base` plus the trial's searched values (the config
finished once, here, by `sweeper.config.build_trial`), restore it from `tune.get_checkpoint()`
if Tune hands one back (a retry or a resumed sweep), then per epoch train, evaluate and
`tune.report` the metrics, with a checkpoint when `checkpoint.min_interval_s` has passed since
the last one and always at the trial's last epoch. Besides the task's metrics it reports the
keys of `sweeper.results`: `epoch` (ASHA's time attribute; `step` for a command trial on steps),
`epochs_total` (so callbacks can tell "finished" from "stopped early"), `best_objective` and
`best_epoch`, `stop_reason` when the trial ends itself early (`early_stopping`'s patience ran out,
or a command trial's script exited before its planned length), and once per (re)start the
effective config the trial trains with (`results.TRIAL_CONFIG`: resolved workers and
micro-batches, device, AMP, the node and the GPU ids Ray assigned, library versions), which is
what MLflow logs. A torch task's trial holding GPUs where torch sees no CUDA fails at once
(`sweeper.devices.NoCudaError`, naming the node and CUDA_VISIBLE_DEVICES), never trains on the CPU.
With `early_stopping`, every new best is checkpointed too, whatever `checkpoint.min_interval_s`
says, so the epoch a trial that stops by patience is judged by has its checkpoint. With `scheduler.promote`, every
rung epoch is checkpointed too: the trial pauses there and is resumed from that epoch.
Time budgets (`sweeper.time_budget`): a trial that has trained `budget.trial_time_limit` ends after
that epoch (`stop_reason: time_limit`, checkpointed); after the launch's `budget.time_limit` the
epoch that ends is checkpointed and marked `results.PARKED`, and the trial waits to be stopped with
the launch; on GPUs every report carries `gpu_seconds` (Ray adds `time_total_s` itself).

    trainable = tune.with_parameters(run_trial, sweep=sweep)
"""
from __future__ import annotations

import gc
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from sweeper import results, time_budget
from sweeper.config import Sweep, build_trial, redact, script_params, trial_params
from sweeper.config.secret_keys import reveal
from sweeper.devices import Placement, gpu_share, trial_device

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


def _placement() -> Placement:
    """This trial's node and the GPUs Ray assigned it (what a no-CUDA error names, what the trial logs)."""
    import ray

    return Placement.here(ray.get_gpu_ids(), ray.util.get_node_ip_address())


def _better(a: float, b: float | None, mode: str) -> bool:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return True
    return a > b if mode == "max" else a < b


@dataclass
class Progress:
    """A trial's best objective, where it was reached, and the patience counter of `early_stopping`.

    The counter counts evaluations since the last one that beat the best by more than `min_delta`
    (in the objective's direction); the trial ends once it reaches `patience`. `best` is the plain
    best value (what the leaderboard shows), whether or not it beat the previous one by `min_delta`.
    Saved with every trial checkpoint (`state`), so a resumed trial keeps counting where it was.
    """

    mode: str
    patience: int | None = None
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0

    @classmethod
    def for_sweep(cls, sweep: Sweep, saved: dict[str, Any] | None = None) -> "Progress":
        """Progress of a trial of `sweep`, restored from a checkpoint's `state()` if one is given."""
        es = sweep.spec.early_stopping
        saved = saved or {}
        return cls(sweep.spec.objective.mode, es.patience if es else None, es.min_delta if es else 0.0,
                   saved.get(results.BEST_OBJECTIVE), saved.get(results.BEST_EPOCH), int(saved.get("patience_wait", 0)))

    def update(self, value: float | None, epoch: int) -> bool:
        """Count one evaluation; True if `value` is a new best (the checkpoint to keep)."""
        if value is None:
            return False  # not an evaluation of the objective
        fresh = self.best is None or (isinstance(self.best, float) and math.isnan(self.best))
        gain = (value - self.best if self.mode == "max" else self.best - value) if not fresh else math.inf
        self.wait = 0 if gain > self.min_delta else self.wait + 1  # NaN gains nothing
        if not _better(value, self.best, self.mode):
            return False
        self.best, self.best_epoch = value, epoch
        return True

    @property
    def exhausted(self) -> bool:
        """Patience has run out: the objective has not improved for `patience` evaluations."""
        return self.patience is not None and self.wait >= self.patience

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of it (the keys `for_sweep` reads back)."""
        return {results.BEST_OBJECTIVE: self.best, results.BEST_EPOCH: self.best_epoch, "patience_wait": self.wait}


def _raise_if_worker_crash(exc: RuntimeError, during: str) -> None:
    """torch reports a dead DataLoader worker as a bare RuntimeError; the trial's error (MLflow,
    leaderboard) should say it was a data-loader worker crash and what to look at."""
    from sweeper.tasks.training import worker_crash

    crash = worker_crash(exc, during)
    if crash is not None:
        raise crash from exc


def run_trial(config: dict[str, Any], sweep: Sweep, launch_clock: Any = None) -> None:
    """Train one trial; `config` holds the searched values as dotted keys (`train.lr`), or an
    ablation point (`{"ablation": {"variant", "seed", "params"}}`). `launch_clock` is the launch's
    `budget.time_limit` clock (`sweeper.time_budget.Clock`): after its deadline, the epoch that
    ends is checkpointed and the trial waits to be stopped with the launch, resumable."""
    # one INFO line per checkpoint from Ray, forwarded to the driver's console: noise there
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    # a searched secret reaches Tune as its alias (`secret_keys.public_sweep`): `sweep` is the real
    # one, from Tune's object store, so the alias becomes the value here, in the trial's process only
    config = reveal(sweep, trial_params(config))
    if sweep.spec.command is not None:
        run_command_trial(config, sweep, launch_clock)
        return
    import torch

    from sweeper.tasks.training import loader_settings

    torch.set_num_threads(_threads_for_trial(sweep))
    # GPUs Ray assigned but no CUDA here: fail now, naming the node, never train on the CPU instead
    placement = _placement()
    device = trial_device(sweep.spec.resources.gpu, uses_cuda=sweep.task.uses_cuda,
                          cuda_available=torch.cuda.is_available(), placement=placement,
                          torch_cuda=torch.version.cuda)
    # files a task writes at evaluation (confusion matrix), attached to the trial's MLflow run
    artifacts_dir = str(Path(tune.get_context().get_trial_dir()) / ARTIFACTS_DIR)
    objective = sweep.spec.objective.metric

    saved: dict[str, Any] | None = None  # the last checkpoint's content: where a retry resumes
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            saved = load_trial_state(Path(ckpt_dir) / STATE_FILE, sweep.spec.task, device)
    oom_retries = int(saved.get("oom_retries", 0)) if saved else 0
    # `train.workers: auto` from the trial's CPUs, not the node's (the task alone cannot know them)
    asked = build_trial(sweep, config).train.workers
    resolved = {"workers": loader_settings(asked, device=device, cpus=sweep.spec.resources.cpu)["num_workers"]}
    if saved and saved.get("micro_batches"):
        resolved["micro_batches"] = int(saved["micro_batches"])
    cfg = build_trial(sweep, config, artifacts_dir=artifacts_dir, train=resolved)
    epochs = cfg.train.epochs
    task_cls = sweep.task.load_task()
    pending_config: str | None = None  # reported with the next result, then logged by tracking

    def build() -> tuple[Any, int, Progress]:
        """The task, restored from `saved` if there is one; returns (task, first epoch, progress)."""
        nonlocal pending_config
        task = task_cls(cfg, device=device)
        pending_config = effective_config(cfg, {**getattr(task, "runtime", {}), **placement.runtime()})
        if saved is None:
            return task, 1, Progress.for_sweep(sweep)
        restore_task(task, saved)
        return task, int(saved["epoch"]) + 1, Progress.for_sweep(sweep, saved)

    task, epoch, progress = build()
    keep_best = sweep.spec.early_stopping is not None
    last_epoch = min(epochs, sweep.max_t)
    # promotion ASHA pauses a trial at each rung and resumes it from there: a checkpoint of that epoch
    rungs = set(pause_rungs(sweep))
    last_saved = time.monotonic()
    deadline = time_budget.trial_deadline(launch_clock)  # the first trial to train starts the launch's clock
    clock = time_budget.TrialClock(saved.get(time_budget.TRAINED_S, 0.0) if saved else 0.0,
                                   gpu_share(device, sweep.spec.resources.gpu))
    if time_budget.past(deadline):  # started after the launch's time limit: train nothing
        time_budget.wait_at_start(launch_clock, tune.get_context().get_trial_id())
    while epoch <= epochs:
        try:
            metrics = dict(task.train_one_epoch(epoch))
        except torch.OutOfMemoryError as exc:
            micro, batch = cfg.train.micro_batches, cfg.train.batch_size
            more = oom_micro_batches(micro, batch, oom_retries, sweep.spec.budget.oom_retries)
            if more is None:
                raise RuntimeError(f"CUDA out of memory at epoch {epoch} with a per-step batch of "
                                   f"{-(-batch // micro)} ({micro} micro-batches of {batch}) after {oom_retries} "
                                   f"retries (budget.oom_retries {sweep.spec.budget.oom_retries}): lower "
                                   "train.batch_size or train.resolution, or give the trial a larger GPU") from exc
            oom_retries += 1
            resolved["micro_batches"] = more
            cfg = build_trial(sweep, config, artifacts_dir=artifacts_dir, train=resolved)
            del task
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            task, epoch, progress = build()
            print(f"out of memory at a per-step batch of {-(-batch // micro)}: retrying from epoch {epoch} with "
                  f"{cfg.train.micro_batches} micro-batches (effective batch {batch} kept)", flush=True)
            continue
        except RuntimeError as exc:
            _raise_if_worker_crash(exc, f"training epoch {epoch}")
            raise
        try:
            metrics.update(task.evaluate())
        except RuntimeError as exc:
            _raise_if_worker_crash(exc, f"evaluating epoch {epoch}")
            raise
        new_best = progress.update(metrics.get(objective), epoch)
        metrics.update({results.EPOCH: epoch, results.EPOCHS_TOTAL: epochs, results.BEST_OBJECTIVE: progress.best,
                        results.BEST_EPOCH: progress.best_epoch, results.OOM_RETRIES: oom_retries,
                        results.MICRO_BATCHES: cfg.train.micro_batches})
        patience_out = progress.exhausted and epoch < last_epoch
        if patience_out:
            metrics[results.STOP_REASON] = results.PATIENCE
        # budget.trial_time_limit: the trial's time is up after this epoch
        timed_out = not patience_out and epoch < last_epoch and clock.over(sweep.spec.budget.trial_time_limit)
        if timed_out:
            metrics[results.STOP_REASON] = results.TIME_LIMIT
        parked = not (patience_out or timed_out) and epoch < last_epoch and time_budget.past(deadline)
        if parked:
            metrics[results.PARKED] = True  # budget.time_limit: checkpoint this epoch, then wait
        metrics.update(clock.metrics())
        if pending_config is not None:
            metrics[results.TRIAL_CONFIG], pending_config = pending_config, None
        due = time.monotonic() - last_saved >= sweep.spec.checkpoint.min_interval_s or epoch in rungs
        if not (due or epoch >= last_epoch or (keep_best and new_best) or timed_out or parked):
            tune.report(metrics)
        else:
            last_saved = time.monotonic()
            saved = {"task": task.state_dict(), "task_name": sweep.spec.task, "source": STATE_FILE, "epoch": epoch,
                     **progress.state(), "oom_retries": oom_retries, "micro_batches": cfg.train.micro_batches,
                     time_budget.TRAINED_S: clock.total_s}
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(saved, os.path.join(tmp, STATE_FILE))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        if patience_out or timed_out:
            return  # converged, or out of time: its checkpoints are kept (Tune scores them by the objective)
        if parked:
            time_budget.wait_to_be_stopped()
        epoch += 1


def oom_micro_batches(micro: int, batch: int, retries: int, budget: int) -> int | None:
    """The micro-batches to retry with after a CUDA out-of-memory error (twice as many, at most one
    image each: the effective batch is kept), or None when the trial should fail: `budget`
    (`budget.oom_retries`) retries spent, or already one image per micro-batch."""
    if retries >= budget or micro >= batch:
        return None
    return min(batch, micro * 2)


def pause_rungs(sweep: Sweep) -> list[int]:
    """The epochs at which `scheduler.promote` pauses a trial (each needs its checkpoint); none without it."""
    sched = sweep.spec.scheduler
    if not getattr(sched, "promote", False):
        return []
    from sweeper.rungs import promotion_rungs

    return promotion_rungs(sched.grace_period, sched.reduction_factor, sweep.max_t)


def effective_config(cfg: Any, runtime: dict[str, Any]) -> str:
    """The config a trial really trains with, as the JSON text it reports once: the validated
    trial config (resolved `train.workers`, `train.micro_batches`), what the task resolved for
    itself (device, AMP, channels_last) and the library versions; secrets redacted."""
    import importlib.metadata as md

    doc = cfg.model_dump(mode="json", exclude={"artifacts_dir"})
    versions = {}
    for lib in ("torch", "torchvision", "timm"):
        try:
            versions[lib] = md.version(lib)
        except md.PackageNotFoundError:
            pass
    doc["runtime"] = {**runtime, **versions}
    return json.dumps(redact(doc), default=str)


def run_command_trial(config: dict[str, Any], sweep: Sweep, launch_clock: Any = None) -> None:
    """A `task: command` trial: the user's script in a subprocess, one `tune.report` per epoch
    (or per step it reports, with `command.time_key: step`).

    The script's checkpoint directory (`command.checkpoint_dir_env`) is persisted with the
    reports (same interval policy as built-in tasks, plus every new best with `early_stopping`)
    and put back in place when Tune restores the trial, so a script that resumes from its own
    last checkpoint continues. If Tune stops the trial (ASHA), `tune.report` raises SystemExit
    and the `finally` ends the process group; when patience runs out the loop ends and the same
    `finally` does. A script that exits 0 before its planned length ended itself: its last
    report says so (`stop_reason: script`), so it counts as finished, not as stopped by ASHA.
    """
    import ray

    from sweeper.tasks.command import CommandTrial

    spec = sweep.spec
    assert spec.command is not None
    trial_dir = tune.get_context().get_trial_dir()
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    params = script_params(sweep, config)
    trial = CommandTrial(spec.command.model_dump(), params, trial_dir=trial_dir,
                         objective=spec.objective.metric, cpus=spec.resources.cpu, gpu_ids=gpu_ids)
    runtime = Placement.here(gpu_ids, ray.util.get_node_ip_address()).runtime()  # node, gpu_ids, CUDA_VISIBLE_DEVICES
    pending_config: str | None = json.dumps(redact({**params, "runtime": runtime}), default=str)
    objective, time_key = spec.objective.metric, results.time_attr(spec.command)
    progress = Progress.for_sweep(sweep)
    state: dict[str, Any] = {}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = trial.restore(Path(ckpt_dir)) or {}
            progress = Progress.for_sweep(sweep, state)
    deadline = time_budget.trial_deadline(launch_clock)  # the first trial to train starts the launch's clock
    clock = time_budget.TrialClock(state.get(time_budget.TRAINED_S, 0.0), spec.resources.gpu if gpu_ids else 0.0)
    if time_budget.past(deadline):  # started after the launch's time limit: run nothing
        time_budget.wait_at_start(launch_clock, tune.get_context().get_trial_id())
    epochs_total = sweep.max_t
    # None: the script alone knows its length (on `time_attr: time_total_s`, max_t is seconds)
    planned = (spec.scheduler.max_t if spec.scheduler.time_attr == "epoch" else None) or spec.command.epochs
    trial.planned = planned  # once the script reported it, its work is done (it may run on: a final save)
    keep_best = spec.early_stopping is not None
    last_saved = time.monotonic()
    last: dict[str, Any] | None = None  # the last report, if it gave no stop reason
    try:
        for epoch, metrics in trial.epochs():
            new_best = progress.update(metrics.get(objective), epoch)
            metrics.update({time_key: epoch, results.EPOCHS_TOTAL: epochs_total,
                            results.BEST_OBJECTIVE: progress.best, results.BEST_EPOCH: progress.best_epoch})
            reason = None
            if progress.exhausted and (planned is None or epoch < planned):
                reason = results.PATIENCE
            elif trial.at_end and planned is not None and epoch < planned:
                reason = results.SCRIPT
            elif clock.over(spec.budget.trial_time_limit) and (planned is None or epoch < planned):
                reason = results.TIME_LIMIT
            if reason:
                metrics[results.STOP_REASON] = reason
            parked = not reason and not trial.at_end and (planned is None or epoch < planned) \
                and time_budget.past(deadline)
            if parked:
                metrics[results.PARKED] = True  # budget.time_limit: checkpoint this report, then wait
            metrics.update(clock.metrics())
            if pending_config is not None:
                metrics[results.TRIAL_CONFIG], pending_config = pending_config, None
            due = time.monotonic() - last_saved >= spec.checkpoint.min_interval_s
            if not (due or epoch >= epochs_total or (keep_best and new_best) or reason == results.TIME_LIMIT or parked):
                tune.report(metrics)
            else:
                last_saved = time.monotonic()
                with tempfile.TemporaryDirectory() as tmp:
                    trial.snapshot(Path(tmp), {"epoch": epoch, **progress.state(), time_budget.TRAINED_S: clock.total_s})
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
            last = None if reason else metrics
            if reason in (results.PATIENCE, results.TIME_LIMIT):
                break  # the `finally` stops the script
            if parked:
                trial.stop()  # the script would train on past its checkpoint
                time_budget.wait_to_be_stopped()
        else:
            if last is not None and planned is not None and last[time_key] < planned:
                # the script exited 0 after its last report was already out (it was quiet for a while
                # before it ended): say why it ended with a copy of that report, for the same epoch
                last = {k: v for k, v in last.items() if k != results.TRIAL_CONFIG}
                tune.report({**last, results.STOP_REASON: results.SCRIPT})
    finally:
        trial.stop()
