"""Text-detection data for the DBNet task: UFO JSON / ICDAR-2015 loading, polygon checks, batching.

Contract
--------
* :func:`load_ufo` reads ``{"images": {file_name: {"words": {id: {"points": [[x, y], ...],
  "transcription": str, "illegibility": bool}}}}}`` (transcription and illegibility optional);
  :func:`load_icdar2015` reads a directory of ``gt_<name>.txt`` files (UTF-8, optional BOM; lines
  ``x1,y1,...,x4,y4[,transcription]``, the transcription may contain commas) whose images are
  ``<name>.jpg|.png|.jpeg`` in the images directory. Both formats are parsed by
  :mod:`.text_io`, the reader evaluation uses too. ``"###"`` or ``illegibility: true`` marks a
  don't-care region (``ignore``), which stays in the data: the labels mask it out of the loss and
  the metrics skip detections on it.
* Both return :class:`TextImage` records, polygons float64 ``(N, 2)``, ``N >= 3``, in pixels of
  the stored image (EXIF orientation is not applied, as PIL leaves it: pixels and polygons agree).
* Every polygon is checked (:func:`validate_polygons`): fewer than 3 points or zero area ->
  dropped; self-intersecting -> repaired (quads: convex hull = corners put back in order; others:
  largest valid part); outside the image -> clipped (dropped if nothing is left). Each kind is
  counted and reported in **one** warning per dataset naming the file and examples.
* User-input errors raise :class:`TextDataError` (:mod:`.text_io`'s one error type) naming the
  file (and line/field): unreadable or non-UTF-8 files, JSON syntax errors, a key given twice in
  one UFO object (two entries for one image file or word id: JSON would silently keep only the
  last), malformed points, missing images (checked at load, where the header gives the size),
  images that fail to decode (when opened), and file names that escape the images directory
  (``../x.png``, absolute paths).
* :class:`TextDetDataset` resizes so the longest side equals ``resolution`` (aspect kept),
  optionally flips horizontally (train only; polygons flipped too), pads bottom/right to
  ``resolution x resolution`` and normalises with the ImageNet mean/std. Each item is
  ``(image float32 [3, R, R], maps, meta)``: ``maps`` are :func:`labels.make_labels` targets
  (``prob``, ``prob_mask``, ``thresh``, ``thresh_mask``; float32 ``[R, R]``) built from the
  resized polygons; ``meta`` has ``name``, ``scale``, ``orig_size`` ``(h, w)``, ``polys``
  (original coordinates), ``texts``, ``ignore``, ``flipped`` and ``input_polys`` (network-input
  coordinates). A prediction maps back exactly as ``input_coords / scale``, clipped to
  ``orig_size``.

Usage::

    images = load_ufo("data/train.json", "data/images", max_images=100)
    ds = TextDetDataset(images, resolution=640, train=True, hflip=0.5, label_cfg=cfg["labels"])
    loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=collate)
    for images, maps, metas in loader: ...
"""
from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from sweeper.tasks.dbnet.text_io import (DONT_CARE, IMAGE_EXTENSIONS, TextDataError, find_image, parse_icdar,
                                         read_ufo, safe_image_path)
from sweeper.tasks.images import ImageError, check_image, check_size, to_rgb

__all__ = ["DONT_CARE", "IMAGE_EXTENSIONS", "POLYGON_ISSUES", "TextDataError", "TextDetDataset", "TextImage",
           "collate", "load_icdar2015", "load_ufo", "resize_polys", "validate_polygons"]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
#: area (px^2) below which a polygon counts as degenerate
AREA_EPS = 1e-6
#: what happens to each kind of invalid polygon (the warning prints these)
POLYGON_ISSUES: dict[str, str] = {
    "too_few_points": "dropped: fewer than 3 points",
    "zero_area": "dropped: zero area (repeated or collinear points)",
    "self_intersecting": "repaired: self-intersecting (quads -> convex hull, others -> largest valid part)",
    "outside_clipped": "clipped to the image: points outside the image",
    "outside_dropped": "dropped: no part inside the image",
}
_MAX_EXAMPLES = 3


