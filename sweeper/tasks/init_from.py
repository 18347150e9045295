"""``model.init_from``: start a whole built model (detector, DBNet) from a file, before training.

Why: a team fine-tunes torchvision's COCO detectors, or its own best trial, on its classes; the
file's class head then has another shape than the model's, and those tensors must stay as built
(random) rather than fail the trial, while every other tensor is the file's.

* The file (:func:`read_state`): a state dict saved with ``torch.save`` (``.pth``/``.pt``; loaded
  with ``weights_only``: a checkpoint is data, never code to run) or ``safetensors``; or one of our
  trial checkpoints (``trial_state.pt``, whose ``task.model`` is the model's state), or any
  checkpoint with a ``model`` / ``state_dict`` entry (torchvision's reference scripts save
  ``model``). A missing file, or one that holds no tensors by name, is a ValueError naming
  ``model.init_from``.
* :func:`load_init` copies every tensor whose name and shape match the model's; tensors of another
  shape are kept as built and listed (``reinitialised``), as are the model's tensors the file lacks
  (``missing``) and the file's the model lacks (``unexpected``). BatchNorm's step counters
  (``num_batches_tracked``, which FrozenBatchNorm files lack) are not listed. A file that fills
  none of the model's tensors is another model's: a ValueError, not a silently random model.
  The report is printed (the trial log) and goes into the task's ``runtime`` (:meth:`InitReport.summary`).
* ``SWEEP_NAME:best`` is resolved to a ``trial_state.pt`` path by the driver before trials start
  (:mod:`sweeper.checkpoints`); here it is always a path.

Usage::

    report = load_init(model, "coco_fcos.pth")
    task.runtime["init_from"] = report.summary()  # {"file", "loaded": 308, "reinitialised": [...], ...}
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

KEY = "model.init_from"
#: where a checkpoint keeps the model's state dict, tried in order (() = the file is the state dict)
STATE_PATHS: tuple[tuple[str, ...], ...] = (("task", "model"), ("model",), ("state_dict",), ())
#: BatchNorm's step counters: never listed (FrozenBatchNorm files lack them; they are not weights)
COUNTER = "num_batches_tracked"


@dataclass(frozen=True)
class InitReport:
    """What :func:`load_init` did, tensor names by outcome."""

    file: str
    loaded: list[str]
    reinitialised: list[str]
    missing: list[str]
    unexpected: list[str]

    def summary(self) -> dict[str, Any]:
        """For ``runtime``: the loaded tensors counted, the others named."""
        return {"file": self.file, "loaded": len(self.loaded), "reinitialised": self.reinitialised,
                "missing": self.missing, "unexpected": self.unexpected}

    def log_line(self, shown: int = 8) -> str:
        def names(keys: list[str]) -> str:
            more = f", ... ({len(keys)} in all)" if len(keys) > shown else ""
            return (", ".join(keys[:shown]) + more) if keys else "none"

        return (f"{KEY}: {self.file}: loaded {len(self.loaded)} tensors; re-initialised (another shape in the "
                f"file): {names(self.reinitialised)}; missing from the file: {names(self.missing)}; "
                f"unexpected in the file: {names(self.unexpected)}")


def _tensors(obj: Any) -> dict[str, torch.Tensor] | None:
    """``obj`` as a state dict (its tensor entries), or None if it holds no tensors by name."""
    if not isinstance(obj, Mapping):
        return None
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return state or None


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict in ``path`` (see the module docstring for the forms it takes)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"{KEY}: file not found: {file}")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(file))
        else:
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch / safetensors raise many types on a damaged file
        raise ValueError(f"{KEY}: cannot read {file} (truncated, not a checkpoint, or pickled objects "
                         f"besides tensors?): {type(exc).__name__}: {str(exc)[:300]}") from None
    for keys in STATE_PATHS:
        node = obj
        for key in keys:
            node = node.get(key) if isinstance(node, Mapping) else None
        state = _tensors(node)
        if state:
            return state
    raise ValueError(f"{KEY}: {file} holds no state dict (tensors by name; a trial_state.pt's task.model, "
                     "or a checkpoint's model / state_dict entry)")


def load_init(model: nn.Module, path: str | Path) -> InitReport:
    """Copy the tensors of ``path`` that fit ``model`` into it; see the module docstring."""
    state = read_state(path)
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    if not fits:
        raise ValueError(f"{KEY}: {path} fills none of this model's tensors (another model's weights?): "
                         f"its keys e.g. {', '.join(list(state)[:5])}; the model's e.g. {', '.join(list(own)[:5])}")
    model.load_state_dict(fits, strict=False)
    report = InitReport(  # in the model's order (a safetensors file sorts its keys)
        file=str(path),
        loaded=[k for k in own if k in fits],
        reinitialised=[k for k in own if k in state and k not in fits],
        missing=[k for k in own if k not in state and not k.endswith(COUNTER)],
        unexpected=[k for k in state if k not in own and not k.endswith(COUNTER)],
    )
    print(report.log_line(), flush=True)
    return report
