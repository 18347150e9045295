"""COCO bbox metrics for detection trials: a thin, quiet, defensive wrapper around pycocotools
or its C++ re-implementation faster-coco-eval.

pycocotools is the reference everyone quotes mAP against, so the numbers here are *its* numbers
(tests reproduce the official ``fakebbox100`` stats, custom area ranges and a set of edge cases to
1e-12 with both backends). faster-coco-eval (``backend="faster_coco_eval"``, the default) gives the
same numbers to ~1e-16 several times faster (``bench/eval.py``); without it installed we fall back
to pycocotools with one warning. What this module adds is what a sweep needs around either:

* ground truth given as a dict *or* a path, detections as a plain list of dicts;
* no crash on an empty detection list (an untrained trial predicts nothing; pycocotools'
  ``loadRes([])`` raises ``IndexError``) -- the result is 0 where there is GT and -1 where none;
* no stdout or logging noise (both libraries report progress on every call; a sweep calls this
  hundreds of times);
* flat, lower-case metric names (``map``, ``map50``, ``map_small``, ``ar_100``, ``ap/<class>``);
* optional extra area ranges (``area_ranges={"tiny": [0, 16]}`` -> ``map_tiny``, ``ar_tiny``);
* GT annotation ids renumbered internally, so a GT with id 0 is not silently scored as a miss
  (both libraries use the matched GT id as the "matched" flag);
* input errors as :class:`CocoFormatError` naming the file and the field, never an ``assert``,
  whichever backend runs (the checks are :mod:`.coco_io`'s, the same the training data passes).

Usage::

    from sweeper.tasks.detection.coco_eval import evaluate_coco, load_detections

    metrics = evaluate_coco("data/val.json", load_detections("preds.json"))
    metrics["map"], metrics["map_small"], metrics["ap/circle"]

    # detections in ORIGINAL image coordinates, bbox = [x, y, w, h]
    evaluate_coco(gt_dict, [{"image_id": 3, "category_id": 1, "bbox": [10, 20, 30, 40], "score": 0.9}],
                  area_ranges={"tiny": [0, 16]}, backend="pycocotools")

Ground-truth leniency: a GT annotation without ``iscrowd`` is taken as ``iscrowd: 0`` (many
converters omit it; pycocotools would raise ``KeyError``). ``area`` is required because it, not
the box, decides the small/medium/large bucket.
"""
from __future__ import annotations

import contextlib
import gc
import io
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# The COCO reader lives in coco_io; its names stay importable from here, where callers found them.
from sweeper.tasks.detection.coco_io import (
    GT_REQUIRED,
    GT_REQUIRED_MINIMAL,
    CocoFormatError,
    is_number,
    load_coco_gt,
    load_detections,
    read_json,
    validate_coco_gt,
    validate_detections,
)

__all__ = ["BACKENDS", "GT_REQUIRED", "GT_REQUIRED_MINIMAL", "STAT_NAMES", "CocoFormatError", "evaluate_coco",
           "is_number", "load_coco_gt", "load_detections", "read_json", "resolve_backend", "validate_coco_gt",
           "validate_detections"]

#: pycocotools' ``COCOeval.stats`` order for bbox evaluation, under our metric names.
STAT_NAMES: tuple[str, ...] = (
    "map", "map50", "map75", "map_small", "map_medium", "map_large",
    "ar_1", "ar_10", "ar_100", "ar_small", "ar_medium", "ar_large",
)
#: evaluation libraries, fastest first (same numbers; see the module docstring)
BACKENDS: tuple[str, ...] = ("faster_coco_eval", "pycocotools")
_STANDARD_AREA_LABELS = ("all", "small", "medium", "large")
#: pycocotools' "no upper bound" area (its default for "all" and "large").
_MAX_AREA = 1e5**2


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


_fallback_warned = False