@dataclass
class TextImage:
    """One annotated image: parallel lists of polygons, transcriptions and don't-care flags."""

    file: Path
    polys: list[np.ndarray]
    texts: list[str]
    ignore: list[bool]
    name: str = ""  # file name relative to the images directory (the key in UFO / eval output)
    size: tuple[int, int] | None = None  # (height, width) of the stored image, read at load

    def __post_init__(self) -> None:
        self.file = Path(self.file)
        if not self.name:
            self.name = self.file.name


# ----------------------------------------------------------------------------- polygon checks


def _tidy(geom: Any) -> np.ndarray | None:
    """Largest polygon part of ``geom`` as an open (N, 2) ring, clockwise on screen, starting at
    the corner nearest the top-left -- the ICDAR order, so repaired quads read like original ones."""
    parts = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type == "Polygon" and g.area > AREA_EPS]
    if not parts:
        return None
    poly = shapely.orient_polygons(max(parts, key=lambda g: g.area), exterior_cw=False)
    pts = np.asarray(poly.exterior.coords, dtype=np.float64)[:-1]
    start = int(np.argmin(pts.sum(axis=1)))
    return np.roll(pts, -start, axis=0)


def _strictly_convex(coords: np.ndarray) -> np.ndarray:
    """(M, n, 2) -> bool (M,): every turn strictly the same way. For n <= 4 that proves a simple
    polygon with area (a bow tie turns both ways), so shapely only sees the rest; for n >= 5 a
    star turns one way too, hence only used for triangles and quads."""
    edges = np.roll(coords, -1, axis=1) - coords
    nxt = np.roll(edges, -1, axis=1)
    cross = edges[..., 0] * nxt[..., 1] - edges[..., 1] * nxt[..., 0]
    return (cross > 0).all(axis=1) | (cross < 0).all(axis=1)


def _check_all(
    polys: Sequence[np.ndarray], sizes: Sequence[tuple[int, int] | None]
) -> tuple[list[np.ndarray | None], dict[int, list[str]]]:
    """Check/repair every polygon (``sizes[i]`` = (h, w) of its image, or None: no bounds check).

    Returns the checked polygons (None = dropped) and, for the problem ones only, their issue
    kinds. Vectorised per vertex count: shapely one polygon at a time costs ~14 us, i.e. seconds
    on a receipt set of ~400k words; only the few bad polygons take the slow path below."""
    out: list[np.ndarray | None] = list(polys)
    kinds: dict[int, list[str]] = {}
    valid = np.ones(len(polys), dtype=bool)
    outside = np.zeros(len(polys), dtype=bool)
    limits = np.array([s if s is not None else (np.inf, np.inf) for s in sizes], dtype=np.float64).reshape(-1, 2)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(polys):
        by_len.setdefault(len(p), []).append(i)
    for n, idx in by_len.items():
        if n < 3:
            for i in idx:
                kinds[i] = ["too_few_points"]
                out[i] = None
            continue
        coords = np.stack([polys[i] for i in idx])  # (M, n, 2)
        sure = _strictly_convex(coords) if n <= 4 else np.zeros(len(idx), dtype=bool)
        rest = [i for i, ok in zip(idx, sure) if not ok]
        if rest:  # concave, degenerate, self-intersecting or n > 4: ask shapely
            ring = coords[~sure]
            valid[rest] = shapely.is_valid(shapely.polygons(np.concatenate([ring, ring[:, :1]], axis=1)))
        lo, hi = coords.min(axis=1), coords.max(axis=1)  # (M, 2) as (x, y)
        outside[idx] = (lo < 0).any(axis=1) | (hi[:, 0] > limits[idx, 1]) | (hi[:, 1] > limits[idx, 0])
    for i in map(int, np.flatnonzero(~valid | outside)):  # too-few-point ones are neither
        pts, found = polys[i], kinds.setdefault(i, [])
        geom = shapely.Polygon(pts)
        out[i] = None
        if not valid[i]:
            if shapely.convex_hull(geom).area <= AREA_EPS:
                found.append("zero_area")
                continue
            found.append("self_intersecting")
            pts = _tidy(shapely.convex_hull(geom) if len(pts) == 4 else shapely.make_valid(geom))
            if pts is None:  # a repair that leaves nothing with area
                continue
            geom = shapely.Polygon(pts)
        if sizes[i] is not None:
            h, w = sizes[i]
            xmin, ymin, xmax, ymax = geom.bounds
            if xmin < 0 or ymin < 0 or xmax > w or ymax > h:
                pts = _tidy(shapely.clip_by_rect(geom, 0.0, 0.0, float(w), float(h)))
                found.append("outside_dropped" if pts is None else "outside_clipped")
        out[i] = pts
    return out, kinds


