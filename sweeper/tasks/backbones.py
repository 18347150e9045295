"""Is a backbone name a timm model? Answered without importing torch when possible.

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
"""
from __future__ import annotations

import difflib
import os
import tempfile
from importlib import metadata
from pathlib import Path


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
