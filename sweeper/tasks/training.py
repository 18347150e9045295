"""Training pieces every task shares: seeding, optimizer, per-iteration LR schedule, RNG state,
the training loop (`run_epoch`: micro-batches, AMP, the non-finite-loss guard, the epoch's
metrics), the inference-time grid, and telling a dead DataLoader worker (`worker_crash`) from
other errors.

Tasks build these from the validated `train` block of their trial config, so `train.optimizer`,
`train.lr`, `train.schedule`, `train.warmup_epochs` ... mean the same for detection and DBNet; a
task is then a builder of model, data, optimizer and evaluator::

    seed_everything(cfg.train.seed)
    opt = Optimization(model, cfg.train, iters_per_epoch=len(loader), amp=amp, cuda=cuda)
    metrics = run_epoch(model, loader, loss_fn, opt, epoch=1, prepare=to_device,
                        micro=cfg.train.micro_batches, amp=amp)
"""
from __future__ import annotations

import copy
import itertools
import math
import os
import random
import re
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from sweeper.tasks import NonFiniteLossError

#: the LR at the first warmup step, as a fraction of train.lr (torchvision's recipe uses 0.001).
WARMUP_START_FACTOR = 0.001


def lr_factor_fn(schedule: str, total_iters: int, warmup_iters: int, milestones: list[float],
                 gamma: float) -> Callable[[int], float]:
    """Multiplier of train.lr at iteration ``i`` (0-based), for ``LambdaLR``.

    Linear warmup from WARMUP_START_FACTOR over ``warmup_iters``; then cosine from 1 to 0 over
    the remaining iterations, or x``gamma`` at each milestone (fractions of ``total_iters``),
    or constant.
    """
    if schedule not in ("cosine", "step", "constant"):
        raise ValueError(f"train.schedule: unknown schedule {schedule!r}; known: cosine, step, constant")
    steps = sorted(int(round(m * total_iters)) for m in milestones)

    def factor(i: int) -> float:
        if i < warmup_iters:
            return WARMUP_START_FACTOR + (1.0 - WARMUP_START_FACTOR) * i / warmup_iters
        if schedule == "cosine":
            t = (i - warmup_iters) / max(1, total_iters - warmup_iters)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
        if schedule == "step":
            return gamma ** sum(i >= s for s in steps)
        return 1.0

    return factor


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (the data order has its own generator)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No decay on biases and norm scales: decaying them only fights the normalisation."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class TrainSettings(Protocol):
    """The `train` keys the optimizer and schedule read: a task's validated `train` block
    (`DetectionTrain`, `DBNetTrain`), whose schema holds every default."""

    epochs: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    warmup_epochs: float
    lr_steps: Sequence[float]
    lr_gamma: float
    grad_clip: float | None


def build_optimizer(model: nn.Module, train: TrainSettings) -> torch.optim.Optimizer:
    """`train.optimizer` (sgd | adamw) with `train.lr`, `train.momentum`, `train.weight_decay`."""
    groups = param_groups(model, float(train.weight_decay))
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=float(train.lr), momentum=float(train.momentum))
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=float(train.lr))
    raise ValueError(f"train.optimizer: unknown optimizer {train.optimizer!r}; known: sgd, adamw")


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainSettings,
                    iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule over `train.epochs` (stepped once per optimizer step)."""
    total = max(1, int(train.epochs) * iters_per_epoch)
    warmup = min(total, int(round(float(train.warmup_epochs) * iters_per_epoch)))
    factor = lr_factor_fn(train.schedule, total, warmup, list(train.lr_steps), float(train.lr_gamma))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def get_rng_state(cuda: bool) -> dict[str, Any]:
    """python/numpy/torch (and CUDA) RNG states, for a checkpoint that continues exactly."""
    # numpy's state as tensors and plain numbers, so checkpoints load with weights_only=True
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    rng = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if cuda:
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: Mapping[str, Any], cuda: bool) -> None:
    python = rng["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = rng["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(rng["torch"].cpu())
    if cuda and "cuda" in rng:
        torch.cuda.set_rng_state_all(rng["cuda"])


def grid_points(grid: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of an `eval_grid` ({"post.box_thresh": [0.3, 0.5], ...}), in order."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def best_over_grid(grid: Mapping[str, list[Any]], defaults: Mapping[str, Any],
                   score: Callable[[dict[str, Any]], dict[str, float]], objective: str,
                   mode: Literal["max", "min"]) -> dict[str, float]:
    """Score the `post` defaults and every grid point from one set of predictions.

    Returns the metrics of the point best for `objective` in the sweep's `mode` (the grid picks
    what the search optimises, so a `min` objective picks the smallest value; the first of equal
    points wins), `best/<key>` for each grid key and `default/<objective>` (the value at the
    defaults). Without a grid: the defaults' metrics. An objective the scores do not contain is
    an error, not a silent pick.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"objective.mode: expected max or min, got {mode!r}")
    default = score(dict(defaults))
    if not grid:
        return dict(default)
    if objective not in default:
        raise ValueError(f"objective.metric: {objective!r} is not an evaluation metric; known: {', '.join(default)}")
    sign = 1.0 if mode == "max" else -1.0
    best_point, best = None, None
    for point in grid_points(grid):
        metrics = score({**defaults, **point})
        if best is None or sign * metrics[objective] > sign * best[objective]:
            best_point, best = point, metrics
    result = dict(best)
    result.update({f"best/{k}": float(v) for k, v in best_point.items()})
    result[f"default/{objective}"] = default[objective]
    return result


