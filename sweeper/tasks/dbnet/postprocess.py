"""DBNet post-processing: probability map -> text polygons with scores, in original-image coordinates.

Contract
--------
``polygons_from_prob(prob, *, thresh, box_thresh, unclip_ratio, max_candidates, min_size, mode,
scale, orig_size)`` returns ``(polys, scores)``: float64 (N, 2) polygons and their mean probability.

1. Binarise ``prob > thresh`` and trace the outer and inner contours (``cv2.findContours``, RETR_LIST);
   keep the first ``max_candidates`` (OpenCV's order, as the references do).
2. ``mode="box"``: min-area rectangle of the contour; drop it if its short side < ``min_size``; score =
   mean prob inside the rectangle; drop if score < ``box_thresh``; grow ("unclip") the rectangle by
   D' = A * unclip_ratio / L; take the min-area rectangle of the result and drop it if its short side
   < ``min_size + 2``. Quads come out clockwise on screen from the top-left corner.
   ``mode="polygon"``: simplify the contour (``approxPolyDP``, epsilon = 0.002 * perimeter); need >= 4
   points; score inside the polygon; unclip with the same ``unclip_ratio`` and drop the candidate if
   the offset splits it; drop if the min-area rectangle of the result has short side < ``min_size + 2``.
3. Map back: divide by ``scale`` (the resize factor the data pipeline applied; padding is bottom /
   right, so there is no shift) and clip x to [0, W], y to [0, H] with ``orig_size = (H, W)`` (default:
   the map size / scale). Coordinates stay float: no rounding, so the mapping is exactly invertible.

Unclip undoes the label shrink (D = A (1 - r^2) / L) only approximately: 1.5 recovers squarish words
well and long thin ones less so, which is why ``post.unclip_ratio`` is a sweep knob.

The eval grid calls this once per grid point on the same ``prob`` map; it is cheap (a few ms).

Usage::

    polys, scores = polygons_from_prob(prob, thresh=0.3, box_thresh=0.4, unclip_ratio=1.5,
                                       max_candidates=500, min_size=3, mode="box",
                                       scale=meta["scale"], orig_size=meta["orig_size"])
"""
from __future__ import annotations

import cv2
import numpy as np

from .labels import fill_polygons, offset_polygon, polygon_area_perimeter

MODES = ("box", "polygon")


def _order_quad(pts: np.ndarray) -> np.ndarray:
    """Order 4 corners clockwise on screen (y down), starting at the corner nearest the top-left."""
    centre = pts.mean(axis=0)
    angles = np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0])  # y down: increasing = clockwise
    pts = pts[np.argsort(angles, kind="stable")]
    start = int(np.argmin(pts[:, 0] + pts[:, 1]))
    return np.roll(pts, -start, axis=0)


def _min_rect(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Min-area rectangle corners (ordered) and its short side."""
    rect = cv2.minAreaRect(points.reshape(-1, 1, 2).astype(np.float32))
    quad = cv2.boxPoints(rect).astype(np.float64)
    return _order_quad(quad), float(min(rect[1]))


def _mean_inside(prob: np.ndarray, poly: np.ndarray) -> float:
    """Mean of ``prob`` over the pixels inside ``poly``, rasterised on its bounding-box crop only."""
    h, w = prob.shape
    x0, y0 = np.clip(np.floor(poly.min(axis=0)).astype(int), 0, [w - 1, h - 1])
    x1, y1 = np.clip(np.ceil(poly.max(axis=0)).astype(int), 0, [w - 1, h - 1])
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    fill_polygons(mask, [poly - [x0, y0]], 1)
    if not mask.any():
        return 0.0
    return float(cv2.mean(prob[y0:y1 + 1, x0:x1 + 1], mask=mask)[0])


def _unclip(poly: np.ndarray, ratio: float) -> list[np.ndarray]:
    """Grow a polygon by D' = A * ratio / L (the inverse of the label shrink, up to the ratio)."""
    area, perimeter = polygon_area_perimeter(poly)
    if perimeter <= 0:
        return []
    return offset_polygon(poly, area * ratio / perimeter)


def polygons_from_prob(prob: np.ndarray, *, thresh: float = 0.3, box_thresh: float = 0.4,
                       unclip_ratio: float = 1.5, max_candidates: int = 500, min_size: float = 3,
                       mode: str = "box", scale: float = 1.0,
                       orig_size: tuple[int, int] | None = None) -> tuple[list[np.ndarray], list[float]]:
    """Detect text in one (H, W) probability map; see the module docstring for the steps.

    Defaults are the sweep schema's ``post.*`` defaults. Returns polygons in original-image
    coordinates and their scores (mean probability inside the pre-unclip shape).
    """
    if mode not in MODES:
        raise ValueError(f"post.mode must be one of {MODES}, got {mode!r}")
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim == 3 and prob.shape[0] == 1:
        prob = prob[0]
    if prob.ndim != 2:
        raise ValueError(f"polygons_from_prob expects an (H, W) map, got shape {prob.shape}")
    if scale <= 0:
        raise ValueError(f"polygons_from_prob: scale must be > 0, got {scale}")
    if orig_size is None:
        orig_size = (prob.shape[0] / scale, prob.shape[1] / scale)
    lim = np.array([orig_size[1], orig_size[0]], dtype=np.float64)  # (W, H) for (x, y) clipping

    bitmap = (prob > thresh).astype(np.uint8)
    # OpenCV 3 returned (image, contours, hierarchy), 4+ returns (contours, hierarchy).
    contours = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)[-2]

    polys: list[np.ndarray] = []
    scores: list[float] = []
    for contour in contours[:max(0, int(max_candidates))]:
        if mode == "box":
            shape, short = _min_rect(contour)
            if short < min_size:
                continue
        else:
            approx = cv2.approxPolyDP(contour, 0.002 * cv2.arcLength(contour, True), True)
            shape = approx.reshape(-1, 2).astype(np.float64)
            if len(shape) < 4:
                continue
        score = _mean_inside(prob, shape)
        if score < box_thresh:
            continue
        grown = _unclip(shape, unclip_ratio)
        if not grown or (mode == "polygon" and len(grown) > 1):
            continue
        if mode == "box":
            out, short = _min_rect(np.concatenate(grown, axis=0))
        else:
            out = grown[0]
            short = _min_rect(out)[1]
        if short < min_size + 2:
            continue
        polys.append(np.clip(out / scale, 0.0, lim))
        scores.append(score)
    return polys, scores
