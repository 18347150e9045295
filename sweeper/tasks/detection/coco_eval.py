"""COCO bbox metrics for detection trials: a thin, quiet, defensive wrapper around pycocotools.

pycocotools is the reference everyone quotes mAP against, so the numbers here are *its* numbers,
bit for bit (tests reproduce the official ``fakebbox100`` stats and a set of edge cases to 1e-12).
What this module adds is what a sweep needs around it:

* ground truth given as a dict *or* a path, detections as a plain list of dicts;
* no crash on an empty detection list (an untrained trial predicts nothing; pycocotools'
  ``loadRes([])`` raises ``IndexError``) -- the result is 0 where there is GT and -1 where none;
* no stdout noise (pycocotools prints progress lines on every call; a sweep calls this hundreds
  of times);
* flat, lower-case metric names (``map``, ``map50``, ``map_small``, ``ar_100``, ``ap/<class>``);
* optional extra area ranges (``area_ranges={"tiny": [0, 16]}`` -> ``map_tiny``, ``ar_tiny``);
* input errors as :class:`CocoFormatError` naming the file and the field, never an ``assert``.

Usage::

    from sweeper.tasks.detection.coco_eval import evaluate_coco, load_detections

    metrics = evaluate_coco("data/val.json", load_detections("preds.json"))
    metrics["map"], metrics["map_small"], metrics["ap/circle"]

    # detections in ORIGINAL image coordinates, bbox = [x, y, w, h]
    evaluate_coco(gt_dict, [{"image_id": 3, "category_id": 1, "bbox": [10, 20, 30, 40], "score": 0.9}])

Ground-truth leniency: a GT annotation without ``iscrowd`` is taken as ``iscrowd: 0`` (many
converters omit it; pycocotools would raise ``KeyError``). ``area`` is required because it, not
the box, decides the small/medium/large bucket.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: pycocotools' ``COCOeval.stats`` order for bbox evaluation, under our metric names.
STAT_NAMES: tuple[str, ...] = (
    "map", "map50", "map75", "map_small", "map_medium", "map_large",
    "ar_1", "ar_10", "ar_100", "ar_small", "ar_medium", "ar_large",
)
_STANDARD_AREA_LABELS = ("all", "small", "medium", "large")
#: pycocotools' "no upper bound" area (its default for "all" and "large").
_MAX_AREA = 1e5**2

_GT_REQUIRED = {
    "images": ("id",),
    "categories": ("id", "name"),
    "annotations": ("id", "image_id", "category_id", "bbox", "area"),
}
_DET_REQUIRED = ("image_id", "category_id", "bbox", "score")


class CocoFormatError(ValueError):
    """A ground-truth or detection file (or dict) does not follow the COCO format we need."""


# --------------------------------------------------------------------------------------------
# loading and validation
# --------------------------------------------------------------------------------------------
def _read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CocoFormatError(f"{path}: {what} file not found") from None
    except OSError as exc:
        raise CocoFormatError(f"{path}: cannot read {what} file: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CocoFormatError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None


def _is_number(value: Any) -> bool:
    # numbers.Real also admits numpy scalars (np.float32 from a model's output).
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_box(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 4
        and all(_is_number(v) for v in value)
    )


def validate_coco_gt(data: Any, source: str = "<ground truth>") -> None:
    """Check the keys pycocotools relies on, so a bad file fails here with its name and field
    instead of as a ``KeyError`` deep inside ``COCOeval``."""
    if not isinstance(data, Mapping):
        raise CocoFormatError(f"{source}: COCO ground truth must be a JSON object, got {type(data).__name__}")
    for section, keys in _GT_REQUIRED.items():
        if section not in data:
            raise CocoFormatError(f"{source}: missing top-level key {section!r} (COCO needs images, annotations, categories)")
        items = data[section]
        if not isinstance(items, list):
            raise CocoFormatError(f"{source}: {section!r} must be a list, got {type(items).__name__}")
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise CocoFormatError(f"{source}: {section}[{i}] must be an object")
            for key in keys:
                if key not in item:
                    raise CocoFormatError(f"{source}: {section}[{i}] is missing {key!r}")
    image_ids = {img["id"] for img in data["images"]}
    cat_names: dict[Any, str] = {}
    for i, cat in enumerate(data["categories"]):
        if cat["name"] in cat_names.values():
            raise CocoFormatError(f"{source}: categories[{i}].name {cat['name']!r} is used twice (metric ap/<name> must be unique)")
        cat_names[cat["id"]] = cat["name"]
    for i, ann in enumerate(data["annotations"]):
        if not _is_box(ann["bbox"]):
            raise CocoFormatError(f"{source}: annotations[{i}].bbox must be 4 numbers [x, y, w, h], got {ann['bbox']!r}")
        if ann["image_id"] not in image_ids:
            raise CocoFormatError(f"{source}: annotations[{i}].image_id {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in cat_names:
            raise CocoFormatError(f"{source}: annotations[{i}].category_id {ann['category_id']!r} is not in 'categories'")


def validate_detections(dets: Any, source: str = "<detections>") -> None:
    """Check a loadRes-style detection list: a list of objects with image_id, category_id,
    bbox [x, y, w, h] and score."""
    if not isinstance(dets, list):
        raise CocoFormatError(f"{source}: detections must be a JSON list of objects, got {type(dets).__name__}")
    for i, det in enumerate(dets):
        if not isinstance(det, Mapping):
            raise CocoFormatError(f"{source}: detection [{i}] must be an object, got {type(det).__name__}")
        for key in _DET_REQUIRED:
            if key not in det:
                raise CocoFormatError(f"{source}: detection [{i}] is missing {key!r} (need {', '.join(_DET_REQUIRED)})")
        if not _is_box(det["bbox"]):
            raise CocoFormatError(f"{source}: detection [{i}].bbox must be 4 numbers [x, y, w, h], got {det['bbox']!r}")
        score = det["score"]
        if not _is_number(score) or not math.isfinite(score):
            raise CocoFormatError(f"{source}: detection [{i}].score must be a finite number, got {score!r}")


def load_coco_gt(path: str | Path) -> dict[str, Any]:
    """Read and validate a COCO ground-truth JSON file; errors name the file and the field."""
    data = _read_json(path, "COCO ground-truth")
    validate_coco_gt(data, str(path))
    return data


def load_detections(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a COCO results JSON file (a list of detections)."""
    data = _read_json(path, "detections")
    validate_detections(data, str(path))
    return data


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
def _area_params(area_ranges: Mapping[str, Sequence[float]] | None) -> tuple[list[list[float]], list[str]]:
    """COCO's four standard ranges plus the extra ones, converted from side length to area."""
    rng = [[0.0, _MAX_AREA], [0.0, 32.0**2], [32.0**2, 96.0**2], [96.0**2, _MAX_AREA]]
    labels = list(_STANDARD_AREA_LABELS)
    for name, bounds in (area_ranges or {}).items():
        if name in _STANDARD_AREA_LABELS:
            raise ValueError(f"area_ranges: {name!r} is a standard COCO range; choose another name")
        if not isinstance(bounds, Sequence) or len(bounds) != 2:
            raise ValueError(f"area_ranges.{name}: expected [lo, hi] in sqrt-area pixels, got {bounds!r}")
        lo, hi = bounds
        hi = math.inf if hi is None else hi
        if not (0 <= lo < hi):
            raise ValueError(f"area_ranges.{name}: need 0 <= lo < hi, got [{lo}, {hi}]")
        # Closed interval on both ends, like pycocotools' own ranges.
        rng.append([float(lo) ** 2, _MAX_AREA if math.isinf(hi) else float(hi) ** 2])
        labels.append(name)
    return rng, labels


