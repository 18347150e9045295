"""Task registry: the training/evaluation code a trial runs.

A task is plain PyTorch and knows nothing of Ray or MLflow, so it can be tested and debugged
on its own::

    task = load_task("detection")(trial_config, device="cpu")
    for epoch in range(1, epochs + 1):
        train_metrics = task.train_one_epoch(epoch)   # {"train/loss": ..., "train/lr": ...}
        val_metrics = task.evaluate()                 # {"map": ..., "map50": ..., "ap/circle": ...}

`trial_config` is the task's validated trial config (``sweeper.config.build_trial``: the sweep
file's ``base`` with the trial's values applied, read by attribute); a nested dict is validated
into it too (``sweeper.config.as_trial_config``). Which tasks exist, and what each declares, is
``sweeper.registry``: each task's ``spec.py`` beside its code.
"""
from __future__ import annotations

from typing import Any, Protocol

from sweeper.registry import get_spec
from sweeper.results import NonFiniteLossError  # noqa: F401 - raised by tasks, re-exported for them




class Task(Protocol):
    """What the trainable needs from a task."""

    #: what the task resolved for itself (device, AMP on/off, ...), logged with the trial's config
    runtime: dict[str, Any]

    def __init__(self, config: Any, device: str = "cpu") -> None: ...

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (1-based); return metrics such as ``train/loss``, ``train/lr``."""

    def evaluate(self) -> dict[str, float]:
        """Evaluate on the validation split; return metrics keyed as they are logged."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: model, optimizer, LR scheduler, RNG states."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def load_task(name: str) -> type:
    """Import and return the task class registered under ``name``."""
    return get_spec(name).load_task()


def check_sweep(sweep: Any) -> None:
    """Checks that need the task's libraries (timm names); run before Ray starts, not in --dry-run."""
    from sweeper.config import SweepConfigError, get_or_none

    keys = sweep.task.backbone_keys
    if keys:
        from sweeper.tasks.backbones import check_backbone  # torch-free once cached

        names = {(f"base.{key}", get_or_none(sweep.base, key)) for key in keys}
        for dim in sweep.dimensions:
            if dim.key in keys:
                names |= {(f"search.{dim.key}", v) for v in dim.values}
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
    """Write the synthetic dataset task `task` declares (its spec's `synthesize`)."""
    return get_spec(task).synthesizer()(out, images=images, size=size, seed=seed)
