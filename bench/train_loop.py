"""Training throughput of the tasks against a minimal torchvision-style loop on the same model and data.

For the detection task (`sweeps/demo.yaml`'s model and data size: Faster R-CNN, timm
`mobilenetv3_small_100`, synthetic shapes at `--resolution`) and the DBNet task (resnet18 U-Net
on synthetic receipts at `--dbnet-resolution`):

* the task: `Task.train_one_epoch(epoch)` as a trial runs it (micro-batch loop, loss checks,
  per-iteration LR schedule, size-weighted targets when configured, AMP/GradScaler wrappers);
* the plain loop, as torchvision's `references/detection/engine.py` would train: a DataLoader over
  the task's own training dataset (same batch, same resolution, same workers), a copy of the
  task's model at the same initial weights, the same optimizer (SGD for detection, AdamW for
  DBNet, same LR and weight decay) with a linear warmup, and per step `model(images, targets)`
  (DBNet: `model(images)` + the task's DBLoss), `loss.item()`, `backward()`, `step()`.

Epochs alternate task / plain (`--epochs` of each; the first of each is a warm-up and left out),
with `--threads` torch threads (1: what a 1-CPU trial has). Reported: training images/s of both
(median epoch), task / plain (target >= 0.95), and the data loader's share of step time: the
plain loop's time waiting on the loader / its epoch time, and one pass of the task's own training
loader alone / the task's epoch time.

Writes `bench/results/train_loop.json`.

    python bench/train_loop.py            # ~5 minutes on 2 cores
    python bench/train_loop.py --quick    # a smoke run
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from common import dbnet_config, demo_sweep, make_task, trial_configs, write_sweep
from results_io import RESULTS, environment, remove_work, write_result


def warmup_sgd_or_adamw(model: torch.nn.Module, train: dict[str, Any], iters_per_epoch: int):  # noqa: ANN201
    """The optimizer a plain loop would build for `train`, and torchvision's linear warmup."""
    lr, wd = float(train["lr"]), float(train.get("weight_decay", 1e-4))
    params = [p for p in model.parameters() if p.requires_grad]
    if train.get("optimizer", "sgd") == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=float(train.get("momentum", 0.9)), weight_decay=wd)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    warmup = max(1, int(float(train.get("warmup_epochs", 1.0)) * iters_per_epoch))
    return opt, torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.001, total_iters=warmup)


def plain_epoch(loader: torch.utils.data.DataLoader, step: Callable[[Any], torch.Tensor],
                opt: torch.optim.Optimizer, sched: Any) -> tuple[float, float, int]:
    """One epoch of the plain loop: (seconds, seconds waiting on the loader, images)."""
    waited, images = 0.0, 0
    t0 = time.perf_counter()
    it = iter(loader)
    while True:
        w0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        waited += time.perf_counter() - w0
        loss = step(batch)
        loss.item()  # the reference loop logs it (a sync point on GPU)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        images += len(batch[0])
    return time.perf_counter() - t0, waited, images


def compare(task: Any, loader: torch.utils.data.DataLoader, step: Callable[[Any], torch.Tensor],
            model: torch.nn.Module, epochs: int) -> dict[str, Any]:
    """Alternate task and plain epochs; images/s (median after the first), loader shares."""
    opt, sched = warmup_sgd_or_adamw(model, task.cfg.train.model_dump(), len(loader))
    b = int(task.train_loader.batch_size)
    n = len(task.train_ds) // b * b if task.train_loader.drop_last else len(task.train_ds)  # images an epoch trains
    task_rates, plain_rates, waits, task_epoch_s = [], [], [], []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        task.train_one_epoch(epoch)
        task_epoch_s.append(time.perf_counter() - t0)
        task_rates.append(n / task_epoch_s[-1])
        model.train()
        seconds, waited, images = plain_epoch(loader, step, opt, sched)
        plain_rates.append(images / seconds)
        waits.append(waited / seconds)
        print(f"  epoch {epoch}: task {task_rates[-1]:.2f} images/s, plain {plain_rates[-1]:.2f} images/s, "
              f"plain loader share {waits[-1]:.3f}", flush=True)
    keep = slice(1 if epochs > 1 else 0, None)
    t0 = time.perf_counter()
    for _ in task.train_loader:  # the task's own loader, alone: what its epochs spend loading
        pass
    loader_only = time.perf_counter() - t0
    task_rate, plain_rate = statistics.median(task_rates[keep]), statistics.median(plain_rates[keep])
    return {
        "train_images": n, "batch_size": loader.batch_size, "workers": loader.num_workers,
        "task_images_per_s": round(task_rate, 3), "plain_images_per_s": round(plain_rate, 3),
        "task_over_plain": round(task_rate / plain_rate, 3), "target_met": task_rate / plain_rate >= 0.95,
        "task_images_per_s_by_epoch": [round(r, 3) for r in task_rates],
        "plain_images_per_s_by_epoch": [round(r, 3) for r in plain_rates],
        "plain_loader_wait_share": round(statistics.median(waits[keep]), 4),
        "task_loader_only_s": round(loader_only, 2),
        "task_loader_share": round(loader_only / statistics.median(task_epoch_s[keep]), 4),
    }


