"""Where a trial's backbone weights come from, asked the same way by the driver and by the trial.

A sweep may search the backbone (`model.backbone: {choice: [resnet50, hrnet_w44]}`), so weights
cannot be one file for every trial. In order:

1. `model.weights`, if it holds a file for the trial's backbone: one file (for whatever backbone,
   as before), a mapping `{backbone: file}`, or a directory of `<backbone>.safetensors` /
   `<backbone>.pth`. A mapping or directory is looked up by the full name (`resnet18.a1_in1k`),
   then by the name without its pretrained tag (`resnet18`).
2. With `model.pretrained: true`, timm's own pretrained weights for the backbone, which timm
   resolves itself (the Hugging Face hub through its local cache; a download where the
   environment allows it). `HF_HUB_OFFLINE` is the user's and trials inherit it: with it set,
   the weights must already be in the cache.

`sweeper.tasks.check_sweep` calls :func:`missing_weights` for every backbone a sweep can produce
before any trial is dispatched, so a backbone without weights fails in a second, naming the
file, the field and the backbone, not in every trial an hour later; `create_timm_body` calls it
again in the trial (another node may see other files). Only paths and the caches' folders are
read: nothing is downloaded here, and timm (torch) is imported only for a backbone whose weights
would come from timm.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SUFFIXES = (".safetensors", ".pth")
#: the forms `model.weights` takes, as messages spell them
FORMS = "a file, a {backbone: file} mapping, or a directory holding <backbone>.safetensors or <backbone>.pth"
#: what to do about a pretrained backbone without weights (NAME: the backbone)
HOW = (f"give model.weights ({FORMS}), or fill the Hugging Face cache (run timm.create_model(NAME, "
       "pretrained=True) once where downloads work, with HF_HOME pointing at the cache the trials read), "
       "or allow downloads (unset HF_HUB_OFFLINE)")


def _lookup_names(backbone: str) -> list[str]:
    """The names a mapping or directory entry may have: full name first, then without the tag."""
    arch = backbone.split(".", 1)[0]
    return [backbone] if arch == backbone else [backbone, arch]


def local_weights(backbone: str, weights: str | Mapping[str, str] | None) -> Path | None:
    """The file `model.weights` holds for `backbone`, or None when it holds none for it.

    A single file is returned whether or not it exists (the caller says it is missing); a mapping
    or a directory without an entry for `backbone` gives None."""
    if not weights:
        return None
    names = _lookup_names(backbone)
    if isinstance(weights, Mapping):
        found = next((weights[n] for n in names if weights.get(n)), None)
        return Path(found).expanduser() if found else None
    path = Path(weights).expanduser()
    if not path.is_dir():
        return path
    return next((path / f"{n}{s}" for n in names for s in SUFFIXES if (path / f"{n}{s}").is_file()), None)


def loads_weights(model_cfg: Mapping[str, Any]) -> bool:
    """Whether a body built from `model_cfg` starts from weights (a detector then freezes its BN)."""
    return bool(model_cfg.get("pretrained") or model_cfg.get("weights"))


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Whether trials may not download from the Hugging Face hub: `HF_HUB_OFFLINE` as
    huggingface_hub reads it, from the environment trials inherit (read now, not at import)."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache a trial's timm reads, by huggingface_hub's own rules
    (HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub), read from
    the environment now: huggingface_hub fixes its constants when first imported."""
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def _hub_files(filename: str | None) -> list[str]:
    """The files timm tries in a hub repo (`load_state_dict_from_hf`): its safetensors
    alternative first, then the named file (default `pytorch_model.bin`)."""
    name = filename or "pytorch_model.bin"
    if name.endswith(".safetensors"):
        return [name]
    safe = {"pytorch_model.bin": "model.safetensors",
            "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}.get(name)
    if safe is None and name.endswith(".bin"):
        safe = name[:-4] + ".safetensors"
    return [safe, name] if safe else [name]


def timm_weights(backbone: str) -> tuple[str | None, str | None]:
    """(where timm fetches `backbone`'s pretrained weights: `timm/<repo>` on the hub, or a URL;
    the local copy a download-free timm would load, else None). Source None: timm has none.

    Raises ValueError for a pretrained tag timm does not have (`resnet18.nope`)."""
    import timm  # late: torch; only for a backbone whose weights come from timm

    try:
        cfg = timm.models.get_pretrained_cfg(backbone)
    except RuntimeError as exc:  # "Invalid pretrained tag (nope) for resnet18."
        raise ValueError(f"model.backbone: {exc}") from None
    if cfg is None:  # a deprecated alias: timm maps it to a current name only when building it
        return None, None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        for name in _hub_files(cfg.hf_hub_filename):
            found = try_to_load_from_cache(repo, name, cache_dir=hub_cache_dir(), revision=revision or None)
            if isinstance(found, str):
                return cfg.hf_hub_id, found
        return cfg.hf_hub_id, None
    if cfg.url:  # torch.hub's checkpoint cache, which timm's URL download fills
        import torch

        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url.split("?", 1)[0])
        return cfg.url, str(path) if path.is_file() else None
    return None, None


def missing_weights(backbone: str, pretrained: bool, weights: str | Mapping[str, str] | None) -> str | None:
    """Why a trial of `backbone` would not find the weights it is asked to start from (None: it
    would, or it starts from scratch). The message names the backbone and what to do."""
    if not pretrained and not weights:
        return None
    path = local_weights(backbone, weights)
    if path is not None:
        return None if path.is_file() else f"model.weights: backbone weights file not found: {path}"
    if not pretrained:  # a mapping or directory that has nothing for this backbone
        where = "mapping" if isinstance(weights, Mapping) else f"directory {weights}"
        return (f"model.weights: the {where} holds no weights for backbone {backbone!r} (looked for "
                f"{' or '.join(_lookup_names(backbone))}); add them, or set model.pretrained: true to "
                "start it from timm's pretrained weights")
    source, cached = timm_weights(backbone)
    if source is None:
        return (f"model.pretrained: timm lists no pretrained weights for backbone {backbone!r} (a deprecated "
                f"name? use its current one); give model.weights ({FORMS}), or set model.pretrained: false")
    if cached is not None or not hub_offline():
        return None
    cache = "torch's hub cache" if "://" in source else f"the Hugging Face cache ({hub_cache_dir()})"
    return (f"model.pretrained: True needs model.weights or timm's pretrained weights for {backbone!r} "
            f"({source}) in {cache}; HF_HUB_OFFLINE=1 keeps trials from downloading them: "
            + HOW.replace("NAME", repr(backbone)))