class Optimization:
    """Optimizer, per-iteration LR schedule and AMP GradScaler of one task, stepped together.

    Both tasks train the same way once they have a loss; this keeps the step (scaled backward,
    optional clipping, scheduler tick) and the checkpointed state in one place.
    """

    def __init__(self, model: nn.Module, train: TrainSettings, iters_per_epoch: int, *, amp: bool,
                 cuda: bool) -> None:
        self.model, self.cuda = model, cuda
        self.optimizer = build_optimizer(model, train)
        self.scheduler = build_scheduler(self.optimizer, train, iters_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp)
        self.grad_clip = train.grad_clip

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, loss: torch.Tensor) -> None:
        """Backward (scaled under AMP), clip if `train.grad_clip`, optimizer and LR step."""
        self.zero_grad()
        self.backward(loss)
        self.update()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients of one micro-batch (its loss already weighted by its share)."""
        self.scaler.scale(loss).backward()

    def update(self) -> None:
        """Clip, optimizer step and LR tick, once per (effective) batch."""
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), float(self.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, scheduler, scaler and RNG states (a copy: training on does not change it)."""
        return copy.deepcopy({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": get_rng_state(self.cuda),
        })

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict` (possibly saved on another device)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], self.cuda)


def micro_batches(n: int, parts: int) -> list[slice]:
    """Split a batch of `n` items into at most `parts` contiguous micro-batches (gradient
    accumulation): same effective batch, same number of optimizer steps, less memory per step."""
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


#: test-only fault injection: a micro-batch larger than this raises CUDA's out-of-memory error
INJECT_OOM_ENV = "SWEEPER_INJECT_OOM_ABOVE"


def check_injected_oom(micro_batch: int) -> None:
    """Raise `torch.OutOfMemoryError` when the test hook asks for it (env SWEEPER_INJECT_OOM_ABOVE);
    lets tests exercise the OOM fallback on CPU through the real training step."""
    limit = os.environ.get(INJECT_OOM_ENV)
    if limit is not None and micro_batch > int(limit):
        raise torch.OutOfMemoryError(f"CUDA out of memory (injected by {INJECT_OOM_ENV}={limit} for a "
                                     f"micro-batch of {micro_batch})")


#: one micro-batch's (inputs, targets) -> its named loss tensors. A `loss` entry is the total (a
#: loss that weights its own terms, as DBNet's); without one the total is the sum of the entries
#: (a torchvision detector's loss dict). Every other entry is a term, logged as
#: `train/loss_<name without a loss_ prefix>`.
LossFn = Callable[[Any, Any], Mapping[str, torch.Tensor]]


def _part(batch: Any, part: slice) -> Any:
    """One micro-batch of inputs or targets: a list or batch tensor sliced, a dict of batch
    tensors (DBNet's label maps) sliced per key."""
    return {k: v[part] for k, v in batch.items()} if isinstance(batch, Mapping) else batch[part]


def run_epoch(model: nn.Module, loader: Iterable[Any], loss_fn: LossFn, opt: Optimization, *, epoch: int,
              prepare: Callable[[Any], tuple[Any, Any]], micro: int = 1, amp: bool = False) -> dict[str, float]:
    """Train `model` for one epoch of `loader`: the loop every task shares, so micro-batching,
    AMP, the NaN/inf guard and the epoch's metrics mean the same for each (torchvision's
    references' `train_one_epoch` is the model: built objects in, metrics out).

    `prepare` puts one loader batch on the device as (inputs, targets), each a list, a batch
    tensor or a dict of batch tensors. Each batch is one optimizer step: split into `micro`
    micro-batches (`train.micro_batches`) whose losses, weighted by their share of the batch,
    accumulate gradients, so the effective batch and the LR schedule do not depend on it.
    `loss_fn` runs under CUDA autocast when `amp`.

    Returns `train/loss` (mean over the steps), `train/lr` (the last step's LR),
    `train/images_per_s`, the mean of each loss term, `model/params_m` (parameters, millions) and,
    on a GPU, `gpu/peak_mem_gib` (the epoch's peak allocated memory, GiB): what `constraints` bound. A NaN/inf loss raises
    NonFiniteLossError naming epoch, step, value and terms; so does a forward pass that fails on
    NaN/inf weights (exploded weights often break box decoding or matching before a loss exists).
    """
    model.train()
    cuda = next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    n_steps, n_images, total, lr = len(loader), 0, 0.0, 0.0
    terms: dict[str, float] = {}
    start = time.perf_counter()
    for step, batch in enumerate(loader, start=1):
        inputs, targets = prepare(batch)
        n = len(inputs)
        lr = opt.lr
        opt.zero_grad()
        for part in micro_batches(n, micro):
            size = part.stop - part.start
            check_injected_oom(size)
            share = size / n
            try:
                with torch.autocast("cuda", enabled=amp):
                    losses = loss_fn(_part(inputs, part), _part(targets, part))
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:
                if not all(torch.isfinite(p).all() for p in model.parameters()):
                    raise NonFiniteLossError(f"epoch {epoch}, step {step}/{n_steps}: model weights are NaN/inf "
                                             f"(forward failed: {exc})") from exc
                raise
            step_terms = {k: v for k, v in losses.items() if k != "loss"}
            loss = losses["loss"] if "loss" in losses else sum(step_terms.values())
            value = float(loss.detach())
            if not math.isfinite(value):
                parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in step_terms.items())
                raise NonFiniteLossError(f"epoch {epoch}, step {step}/{n_steps}: non-finite training loss {value} "
                                         f"({parts})")
            opt.backward(loss * share)
            total += value * share
            for k, v in step_terms.items():
                terms[k] = terms.get(k, 0.0) + float(v.detach()) * share
        opt.update()
        n_images += n
    steps = max(1, n_steps)
    metrics = {"train/loss": total / steps, "train/lr": lr,
               "train/images_per_s": n_images / max(time.perf_counter() - start, 1e-9)}
    metrics.update({f"train/loss_{k.removeprefix('loss_')}": v / steps for k, v in terms.items()})
    metrics["model/params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    if cuda:
        metrics["gpu/peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return metrics


#: test-only fault injection: a DataLoader worker loading a training item of this epoch SIGKILLs itself
INJECT_WORKER_CRASH_ENV = "SWEEPER_INJECT_WORKER_CRASH"


def check_injected_worker_crash(epoch: int) -> None:
    """SIGKILL this process when the test hook asks for it (env SWEEPER_INJECT_WORKER_CRASH=<epoch>)
    and it is a DataLoader worker loading a training item of that epoch: a real dead worker, as a
    segfaulting image decoder or the kernel's out-of-memory killer leaves one. Never kills the
    trial's own process (train.workers: 0 loads in it)."""
    at = os.environ.get(INJECT_WORKER_CRASH_ENV)
    if at is not None and int(at) == epoch and torch.utils.data.get_worker_info() is not None:
        os.kill(os.getpid(), signal.SIGKILL)


class DataLoaderWorkerError(RuntimeError):
    """A DataLoader worker process died (killed by a signal, a crash in native code, the OOM
    killer). torch reports it as a bare RuntimeError; this one says what to look at."""


#: torch's words for a dead worker: the loader's own check ("pid(s) 12, 13 ... exited unexpectedly")
#: and, in a main thread, its SIGCHLD handler ("pid 12) is killed by signal: Killed." / "... exited
#: unexpectedly with exit code 1")
_WORKER_DIED = re.compile(r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\) (?:is killed by signal: ([^.]+)|"
                          r"exited unexpectedly(?: with exit code (-?\d+))?)")


def _exit_codes(exc: BaseException) -> dict[int, int]:
    """pid -> exit code of the dead workers, from the DataLoader frame that raised `exc` (torch's
    message has no exit code when it comes from the loader's own check, as in Ray's trial threads)."""
    codes: dict[int, int] = {}
    tb = exc.__traceback__
    while tb is not None:
        for w in tb.tb_frame.f_locals.get("failed_workers") or ():
            if getattr(w, "pid", None) is not None and isinstance(getattr(w, "exitcode", None), int):
                codes[int(w.pid)] = int(w.exitcode)
        tb = tb.tb_next
    return codes


def worker_crash(exc: BaseException, during: str) -> DataLoaderWorkerError | None:
    """A DataLoaderWorkerError for `exc` if it is torch's report of a dead DataLoader worker, else
    None. `during` says what the trial was doing ("training epoch 3")."""
    match = _WORKER_DIED.search(str(exc)) if isinstance(exc, RuntimeError) else None
    if match is None:
        return None
    pids = [int(p) for p in re.findall(r"\d+", match.group(1))]
    codes = _exit_codes(exc)
    if match.group(2):  # strsignal's words ("Killed"): name the signal too
        text = match.group(2).strip()
        names = [s.name for s in signal.Signals if signal.strsignal(s) == text]
        how = f"killed by signal {names[0]} ({text})" if names else f"killed by signal {text}"
    elif match.group(3):
        how = f"exit code {match.group(3)}"
    elif any(codes.get(p, 0) < 0 for p in pids):
        names = sorted({_signal_name(-codes[p]) for p in pids if codes.get(p, 0) < 0})
        how = f"killed by signal {', '.join(names)}"
    elif any(p in codes for p in pids):
        how = f"exit code {', '.join(str(codes[p]) for p in pids if p in codes)}"
    else:
        how = "cause unknown"
    who = f"worker processes (pids {', '.join(map(str, pids))})" if len(pids) > 1 else f"worker process (pid {pids[0]})"
    oom = " (SIGKILL is often the kernel's out-of-memory killer)" if "SIGKILL" in how else ""
    return DataLoaderWorkerError(
        f"DataLoader worker crash: {who} died while "
        f"{during}, {how}{oom}. Lower train.workers (0 loads data in the trial's own process, where a "
        "decoder's real error shows), check the dataset's images (a corrupt file can crash a decoder), and "
        "the machine's memory and shared memory (/dev/shm)")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"{signum}"


def device_settings(device: Any, *, amp: bool, channels_last: bool = True) -> dict[str, bool]:
    """What a task turns on for where it trains: `amp` (CUDA autocast and a GradScaler, as
    `train.amp` asks) and `channels_last` (the model's memory format, for a task whose convolutions
    gain from it), both on CUDA only: CPU autocast is bfloat16, slower than float32 for these
    models on most CPUs, and channels_last gains nothing there. Returned as the task logs it in
    `runtime` ({"device": "cuda", "amp": True, "channels_last": True})."""
    kind = torch.device(device).type
    cuda = kind == "cuda"
    return {"device": kind, "amp": cuda and bool(amp), "channels_last": cuda and bool(channels_last)}


def loader_settings(workers: int | str | None, *, device: str, cpus: float | None = None) -> dict[str, Any]:
    """DataLoader keyword arguments from `train.workers` and where the trial runs.

    `auto` (the default): on a CPU trial, 0 workers, since its cores are busy training and a
    loader process per core would over-subscribe them; on a GPU trial, min(4, cpus - 1) workers
    (`cpus`: the trial's CPU resources, else the cores this process may use), because there the
    cores' only job is to decode and augment fast enough to keep the GPU busy. Batches go to a
    GPU from pinned memory, which lets `.to(device, non_blocking=True)` overlap the copy.
    """
    cuda = str(device).startswith("cuda")
    if workers in (None, "auto"):
        have = cpus if cpus is not None else len(os.sched_getaffinity(0))
        workers = max(0, min(4, int(have) - 1)) if cuda else 0
    return {"num_workers": int(workers), "pin_memory": cuda}
