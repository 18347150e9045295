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
    """Checks that need the task's libraries, run before any trial is dispatched (and by `sweeper
    validate`; not in --dry-run): every backbone a trial can get (the fixed one, searched choices,
    ablation factor values) is a timm model, and one that starts from weights has them (a
    `weights` file, mapping entry or directory file, or, with the hub offline, timm's in the
    local cache). A missing one would otherwise fail in every trial that draws it."""
    from sweeper.config import SweepConfigError

    trials = [t for key in sweep.task.backbone_keys for t in _backbone_trials(sweep, key)]
    if not trials:
        return
    from sweeper.tasks.backbones import check_backbone  # torch-free once cached
    from sweeper.tasks.weights import missing_weights  # imports timm only for timm's own weights

    for field, name in sorted({(field, model["backbone"]) for field, model in trials}, key=repr):
        try:
            check_backbone(name)
        except ValueError as exc:
            raise SweepConfigError(sweep.file, field, str(exc)) from None
    seen: set[str] = set()
    for field, model in trials:
        case = repr(sorted(model.items()))
        if case in seen:
            continue
        seen.add(case)
        try:
            problem = missing_weights(model["backbone"], bool(model["pretrained"]), model["weights"])
        except ValueError as exc:  # a pretrained tag timm does not have
            problem = str(exc)
        if problem:
            raise SweepConfigError(sweep.file, field, problem)


def _backbone_trials(sweep: Any, key: str) -> list[tuple[str, dict[str, Any]]]:
    """(the field that sets the backbone, {backbone, pretrained, weights}) for every combination
    a trial can get of backbone key `key` and its siblings `pretrained` and `weights`
    (`model.backbone` -> `model.pretrained`, `model.weights`: the section create_timm_body reads).
    An ablation's are its variants; a search's, every combination of the searched choices."""
    import itertools

    from sweeper.config import get_or_none

    prefix = key.rpartition(".")[0]
    keys = {n: f"{prefix}.{n}" if prefix else n for n in ("backbone", "pretrained", "weights")}
    fixed = {n: get_or_none(sweep.base, k) for n, k in keys.items()}
    if sweep.spec.ablation is not None:
        return [(f"ablation.factors.{key}" if key in changes else f"base.{key}",
                 {n: changes.get(k, fixed[n]) for n, k in keys.items()}) for _, changes in sweep.variants]
    searched = {d.key: d.values for d in sweep.dimensions if d.is_categorical}
    options = {n: list(searched.get(k, [fixed[n]])) for n, k in keys.items()}
    field = f"search.{key}" if key in searched else f"base.{key}"
    return [(field, dict(zip(options, combo))) for combo in itertools.product(*options.values())]


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
