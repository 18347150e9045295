"""timm backbones for every task: is a name a timm model (answered without importing torch when
possible), and :func:`create_timm_body`, which builds one and loads its weights (a local file, or
timm's pretrained ones: see :mod:`sweeper.tasks.weights`).

`sweeper launch` checks every backbone a sweep names before Ray starts (a typo must fail in a
second, not in every trial). timm's registry lives inside timm, and importing timm imports torch
and torchvision: about 6 s of CPU in the driver, on a 2-core machine in competition with Ray's own
start-up, and another second at exit, for a driver that never trains anything. So the names timm
lists are cached once per timm version in a text file (`$SWEEPER_CACHE_DIR`, else
`$XDG_CACHE_HOME/sweeper`, else `~/.cache/sweeper`), and a name found there is accepted without
importing timm. timm stays the authority: a name not in the cache (a deprecated alias, a model
registered by a newer timm build, a typo) is checked by timm itself, which also suggests the
closest names.

    check_backbone("resnet18.a1_in1k")   # ok: pretrained tags are valid timm names
    check_backbone("resnet81")           # ValueError: ... did you mean: resnet18, resnet101, ...?
    body = create_timm_body({"backbone": "resnet18", "weights": "r18.safetensors"}, out_indices=3)
    body = create_timm_body({"backbone": "resnet50", "pretrained": True})   # timm's, via the HF cache

torch and timm are imported inside the functions that need them, so that importing this module
(and a cached check) stays torch-free.
"""
from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeper.tasks.weights import HOW, local_weights, missing_weights

if TYPE_CHECKING:
    import torch
    from torch import nn


def cache_dir() -> Path:
    """Where sweeper keeps small per-machine caches."""
    if os.environ.get("SWEEPER_CACHE_DIR"):
        return Path(os.environ["SWEEPER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sweeper"


def _cache_file() -> Path:
    return cache_dir() / f"timm-{metadata.version('timm')}-models.txt"


def _cached_names() -> frozenset[str] | None:
    try:
        names = _cache_file().read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    return frozenset(names) if names else None


def _write_cache(names: list[str]) -> None:
    """Atomically (a concurrent launch reads either nothing or the whole list); a read-only home
    only costs the next launch the timm import."""
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".timm-models-")
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(names) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass


def check_backbone(name: object) -> None:
    """Raise ValueError naming the closest timm models if `name` is not a timm model.

    Pretrained tags (`resnet18.a1_in1k`) are accepted as timm accepts them: by the part before
    the first dot.
    """
    arch = name.split(".", 1)[0] if isinstance(name, str) else None
    cached = _cached_names()
    if arch is not None and cached is not None and arch in cached:
        return
    import timm

    listed = timm.list_models()
    if cached is None:
        _write_cache(listed)
    if isinstance(name, str) and timm.is_model(name):
        return
    close = difflib.get_close_matches(str(name), listed, n=5, cutoff=0.6)
    hint = f"; did you mean: {', '.join(close)}?" if close else "; see timm.list_models()"
    raise ValueError(f"model.backbone: unknown timm model {name!r}{hint}")


def create_timm_body(model_cfg: Mapping[str, Any], **timm_kwargs: Any) -> nn.Module:
    """The timm ``features_only`` backbone named by ``model_cfg`` (a trial config's ``model``
    section), for every task: detection and DBNet build their bodies here.

    ``model.backbone`` is checked against timm first (a typo names the closest models);
    ``timm_kwargs`` go to ``timm.create_model`` (e.g. ``out_indices``, ``img_size``). Weights come
    from ``model.weights`` (a file, a ``{backbone: file}`` mapping or a directory; see
    :mod:`sweeper.tasks.weights`) through timm's ``pretrained_cfg_overlay``, else, with
    ``model.pretrained: True``, from timm's own resolution (the Hugging Face hub cache; a download
    where ``HF_HUB_OFFLINE`` allows it). A missing source fails before timm is asked, with the same
    message the driver's check gives. timm loads a local file non-strictly, so the file is read
    first (a damaged one fails with a clear ValueError) and the built body is then checked to hold
    its tensors.
    """
    import timm  # late: see the module docstring

    name = model_cfg.get("backbone", "resnet18")
    check_backbone(name)
    pretrained, weights = bool(model_cfg.get("pretrained", False)), model_cfg.get("weights")
    problem = missing_weights(name, pretrained, weights)
    if problem:
        raise ValueError(problem)
    path = local_weights(name, weights)
    kwargs: dict[str, Any] = {"features_only": True, **timm_kwargs}
    if path is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        in_file = _read_weights(path)
    try:
        body = timm.create_model(name, pretrained=path is not None or pretrained, **kwargs)
    except Exception as exc:
        if path is not None and isinstance(exc, (RuntimeError, KeyError)):  # e.g. a tensor of another shape
            raise ValueError(f"model.weights: cannot load {path} into timm model {name!r}: "
                             f"{_shorten(str(exc))}") from exc
        if path is None and pretrained:  # the hub: no network, a partial cache, ...
            raise ValueError(f"model.pretrained: timm cannot load its pretrained weights for {name!r}: "
                             f"{type(exc).__name__}: {_shorten(str(exc))}; {HOW.replace('NAME', repr(name))}"
                             ) from exc
        raise
    if path is not None:
        _check_loaded(body, in_file, f"model.weights: {path} does not fit timm model {name!r}")
    return body


def _read_weights(path: Path) -> dict[str, tuple[tuple[int, ...], float]]:
    """Fingerprints of the float tensors of a weights file, read as timm reads it (so a damaged
    file fails here with a clear ValueError); only the fingerprints are kept, not the tensors."""
    import timm
    import torch

    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as exc:  # torch.load / safetensors raise many types on a damaged file
        raise ValueError(f"model.weights: cannot read {path} (truncated or not a checkpoint?): "
                         f"{type(exc).__name__}: {_shorten(str(exc))}") from None
    items = state.items() if isinstance(state, Mapping) else ()
    prints = {k: _fingerprint(v) for k, v in items if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if not prints:
        raise ValueError(f"model.weights: {path} holds no state dict of float tensors")
    return prints


def _shorten(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."


def _fingerprint(t: torch.Tensor) -> tuple[tuple[int, ...], float]:
    return tuple(t.shape), float(t.detach().double().sum())


def _check_loaded(body: nn.Module, in_file: Mapping[str, tuple[tuple[int, ...], float]], what: str) -> None:
    """Raise unless every weight tensor (2+ dims) of ``body`` holds a tensor of the file.

    Compared by value (shape and sum), not name: timm's feature wrappers rename modules and its
    checkpoint filters rename keys, but a weight that was loaded is a copy of a tensor in the file.
    (1-d tensors are not compared: fresh norms and biases are constants any file may contain.)"""
    found = set(in_file.values())
    weights = {k: _fingerprint(v) for k, v in body.named_parameters() if v.ndim >= 2}
    missing = [k for k, fp in weights.items() if fp not in found]
    if missing:
        used = set(weights.values())
        unexpected = [k for k, fp in in_file.items() if fp not in used]
        raise ValueError(f"{what}: {len(missing)} of its {len(weights)} weight tensors are not in the file "
                         f"(missing e.g. {', '.join(missing[:5])}; unexpected keys in the file e.g. "
                         f"{', '.join(unexpected[:5]) or 'none'})")