def resolve_backend(backend: str = "faster_coco_eval") -> str:
    """The backend :func:`evaluate_coco` will really use: ``faster_coco_eval`` falls back to
    ``pycocotools`` (with one warning per process) when it is not installed, because both give
    the same numbers and a missing optional speed-up must not fail a sweep."""
    global _fallback_warned
    if backend not in BACKENDS:
        raise ValueError(f"eval.backend: unknown COCO evaluation backend {backend!r}; "
                         f"choose one of {', '.join(BACKENDS)}")
    if backend == "faster_coco_eval":
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            if not _fallback_warned:
                _fallback_warned = True
                warnings.warn("eval.backend faster_coco_eval: faster-coco-eval is not installed; evaluating with "
                              "pycocotools instead (same numbers, several times slower). "
                              "pip install faster-coco-eval to speed it up.", RuntimeWarning, stacklevel=3)
            return "pycocotools"
    return backend


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: both evaluators build millions of small acyclic dicts
    and lists (500k detections -> ~30% of the time spent in collections that free nothing);
    reference counting still frees them."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _quiet(*args: Any, **kwargs: Any) -> None:
    """faster-coco-eval's print_function: its progress lines would otherwise go to logging."""


def _renumbered(
    gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[int, str]]:
    """Fresh GT dataset and detection list for the evaluator, with ids renumbered.

    * Image and category ids become 1..N *in sorted order*, which is the order both
      evaluators process them in, so the numbers do not change; faster-coco-eval needs int
      image ids, and this lets string ids work with either backend.
    * GT annotation ids become 1..N: both evaluators use the matched GT id as the "matched"
      marker, so a GT with id 0 (common in converters) would count a perfect detection as a miss.
    * Only the fields a bbox evaluation reads are kept (``bbox``, ``area``, ``iscrowd``;
      ``ignore`` is dropped, pycocotools replaces it by ``iscrowd`` anyway). The caller's
      dicts are never touched: the evaluators write into them and the eval grid reuses them.
    * Detections of a category that is not in the GT are dropped; pycocotools never looks
      at them either. The others get what ``loadRes`` would add (``id``, ``area``, ``iscrowd``).

    Returns the dataset, the detections and ``{new category id: name}``.
    """
    try:
        image_ids = {iid: i for i, iid in enumerate(sorted({img["id"] for img in gt["images"]}), start=1)}
        cat_ids = {cid: i for i, cid in enumerate(sorted({cat["id"] for cat in gt["categories"]}), start=1)}
    except TypeError:
        raise CocoFormatError("<ground truth>: image ids (and category ids) must be all numbers or all strings, "
                              "so that they sort") from None
    names = {cat_ids[cat["id"]]: cat["name"] for cat in gt["categories"]}
    annotations = [
        {"id": i, "image_id": image_ids[ann["image_id"]], "category_id": cat_ids[ann["category_id"]],
         "bbox": list(map(float, ann["bbox"])), "area": float(ann["area"]),
         "iscrowd": 1 if ann.get("iscrowd") else 0}
        for i, ann in enumerate(gt["annotations"], start=1)
    ]
    dataset = {
        "images": [{"id": i} for i in image_ids.values()],
        "categories": [{"id": i, "name": name} for i, name in sorted(names.items())],
        "annotations": annotations,
    }
    dets = []
    for i, det in enumerate(detections):
        if det["image_id"] not in image_ids:
            raise CocoFormatError(
                f"<detections>: detection [{i}].image_id {det['image_id']!r} is not a ground-truth image")
        if det["category_id"] in cat_ids:
            box = list(map(float, det["bbox"]))
            # what loadRes adds to a bbox result: area = w * h, a 1-based id, iscrowd 0
            dets.append({"id": len(dets) + 1, "image_id": image_ids[det["image_id"]],
                         "category_id": cat_ids[det["category_id"]], "bbox": box, "score": float(det["score"]),
                         "area": box[2] * box[3], "iscrowd": 0})
    return dataset, dets, names


def _summary(precision: np.ndarray, recall: np.ndarray, iou_thrs: np.ndarray, area_lbl: list[str],
             max_dets: list[int]) -> dict[str, float]:
    """pycocotools' ``summarize()`` for bbox, computed the same way from the same arrays (so
    bit-identical), for every area range including the extra ones. Done here rather than read
    from ``COCOeval.stats`` because faster-coco-eval lays its stats out differently once
    extra ranges are set."""
    def ap(area: str = "all", iou: float | None = None) -> float:
        p = precision[:, :, :, area_lbl.index(area), max_dets.index(100)]
        return _mean_valid(p if iou is None else p[np.where(iou == iou_thrs)[0]])

    def ar(area: str = "all", max_det: int = 100) -> float:
        return _mean_valid(recall[:, :, area_lbl.index(area), max_dets.index(max_det)])

    metrics = {"map": ap(), "map50": ap(iou=0.5), "map75": ap(iou=0.75)}
    metrics.update({f"map_{a}": ap(a) for a in ("small", "medium", "large")})
    metrics.update({f"ar_{m}": ar(max_det=m) for m in (1, 10, 100)})
    metrics.update({f"ar_{a}": ar(a) for a in ("small", "medium", "large")})
    for label in area_lbl[len(_STANDARD_AREA_LABELS):]:
        metrics[f"map_{label}"] = ap(label)
        metrics[f"ar_{label}"] = ar(label)
    return metrics


