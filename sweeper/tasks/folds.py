"""Cross-validation folds of a training split, by image, and what the driver reads of an annotation
file before dispatch (its image names, its categories). Standard library only: the driver checks
folds and data variants without torch, and both tasks split their data with the same function.

The split is a pure function of the image names and the seed (never of Python's `hash`, which
changes per process): every trial and every resume of a sweep holds out the same images.

    held = held_out(["a.png", "b.png", "c.png"], fold=1, k=3, seed=0)   # [False, True, False]

* `k` folds: the distinct image keys are ordered by sha256(seed, key) and dealt round-robin, so
  fold sizes differ by at most one image.
* `files`: the user's own split, one file per fold naming its images (a COCO JSON's
  `images[].file_name`, a UFO JSON's `images` keys, an ICDAR-2015 gt folder's `gt_<name>.txt`, or
  a text file with one image file name per line). Images of the training split in no fold file
  are trained on in every fold.

An image's key is its file name without an image extension (`a.png` -> `a`), so an ICDAR-2015 gt
folder (which names images without one) and the image files themselves agree.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: extensions an image key drops (case-insensitive)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_GT_NAME = re.compile(r"^gt_(.+)\.txt$")


class FoldError(ValueError):
    """A fold split that cannot be made; the message names the file."""


def image_key(name: str) -> str:
    """The key an image is split by: its file name without an image extension."""
    return name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in IMAGE_SUFFIXES else name


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FoldError(f"{path}: cannot read it as JSON: {exc}") from None


def image_names(path: str | Path) -> list[str]:
    """The image file names an annotation file (or ICDAR-2015 gt folder, or text list) names, in order."""
    path = Path(path)
    if path.is_dir():
        try:
            return sorted(m.group(1) for p in path.iterdir() if (m := _GT_NAME.match(p.name)))
        except OSError as exc:
            raise FoldError(f"{path}: cannot list its gt_<name>.txt files: {exc}") from None
    if path.suffix.lower() != ".json":
        try:
            return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise FoldError(f"{path}: cannot read it as a text list of image names: {exc}") from None
    doc = _read_json(path)
    images = doc.get("images") if isinstance(doc, dict) else None
    if isinstance(images, dict):  # UFO: {file_name: {...}}
        return list(images)
    if isinstance(images, list) and all(isinstance(i, dict) and "file_name" in i for i in images):
        return [str(i["file_name"]) for i in images]
    raise FoldError(f"{path}: has no `images` (a list of {{file_name: ...}} records, or a mapping of file names)")


def categories(path: str | Path) -> list[tuple[Any, str]] | None:
    """A JSON annotation file's categories as sorted (id, name) pairs; None when it has none
    (a UFO file, an ICDAR folder): what data variants of one sweep must share."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() != ".json":
        return None
    doc = _read_json(path)
    cats = doc.get("categories") if isinstance(doc, dict) else None
    if not isinstance(cats, list):
        return None
    pairs = [(c.get("id"), str(c.get("name"))) for c in cats if isinstance(c, dict)]
    return sorted(pairs, key=lambda p: (not isinstance(p[0], int), p[0] if isinstance(p[0], int) else 0, repr(p)))


def fold_of_keys(keys: Sequence[str], k: int, seed: int) -> dict[str, int]:
    """{key: fold} for `k` folds: keys ordered by sha256 of (seed, key), dealt round-robin."""
    order = sorted(set(keys), key=lambda key: (hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest(), key))
    return {key: i % k for i, key in enumerate(order)}


def fold_files_keys(files: Sequence[str | Path]) -> list[set[str]]:
    """The image keys of each of the user's fold files; an image in two folds is refused."""
    folds = [{image_key(n) for n in image_names(f)} for f in files]
    for i, keys in enumerate(folds):
        if not keys:
            raise FoldError(f"{files[i]}: names no images; every fold needs at least one")
        for j in range(i):
            both = sorted(keys & folds[j])
            if both:
                raise FoldError(f"{files[i]}: image {both[0]!r} is also in fold {j} ({files[j]}); "
                                "folds must not share images")
    return folds


def held_out(names: Sequence[str], *, fold: int, k: int | None = None, seed: int = 0,
             files: Sequence[str | Path] | None = None) -> list[bool]:
    """For each image name of the training split (in order), whether it is in held-out fold `fold`:
    of `k` seeded folds, or of the user's fold `files`."""
    if files:
        if not 0 <= fold < len(files):
            raise FoldError(f"fold {fold} is outside 0..{len(files) - 1} ({len(files)} fold files)")
        held = fold_files_keys(files)[fold]
        return [image_key(n) in held for n in names]
    if k is None or not 0 <= fold < k:
        raise FoldError(f"fold {fold} is outside 0..{(k or 1) - 1} (k = {k})")
    assignment = fold_of_keys([image_key(n) for n in names], k, seed)
    return [assignment[image_key(n)] == fold for n in names]


def held_out_for(names: Sequence[str], folds: Any, fold: int) -> list[bool]:
    """`held_out` for a trial's `data.folds` (the schema's Folds: k, seed, files)."""
    return held_out(names, fold=fold, k=folds.k, seed=folds.seed, files=folds.files)
