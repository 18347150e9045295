"""Detection confusion matrix: which classes a detector mixes up, misses, or invents.

mAP says *how much* a detector is wrong; this says *how*: a (K+1) x (K+1) count matrix, rows =
ground-truth class, columns = predicted class, with **background as the last row and column**:

* ``[g, p]``          a GT box of class g matched by a detection of class p (diagonal: right class);
* ``[g, background]`` a GT box no detection matched (a miss);
* ``[background, p]`` a detection of class p that matched no GT box (a false positive);
* ``[background, background]`` is always 0.

Rules, chosen to answer "what did the detector see here?" rather than to re-derive AP:

* only detections with ``score >= score`` count (the matrix describes one operating point);
* matching ignores class: every (GT, detection) pair with IoU >= ``iou`` is a candidate, and
  pairs are taken greedily by IoU, highest first, each GT and detection at most once (ties: the
  higher-scoring detection, then the earlier GT). So a box found with the wrong label lands in
  ``[g, p]`` instead of counting as one miss plus one false positive;
* a second detection on an already matched GT is a false positive (``[background, p]``);
* crowd GT (``iscrowd``) is ignored, as COCO does: it is no row of the matrix, and a detection
  left unmatched that lies on a crowd region (intersection / detection area >= ``iou``, COCO's
  crowd overlap) is dropped rather than counted as a false positive.

Boxes are xyxy pixels in one coordinate frame per image. Usage::

    from sweeper.tasks.detection.confusion import confusion_from_coco, write_confusion

    matrix, names = confusion_from_coco(val_gt, coco_results, iou=0.5, score=0.3)
    write_confusion(matrix, names, "artifacts/", iou=0.5, score=0.3)
    # -> artifacts/confusion_matrix.json, artifacts/confusion_matrix.png
"""
from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BACKGROUND = "background"


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), xyxy -> (N, M).
    Continuous coordinates (area = w * h, no +1), like COCO."""
    inter = _intersection(a, b)
    area_a = _area(a)[:, None]
    area_b = _area(b)[None, :]
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def _array(entry: Mapping[str, Any], key: str, shape_tail: tuple[int, ...], dtype: Any, where: str) -> np.ndarray:
    if key not in entry:
        raise ValueError(f"{where}: missing {key!r}")
    arr = np.asarray(entry[key], dtype=dtype)
    if arr.size == 0:
        return arr.reshape((0, *shape_tail))
    if arr.shape[1:] != shape_tail:
        raise ValueError(f"{where}.{key}: expected shape (N{''.join(f', {n}' for n in shape_tail)}), got {arr.shape}")
    return arr


def _image_counts(gt: Mapping[str, Any], det: Mapping[str, Any], num_classes: int, iou: float, score: float,
                  where: str) -> np.ndarray:
    """The confusion counts of one image (see the module docstring for the rules)."""
    m = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    bg = num_classes
    g_boxes = _array(gt, "boxes", (4,), float, f"{where} ground truth")
    g_labels = _array(gt, "labels", (), np.int64, f"{where} ground truth")
    crowd = np.asarray(gt.get("iscrowd", np.zeros(len(g_labels))), dtype=bool).reshape(-1)
    d_boxes = _array(det, "boxes", (4,), float, f"{where} detections")
    d_labels = _array(det, "labels", (), np.int64, f"{where} detections")
    d_scores = _array(det, "scores", (), float, f"{where} detections")
    if not (len(g_boxes) == len(g_labels) == len(crowd)):
        raise ValueError(f"{where} ground truth: boxes, labels and iscrowd differ in length")
    if not (len(d_boxes) == len(d_labels) == len(d_scores)):
        raise ValueError(f"{where} detections: boxes, labels and scores differ in length")
    for what, labels in (("ground truth", g_labels), ("detections", d_labels)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{where} {what}.labels: class indices must be in 0..{num_classes - 1}, "
                             f"got {labels.min()}..{labels.max()}")

    keep = d_scores >= score
    order = np.argsort(-d_scores[keep], kind="stable")  # higher score wins IoU ties
    d_boxes, d_labels = d_boxes[keep][order], d_labels[keep][order]
    g_boxes, g_labels, crowd_boxes = g_boxes[~crowd], g_labels[~crowd], g_boxes[crowd]

    ious = box_iou(g_boxes, d_boxes)
    gi, di = np.nonzero(ious >= iou)
    # Highest IoU first; then detection rank (score), then GT order: deterministic.
    pairs = np.lexsort((gi, di, -ious[gi, di]))
    g_used = np.zeros(len(g_boxes), dtype=bool)
    d_used = np.zeros(len(d_boxes), dtype=bool)
    for p in pairs:
        g, d = gi[p], di[p]
        if not (g_used[g] or d_used[d]):
            g_used[g] = d_used[d] = True
            m[g_labels[g], d_labels[d]] += 1
    np.add.at(m, (g_labels[~g_used], bg), 1)

    fp = ~d_used
    if len(crowd_boxes) and fp.any():
        # COCO's crowd overlap: intersection over the detection's own area.
        inter = _intersection(d_boxes[fp], crowd_boxes)
        area = _area(d_boxes[fp])[:, None]
        on_crowd = (np.divide(inter, area, out=np.zeros_like(inter), where=area > 0) >= iou).any(axis=1)
        fp[np.flatnonzero(fp)[on_crowd]] = False
    np.add.at(m, (bg, d_labels[fp]), 1)
    return m


def confusion_matrix(
    gt_by_image: Mapping[Hashable, Mapping[str, Any]],
    dets_by_image: Mapping[Hashable, Mapping[str, Any]],
    num_classes: int,
    iou: float = 0.5,
    score: float = 0.3,
) -> np.ndarray:
    """(K+1) x (K+1) int64 counts; rows = GT class, columns = predicted class, background last.

    Args:
        gt_by_image: image id -> ``{"boxes": (N, 4) xyxy, "labels": (N,) class index 0..K-1,
            "iscrowd": (N,) bool, optional}``.
        dets_by_image: image id -> ``{"boxes": (M, 4) xyxy, "labels": (M,), "scores": (M,)}``.
            An image missing on one side has no boxes there.
        num_classes: K, the number of object classes (background excluded).
        iou: a GT and a detection match when their IoU is >= this.
        score: detections below this score are left out.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes: need at least 1 class, got {num_classes}")
    if not 0 < iou <= 1:
        raise ValueError(f"iou: need 0 < iou <= 1, got {iou}")
    empty: dict[str, Any] = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64), "scores": np.zeros(0)}
    total = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for image_id in {**gt_by_image, **dets_by_image}:
        total += _image_counts(gt_by_image.get(image_id, empty), dets_by_image.get(image_id, empty),
                               num_classes, iou, score, f"image {image_id!r}")
    return total