def validate_polygons(
    polys: Sequence[np.ndarray], size: tuple[int, int] | None = None
) -> tuple[list[np.ndarray | None], dict[str, int]]:
    """Check the polygons of one image of size ``(h, w)`` (None: no bounds check).

    Returns ``(checked, counts)``: ``checked[i]`` is the (possibly repaired or clipped) polygon
    or ``None`` when it was dropped, and ``counts`` maps every key of :data:`POLYGON_ISSUES`
    to how many polygons had that problem (a polygon can have two, e.g. self-intersecting and
    outside). The loaders add these up and report them once per dataset.
    """
    checked, kinds = _check_all([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polys],
                                [size] * len(polys))
    counts = Counter(k for ks in kinds.values() for k in ks)
    return checked, {k: counts.get(k, 0) for k in POLYGON_ISSUES}


def _apply_checks(source: Path, images: list[TextImage], where: Callable[[int, int], str]) -> None:
    """Run the polygon checks over a whole dataset in place and warn once with the counts;
    ``where(i, j)`` names polygon j of image i for the warning's examples."""
    starts = np.cumsum([0] + [len(im.polys) for im in images])
    checked, kinds = _check_all([p for im in images for p in im.polys], [im.size for im in images for _ in im.polys])
    for im, a, b in zip(images, starts[:-1], starts[1:]):
        keep = [j for j, poly in enumerate(checked[a:b]) if poly is not None]
        im.polys = [checked[a + j] for j in keep]
        if len(keep) < b - a:
            im.texts = [im.texts[j] for j in keep]
            im.ignore = [im.ignore[j] for j in keep]
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    for k in sorted(kinds):
        img = int(np.searchsorted(starts, k, side="right")) - 1
        for kind in kinds[k]:
            counts[kind] += 1
            if len(examples.setdefault(kind, [])) < _MAX_EXAMPLES:
                examples[kind].append(where(img, int(k - starts[img])))
    if counts:
        parts = [f"{kind}={counts[kind]} ({POLYGON_ISSUES[kind]}; e.g. {', '.join(examples[kind])})"
                 for kind in POLYGON_ISSUES if counts[kind]]
        warnings.warn(f"{source}: invalid polygons in {starts[-1]} checked: " + "; ".join(parts), stacklevel=3)


# ----------------------------------------------------------------------------- loading


_safe_image_path = safe_image_path


def _image_size(file: Path, source: str) -> tuple[int, int]:
    """(h, w) from the image header (:func:`.images.check_image`: 0-byte, truncated or absurdly
    large files refused); existence is checked here, at load, so a bad set fails fast."""
    if not file.is_file():
        raise TextDataError(f"{file}: image file not found (referenced by {source})")
    try:
        w, h = check_image(file)
    except ImageError as exc:
        raise TextDataError(f"{exc} (referenced by {source})") from None
    except OSError as exc:
        raise TextDataError(f"{file}: cannot read image (referenced by {source}): {exc}") from None
    return h, w