def evaluate_coco(
    gt: Mapping[str, Any] | str | Path,
    detections: Sequence[Mapping[str, Any]],
    *,
    area_ranges: Mapping[str, Sequence[float]] | None = None,
    backend: str = "faster_coco_eval",
) -> dict[str, float]:
    """COCO bbox metrics, pycocotools' numbers.

    Args:
        gt: COCO ground-truth dict, or the path of its JSON file. Not modified.
        detections: ``[{image_id, category_id, bbox: [x, y, w, h], score}]`` in ORIGINAL image
            coordinates (pixels). Not modified. May be empty.
        area_ranges: extra ``name -> [lo, hi]`` ranges in sqrt-area pixels (side of a square of
            the same area, e.g. ``[0, 16]`` is area 0..256; ``hi=None`` means unbounded). Each
            adds ``map_<name>`` (AP@[.5:.95], maxDets 100) and ``ar_<name>`` (AR@100).
        backend: ``faster_coco_eval`` (C++, same numbers to ~1e-16, several times faster) or
            ``pycocotools`` (the reference). faster_coco_eval falls back to pycocotools, with a
            warning, when it is not installed; :func:`resolve_backend` tells which one runs.

    Returns:
        ``map, map50, map75, map_small, map_medium, map_large, ar_1, ar_10, ar_100, ar_small,
        ar_medium, ar_large`` (pycocotools' 12 stats), ``ap/<category name>`` (AP@[.5:.95],
        all areas, maxDets 100) per GT category, plus the extra range metrics. -1 means "no GT
        in that bucket", exactly as pycocotools reports it.
    """
    used = resolve_backend(backend)
    if isinstance(gt, (str, Path)):
        gt_data: Mapping[str, Any] = load_coco_gt(gt)
    else:
        validate_coco_gt(gt)
        gt_data = gt
    if not isinstance(detections, (list, tuple)):
        raise CocoFormatError(f"<detections>: expected a list of detection dicts, got {type(detections).__name__}")
    validate_detections(list(detections))
    area_rng, area_lbl = _area_params(area_ranges)
    with _gc_paused():
        return _evaluate(gt_data, detections, area_rng, area_lbl, used)


def _evaluate(gt_data: Mapping[str, Any], detections: Sequence[Mapping[str, Any]], area_rng: list[list[float]],
              area_lbl: list[str], used: str) -> dict[str, float]:
    """:func:`evaluate_coco` once its inputs are validated: renumber, run the library, summarize."""
    dataset, dets, names = _renumbered(gt_data, detections)

    # Imported here so that importing this module (e.g. from the config validator) stays cheap.
    if used == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster as COCOeval

        quiet: dict[str, Any] = {"print_function": _quiet}
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        quiet = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress on every call
        coco_gt = COCO(**quiet)
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        # The detection index loadRes would build, built directly: no per-detection polygon
        # (unused for bbox), and an empty list works (pycocotools' loadRes([]) raises
        # IndexError; an empty index gives its own answer: 0 where there is GT, -1 where none).
        coco_dt = COCO(**quiet)
        coco_dt.dataset = {"images": dataset["images"], "categories": dataset["categories"], "annotations": dets}
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox", **quiet)
        ev.params.areaRng = area_rng
        ev.params.areaRngLbl = area_lbl
        ev.evaluate()
        ev.accumulate()

    # precision: [T iou thresholds, R recall points, K categories, A area ranges, M maxDets]
    precision = ev.eval["precision"]
    recall = ev.eval["recall"]  # [T, K, A, M]
    metrics = _summary(precision, recall, np.asarray(ev.params.iouThrs), area_lbl, list(ev.params.maxDets))
    for k, cat_id in enumerate(ev.params.catIds):
        metrics[f"ap/{names[int(cat_id)]}"] = _mean_valid(precision[:, :, k, 0, -1])
    return metrics
