"""Task registry: the training/evaluation code a trial runs.

A task is plain PyTorch and knows nothing of Ray or MLflow, so it can be tested and debugged
on its own::

    task = load_task("detection")(trial_config, device="cpu")
    for epoch in range(1, epochs + 1):
        train_metrics = task.train_one_epoch(epoch)   # {"train/loss": ..., "train/lr": ...}
        val_metrics = task.evaluate()                 # {"map": ..., "map50": ..., "ap/circle": ...}

`trial_config` is the nested, fully-defaulted dict built from a sweep file's ``base`` with the
trial's searched values applied (see ``sweeper.config.trial_config``). The registry maps names
to import paths so that looking a task up does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any, Protocol

#: task name -> "module:Class"; imported only when a trial (or `sweeper validate`) needs it.
TASKS: dict[str, str] = {
    "detection": "sweeper.tasks.detection.task:DetectionTask",
    "dbnet": "sweeper.tasks.dbnet.task:DBNetTask",
    "noop": "sweeper.tasks.noop:NoopTask",
}


class NonFiniteLossError(RuntimeError):
    """Raised by a task when the training loss becomes NaN/inf: the trial fails with this reason."""


class Task(Protocol):
    """What the trainable needs from a task."""

    def __init__(self, config: dict[str, Any], device: str = "cpu") -> None: ...

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (1-based); return metrics such as ``train/loss``, ``train/lr``."""

    def evaluate(self) -> dict[str, float]:
        """Evaluate on the validation split; return metrics keyed as they are logged."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: model, optimizer, LR scheduler, RNG states."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def load_task(name: str) -> type:
    """Import and return the task class registered under ``name``."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    module_name, _, cls_name = TASKS[name].partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


def check_sweep(sweep: Any) -> None:
    """Checks that need the task's libraries (timm names); run before Ray starts, not in --dry-run."""
    from sweeper.config import SweepConfigError

    if sweep.spec.task in ("detection", "dbnet"):
        from sweeper.tasks.backbones import check_backbone  # torch-free once cached

        names = {("base.model.backbone", sweep.base["model"]["backbone"])}
        for dim in sweep.dimensions:
            if dim.key == "model.backbone":
                names |= {("search.model.backbone", v) for v in dim.values}
        for field, name in sorted(names):
            try:
                check_backbone(name)
            except ValueError as exc:
                raise SweepConfigError(sweep.file, field, str(exc)) from None


def prepare_data(sweep: Any, log: Any = print) -> None:
    """Generate the synthetic dataset a sweep file asks for (`data.synth`) if it is missing."""
    from pathlib import Path

    from sweeper.config import SweepConfigError

    data = sweep.spec.data
    if data is None or data.synth is None or all(Path(p).exists() for p in (data.train, data.val, data.images)):
        return
    out = Path(data.train).parent
    expected = {"train": out / "train.json", "val": out / "val.json", "images": out / "images"}
    for key, path in expected.items():
        if Path(getattr(data, key)) != path:
            raise SweepConfigError(sweep.file, f"data.{key}", f"with data.synth the dataset is generated "
                                   f"as {out}/{{train.json,val.json,images}}; expected {path}")
    log(f"generating synthetic {sweep.spec.task} data in {out} ({data.synth.images} images, "
        f"{data.synth.size} px, seed {data.synth.seed}) ...")
    synthesize(sweep.spec.task, out, images=data.synth.images, size=data.synth.size, seed=data.synth.seed)


def synthesize(task: str, out: Any, *, images: int, size: int, seed: int) -> dict[str, Any]:
    """Write a synthetic dataset for `task`: COCO shapes (detection) or UFO receipts (dbnet)."""
    if task == "detection":
        from sweeper.tasks.detection.synth import make_synthetic_coco

        return make_synthetic_coco(out, images=images, size=size, seed=seed)
    if task == "dbnet":
        from sweeper.tasks.dbnet.synth import make_synthetic_receipts

        return make_synthetic_receipts(out, images=images, size=size, seed=seed)
    raise KeyError(f"unknown task {task!r}; known tasks: {', '.join(sorted(TASKS))}")