def _check_dirs(images_dir: Path) -> None:
    if not images_dir.is_dir():
        raise TextDataError(f"{images_dir}: images directory not found (data.images)")


def _check_max(max_images: int | None) -> None:
    if max_images is not None and (not isinstance(max_images, int) or max_images <= 0):
        raise TextDataError(f"max_images must be a positive int, got {max_images!r}")


def load_ufo(path: str | Path, images_dir: str | Path, *, max_images: int | None = None) -> list[TextImage]:
    """Load a UFO JSON split (first ``max_images`` images in file order when given)."""
    path, images_dir = Path(path), Path(images_dir)
    _check_max(max_images)
    records = read_ufo(path, limit=max_images)
    _check_dirs(images_dir)
    if not records:
        raise TextDataError(f"{path}: 'images' is empty")
    images = []
    for rec in records:
        file = _safe_image_path(images_dir, rec.name, str(path))
        images.append(TextImage(file=file, polys=rec.polys, texts=rec.texts, ignore=rec.ignore, name=rec.name,
                                size=_image_size(file, f"{path} images[{rec.name!r}]")))
    _apply_checks(path, images, lambda i, j: f"{images[i].name} word {records[i].keys[j]}")
    return images


_GT_NAME = re.compile(r"^gt_(.+)\.txt$")


_find_image = find_image


def load_icdar2015(gt_dir: str | Path, images_dir: str | Path, *, max_images: int | None = None) -> list[TextImage]:
    """Load a directory of ICDAR-2015 ``gt_<name>.txt`` files (sorted by name; first
    ``max_images`` when given)."""
    gt_dir, images_dir = Path(gt_dir), Path(images_dir)
    _check_max(max_images)
    if not gt_dir.is_dir():
        raise TextDataError(f"{gt_dir}: ground-truth directory not found "
                            "(icdar2015 expects a directory of gt_<name>.txt)")
    _check_dirs(images_dir)
    gt_files = sorted(p for p in gt_dir.iterdir() if p.is_file() and _GT_NAME.match(p.name))[:max_images]
    if not gt_files:
        raise TextDataError(f"{gt_dir}: no gt_<name>.txt files found")
    images: list[TextImage] = []
    records = []
    for gt in gt_files:
        try:
            data = gt.read_bytes()
        except OSError as exc:
            raise TextDataError(f"{gt}: cannot read as UTF-8 text: {exc}") from None
        rec = parse_icdar(data, str(gt))
        file = _find_image(images_dir, _GT_NAME.match(gt.name).group(1), gt)
        images.append(TextImage(file=file, polys=rec.polys, texts=rec.texts, ignore=rec.ignore, name=file.name,
                                size=_image_size(file, str(gt))))
        records.append(rec)
    _apply_checks(gt_dir, images, lambda i, j: f"{gt_files[i].name}:{records[i].keys[j]}")
    return images


# ----------------------------------------------------------------------------- training dataset


def resize_polys(polys: Sequence[np.ndarray], scale: float, flip_width: float | None = None) -> list[np.ndarray]:
    """Polygons in network-input coordinates: times ``scale``, then mirrored as ``x -> flip_width - x``
    when flipping (continuous coordinates: pixel column i covers [i, i + 1])."""
    out = []
    for p in polys:
        q = np.asarray(p, dtype=np.float64) * scale
        if flip_width is not None:
            q[:, 0] = flip_width - q[:, 0]
        out.append(q)
    return out