def detection(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from sweeper.tasks import synthesize
    from sweeper.tasks.detection.data import collate_fn

    synthesize("detection", work / "shapes", images=args.images, size=args.resolution, seed=0)
    doc = demo_sweep("bench-train-loop", work / "shapes", lrs=None, epochs=args.epochs, resolution=args.resolution,
                     concurrent=1, train={"optimizer": "sgd", "lr": 0.01, "workers": args.workers})
    (cfg,) = trial_configs(write_sweep(doc, work / "detection.yaml"), [{}], cwd=work)
    task = make_task(cfg)
    model = copy.deepcopy(task.model)
    loader = torch.utils.data.DataLoader(task.train_ds, batch_size=int(cfg["train"]["batch_size"]), shuffle=True,
                                         num_workers=args.workers, collate_fn=collate_fn)

    def step(batch: Any) -> torch.Tensor:
        images, targets = batch
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        return sum(model(images, targets).values())

    return {"model": cfg["model"], "resolution": args.resolution, "optimizer": "sgd", "lr": 0.01,
            **compare(task, loader, step, model, args.epochs)}


def dbnet(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from sweeper.tasks.dbnet.data import collate
    from sweeper.tasks.dbnet.synth import make_synthetic_receipts

    data = make_synthetic_receipts(work / "receipts", images=args.dbnet_images, size=args.dbnet_resolution, seed=0)
    cfg = dbnet_config(data, epochs=args.epochs, resolution=args.dbnet_resolution, warmup_epochs=0.5,
                       workers=args.workers)
    task = make_task(cfg)
    model, loss_fn = copy.deepcopy(task.model), copy.deepcopy(task.loss)
    loader = torch.utils.data.DataLoader(task.train_ds, batch_size=4, shuffle=True, num_workers=args.workers,
                                         collate_fn=collate, drop_last=len(task.train_ds) > 4)

    def step(batch: Any) -> torch.Tensor:
        images, maps, _ = batch
        return loss_fn(model(images), maps)["loss"]

    return {"model": cfg["model"], "resolution": args.dbnet_resolution, "optimizer": cfg["train"]["optimizer"],
            "lr": cfg["train"]["lr"], **compare(task, loader, step, model, args.epochs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3, help="epochs of each loop (the first is a warm-up)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (train.workers)")
    ap.add_argument("--resolution", type=int, default=128, help="detection: px (images are generated at it)")
    ap.add_argument("--images", type=int, default=128, help="detection: synthetic images (3/4 train), as the demo")
    ap.add_argument("--dbnet-resolution", type=int, default=256)
    ap.add_argument("--dbnet-images", type=int, default=32, help="DBNet: synthetic receipts (3/4 train)")
    ap.add_argument("--task", choices=["detection", "dbnet", "both"], default="both")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny data, 2 epochs")
    ap.add_argument("--out", type=Path, default=RESULTS / "train_loop.json")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work directory (data, runs, MLflow store)")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.images, args.resolution, args.dbnet_images, args.dbnet_resolution = 2, 24, 64, 8, 128
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="sweeper-bench-train-loop-"))
    result: dict[str, Any] = {"benchmark": "train_loop", "threads": args.threads, "workers": args.workers,
                              "epochs": args.epochs, "quick": args.quick}
    if args.task in ("detection", "both"):
        print("detection:", flush=True)
        result["detection"] = detection(work, args)
    if args.task in ("dbnet", "both"):
        print("dbnet:", flush=True)
        result["dbnet"] = dbnet(work, args)
    write_result({**result, **environment()}, args.out)
    remove_work(work, args.keep)


if __name__ == "__main__":
    main()