def confusion_from_coco(
    gt: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    iou: float = 0.5,
    score: float = 0.3,
) -> tuple[np.ndarray, list[str]]:
    """:func:`confusion_matrix` of a COCO ground-truth dict and a COCO results list (bbox xywh,
    as :func:`.coco_eval.evaluate_coco` takes them). Classes are the GT categories sorted by id.

    Returns the matrix and the K class names in row order (background, the last row, not included).
    """
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}

    def xyxy(box: Sequence[float]) -> list[float]:
        x, y, w, h = (float(v) for v in box)
        return [x, y, x + w, y + h]

    gts: dict[Hashable, dict[str, list[Any]]] = {img["id"]: {"boxes": [], "labels": [], "iscrowd": []}
                                                for img in gt["images"]}
    for ann in gt["annotations"]:
        entry = gts[ann["image_id"]]
        entry["boxes"].append(xyxy(ann["bbox"]))
        entry["labels"].append(index[ann["category_id"]])
        entry["iscrowd"].append(bool(ann.get("iscrowd", 0)))
    dets: dict[Hashable, dict[str, list[Any]]] = {}
    for det in detections:
        if det["category_id"] not in index:
            continue  # not a class of this dataset; the COCO evaluator ignores it too
        entry = dets.setdefault(det["image_id"], {"boxes": [], "labels": [], "scores": []})
        entry["boxes"].append(xyxy(det["bbox"]))
        entry["labels"].append(index[det["category_id"]])
        entry["scores"].append(float(det["score"]))
    return confusion_matrix(gts, dets, len(cats), iou, score), [str(c["name"]) for c in cats]


def write_confusion(
    matrix: np.ndarray,
    class_names: Sequence[str],
    out_dir: str | Path,
    *,
    iou: float,
    score: float,
) -> list[Path]:
    """Write ``confusion_matrix.json`` (names with background last, the matrix, iou, score) and
    ``confusion_matrix.png`` (annotated counts, colour = share of the row, so rare classes show)
    into ``out_dir``; returns both paths. ``class_names`` are the K object classes in row order."""
    matrix = np.asarray(matrix)
    names = [*map(str, class_names), BACKGROUND]
    if matrix.shape != (len(names), len(names)):
        raise ValueError(f"matrix: expected shape {(len(names), len(names))} for {len(class_names)} classes "
                         f"+ background, got {matrix.shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "confusion_matrix.json"
    json_path.write_text(json.dumps({
        "names": names, "rows": "ground truth", "columns": "prediction",
        "matrix": matrix.astype(int).tolist(), "iou": float(iou), "score": float(score),
    }, indent=2))
    png_path = out / "confusion_matrix.png"
    _plot(matrix, names, png_path, f"confusion matrix (IoU >= {iou:g}, score >= {score:g})")
    return [json_path, png_path]


def _plot(matrix: np.ndarray, names: list[str], path: Path, title: str) -> None:
    # Figure + FigureCanvasAgg directly: no pyplot global state, no display needed (Ray workers).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(names)
    side = min(4 + 0.45 * n, 40)
    fig = Figure(figsize=(side + 1.5, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    if n <= 40:
        size = max(5, 10 - n // 5)
        for r in range(n):
            for c in range(n):
                ax.text(c, r, str(int(matrix[r, c])), ha="center", va="center", fontsize=size,
                        color="white" if share[r, c] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