class TextDetDataset(Dataset):
    """Resized, padded, normalised images with DBNet label maps (see the module docstring).

    ``label_cfg`` is the trial config's ``labels`` section (``shrink_ratio``, ``thresh_min``,
    ``thresh_max``, ``min_text_size``); None uses :func:`make_labels`' defaults. ``with_labels=False``
    skips the maps (evaluation only needs the image and meta), and ``max_images`` keeps the first N.
    """

    def __init__(
        self,
        images: Sequence[TextImage],
        resolution: int,
        *,
        train: bool = False,
        hflip: float = 0.0,
        label_cfg: Mapping[str, Any] | None = None,
        with_labels: bool = True,
        max_images: int | None = None,
    ) -> None:
        if not isinstance(resolution, int) or resolution <= 0:
            raise TextDataError(f"train.resolution must be a positive int, got {resolution!r}")
        if not 0.0 <= float(hflip) <= 1.0:
            raise TextDataError(f"train.hflip must be a probability in [0, 1], got {hflip!r}")
        _check_max(max_images)
        self.images = list(images)[:max_images]
        self.resolution = resolution
        self.train = train
        self.hflip = float(hflip) if train else 0.0  # never flip evaluation images
        self.label_cfg = dict(label_cfg or {})
        self.with_labels = with_labels

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, idx: int, target: int | None = None) -> Image.Image:
        """Open image ``idx`` as RGB; decoding errors become a TextDataError naming the file.
        ``target`` (longest side) lets JPEG decode at 1/2..1/8 scale: large photos load ~4x faster."""
        file = self.images[idx].file
        try:
            with Image.open(file) as im:
                if target is not None and im.format == "JPEG":
                    w, h = im.size
                    s = target / max(w, h)
                    im.draft("RGB", (max(1, math.ceil(w * s)), max(1, math.ceil(h * s))))
                check_size(im, file)  # before decoding (PIL's own bomb limit raises no OSError)
                return to_rgb(im)  # 16-bit grey scaled, not clipped to white
        except FileNotFoundError:
            raise TextDataError(f"{file}: image file not found") from None
        except ImageError as exc:
            raise TextDataError(str(exc)) from None
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
            raise TextDataError(f"{file}: cannot read image: {exc}") from None

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        rec = self.images[idx]
        res = self.resolution
        im = self.load_image(idx, target=res)
        h, w = rec.size if rec.size is not None else (im.height, im.width)
        scale = res / max(w, h)
        # one scale for both axes (the contract: predictions map back as coords / scale); rounding
        # the pixel size costs at most half a pixel of mismatch along the shorter side
        new_w, new_h = max(1, min(res, round(w * scale))), max(1, min(res, round(h * scale)))
        im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
        arr = (np.asarray(im, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD

        # torch's global RNG: seeded per worker by the DataLoader and saved in task checkpoints
        flipped = self.hflip > 0 and float(torch.rand(())) < self.hflip
        if flipped:
            arr = arr[:, ::-1]  # before padding, so the padding stays bottom/right
        input_polys = resize_polys(rec.polys, scale, float(new_w) if flipped else None)

        image = torch.zeros(3, res, res, dtype=torch.float32)  # padding = the mean colour after normalising
        image[:, :new_h, :new_w] = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        maps: dict[str, torch.Tensor] = {}
        if self.with_labels:
            from sweeper.tasks.dbnet.labels import make_labels  # late: data loading works without it

            maps = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
                    for k, v in make_labels(input_polys, list(rec.ignore), (res, res), **self.label_cfg).items()}
        meta = {
            "name": rec.name,
            "scale": scale,
            "orig_size": (h, w),
            "polys": rec.polys,
            "texts": rec.texts,
            "ignore": rec.ignore,
            "flipped": flipped,
            "input_polys": input_polys,
        }
        return image, maps, meta


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]]
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Stack images and maps (all R x R after padding); keep metas (ragged polygons) as a list."""
    images = torch.stack([b[0] for b in batch])
    keys = batch[0][1].keys() if batch else ()
    maps = {k: torch.stack([b[1][k] for b in batch]) for k in keys}
    return images, maps, [b[2] for b in batch]
