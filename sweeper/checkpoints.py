"""Checkpoint references: `SWEEP_NAME:best` names the best checkpoint of an earlier sweep.

A task declares which of its keys start a model from a checkpoint (`TaskSpec.checkpoint_keys`,
e.g. `model.init_from`). Such a key may hold a file, or `NAME:best`: the best trial (by its
objective, as the leaderboard ranks it) of the latest launch of sweep NAME in the same tracking
store, and of that trial's checkpoints (Tune keeps the best ones by the objective) the one whose
epoch scored best. The driver resolves references before any trial is dispatched, so trials
only ever see file paths and never need the tracking store:

    sweep = resolve_checkpoint_refs(sweep)   # SweepConfigError if NAME is unknown, of another task, ...

MLflow and the storage directory only: no Ray, no torch.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from sweeper.config import Sweep, SweepConfigError, get_or_none, redact_uri, set_dotted
from sweeper.config.loading import CHECKPOINT_REF

REF = CHECKPOINT_REF
#: the file of a trial checkpoint the trainable writes (sweeper.trainable.STATE_FILE)
TRIAL_STATE = "trial_state.pt"


def is_ref(value: Any) -> bool:
    return isinstance(value, str) and REF.fullmatch(value) is not None


def best_checkpoint(sweep: Sweep, ref: str, field: str) -> str:
    """The checkpoint file `ref` (`NAME:best`) stands for; errors name the sweep file and `field`."""
    from sweeper import store

    name = REF.fullmatch(ref)["name"]
    uri = sweep.spec.tracking.uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise SweepConfigError(sweep.file, field, f"{ref}: no MLflow store at {uri.removeprefix('sqlite:///')} "
                               f"to find sweep {name!r} in (tracking.uri names the store it was recorded in)")
    try:
        board = store.leaderboard(uri, name)
    except LookupError as exc:
        raise SweepConfigError(sweep.file, field, f"{ref}: {exc}") from None
    if board.get("task") not in (None, sweep.spec.task):
        raise SweepConfigError(sweep.file, field, f"{ref}: sweep {name!r} trained task {board['task']!r}, not "
                               f"{sweep.spec.task!r}: its checkpoints do not fit this model")
    ranked = [r for r in board["rows"] if r[board["objective"]] is not None]
    if not ranked:
        raise SweepConfigError(sweep.file, field, f"{ref}: sweep {name!r} has no trial with a value of "
                               f"{board['objective']!r} yet")
    best = ranked[0]
    trial_dir = _local_experiment(sweep, name) / f"trial_{best['trial']}"
    path = _best_in_trial(trial_dir, board["objective"], board["mode"])
    if path is None:
        raise SweepConfigError(sweep.file, field, f"{ref}: the best trial {best['trial']} of sweep {name!r} has "
                               f"no checkpoint in {trial_dir} (was `storage` moved, or the trial pruned?)")
    return str(path)


def _local_experiment(sweep: Sweep, name: str) -> Path:
    storage = sweep.spec.storage
    if "://" in storage and not storage.startswith("file://"):
        raise SweepConfigError(sweep.file, "storage", f"`NAME:best` references read checkpoints from a local or "
                               f"shared directory; {redact_uri(storage)} is object storage: copy the checkpoint down and "
                               "give its path")
    return Path(storage.removeprefix("file://")) / name


def _best_in_trial(trial_dir: Path, objective: str, mode: str) -> Path | None:
    """Of the checkpoints Ray still holds for a trial, the one reported with the best objective
    (result.json names each report's checkpoint directory)."""
    best: tuple[float, Path] | None = None
    results = trial_dir / "result.json"
    if not results.is_file():
        return None
    sign = 1.0 if mode == "max" else -1.0
    for line in results.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        folder, value = record.get("checkpoint_dir_name"), record.get(objective)
        path = trial_dir / str(folder) / TRIAL_STATE
        if not folder or not isinstance(value, (int, float)) or math.isnan(value) or not path.is_file():
            continue
        score = sign * float(value)
        if best is None or score >= best[0]:  # a tie goes to the later, longer-trained epoch
            best = (score, path)
    return best[1] if best else None


def resolve_checkpoint_refs(sweep: Sweep) -> Sweep:
    """`sweep` with every `NAME:best` in the task's checkpoint keys (in `base`, ablation factors and
    named variants, searched choices) replaced by the checkpoint's path; the same sweep if it has none."""
    keys = sweep.task.checkpoint_keys
    if not keys:
        return sweep
    cache: dict[str, str] = {}

    def resolve(value: Any, field: str) -> Any:
        if not is_ref(value):
            return value
        if value not in cache:
            cache[value] = best_checkpoint(sweep, value, field)
        return cache[value]

    base = json.loads(json.dumps(sweep.base))
    for key in keys:
        value = get_or_none(base, key)
        if is_ref(value):
            set_dotted(base, key, resolve(value, f"base.{key}"))
    spec, abl = sweep.spec, sweep.spec.ablation
    if abl is not None:
        factors = {k: [resolve(v, f"ablation.factors.{k}") if k in keys else v for v in values]
                   for k, values in abl.factors.items()}
        variants = {name: {k: resolve(v, f"ablation.variants.{name}.{k}") if k in keys else v
                           for k, v in changes.items()} for name, changes in abl.variants.items()}
        spec = spec.model_copy(update={"ablation": abl.model_copy(update={"factors": factors, "variants": variants})})
    dims = [replace(d, values=tuple(resolve(v, f"search.{d.key}") for v in d.values))
            if d.key in keys and d.is_categorical else d for d in sweep.dimensions]
    if not cache:
        return sweep
    return sweep.model_copy(update={"base": base, "spec": spec, "dimensions": dims})