def _mean_valid(values: np.ndarray) -> float:
    """pycocotools' averaging rule: ignore -1 cells; -1 when nothing is left."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def evaluate_coco(
    gt: Mapping[str, Any] | str | Path,
    detections: Sequence[Mapping[str, Any]],
    *,
    area_ranges: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, float]:
    """COCO bbox metrics with pycocotools.

    Args:
        gt: COCO ground-truth dict, or the path of its JSON file. Not modified.
        detections: ``[{image_id, category_id, bbox: [x, y, w, h], score}]`` in ORIGINAL image
            coordinates (pixels). Not modified. May be empty.
        area_ranges: extra ``name -> [lo, hi]`` ranges in sqrt-area pixels (side of a square of
            the same area, e.g. ``[0, 16]`` is area 0..256; ``hi=None`` means unbounded). Each
            adds ``map_<name>`` (AP@[.5:.95], maxDets 100) and ``ar_<name>`` (AR@100).

    Returns:
        ``map, map50, map75, map_small, map_medium, map_large, ar_1, ar_10, ar_100, ar_small,
        ar_medium, ar_large`` (pycocotools' 12 stats), ``ap/<category name>`` (AP@[.5:.95],
        all areas, maxDets 100) per GT category, plus the extra range metrics. -1 means "no GT
        in that bucket", exactly as pycocotools reports it.
    """
    # Imported here so that importing this module (e.g. from the config validator) stays cheap.
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if isinstance(gt, (str, Path)):
        gt_data: Mapping[str, Any] = load_coco_gt(gt)
    else:
        validate_coco_gt(gt)
        gt_data = gt
    if not isinstance(detections, (list, tuple)):
        raise CocoFormatError(f"<detections>: expected a list of detection dicts, got {type(detections).__name__}")
    validate_detections(list(detections))
    area_rng, area_lbl = _area_params(area_ranges)

    image_ids = {img["id"] for img in gt_data["images"]}
    for i, det in enumerate(detections):
        if det["image_id"] not in image_ids:
            raise CocoFormatError(f"<detections>: detection [{i}].image_id {det['image_id']!r} is not a ground-truth image")

    # Copies: COCOeval writes 'ignore'/'_ignore' into GT annotations and loadRes writes
    # 'area'/'id'/'iscrowd'/'segmentation' into the detections; callers reuse both (eval grid).
    dataset = dict(gt_data)
    dataset["annotations"] = [{"iscrowd": 0, **ann} for ann in gt_data["annotations"]]
    dets = [dict(d) for d in detections]

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:
            # loadRes([]) indexes anns[0]; an index with no annotations gives pycocotools'
            # own answer for "nothing detected": 0 where there is GT, -1 where there is none.
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(dataset["images"]), "categories": list(dataset["categories"]), "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.areaRng = area_rng
        ev.params.areaRngLbl = area_lbl
        ev.evaluate()
        ev.accumulate()
        ev.summarize()

    metrics = {name: float(value) for name, value in zip(STAT_NAMES, ev.stats)}

    # precision: [T iou thresholds, R recall points, K categories, A area ranges, M maxDets]
    precision = ev.eval["precision"]
    recall = ev.eval["recall"]  # [T, K, A, M]
    names = {cat["id"]: cat["name"] for cat in gt_data["categories"]}
    for k, cat_id in enumerate(ev.params.catIds):
        metrics[f"ap/{names[cat_id]}"] = _mean_valid(precision[:, :, k, 0, -1])
    for a, label in enumerate(area_lbl[len(_STANDARD_AREA_LABELS):], start=len(_STANDARD_AREA_LABELS)):
        metrics[f"map_{label}"] = _mean_valid(precision[:, :, :, a, -1])
        metrics[f"ar_{label}"] = _mean_valid(recall[:, :, a, -1])
    return metrics
