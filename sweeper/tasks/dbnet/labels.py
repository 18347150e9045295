"""DBNet training targets: shrink (probability) map, threshold map and their loss masks.

Contract
--------
``make_labels(polys, ignore, size)`` returns four float32 ``(H, W)`` maps:

* ``prob``: 1 inside every text polygon shrunk inwards by D = A * (1 - r^2) / L (A area, L perimeter,
  r = ``shrink_ratio``), 0 elsewhere. The network's probability map learns this "kernel", and the
  post-processor grows it back (``postprocess.polygons_from_prob``), which keeps touching words apart.
* ``prob_mask``: 1 where the probability / binary losses count. 0 over polygons that must not be
  learned either way: flagged don't-care (``ignore``), tiny (short side of the min-area rectangle <
  ``min_text_size``), degenerate (|area| < 1) or shrinking to nothing.
* ``thresh``: ``thresh_min`` + (``thresh_max`` - ``thresh_min``) * (1 - min(dist / D, 1)), where dist is
  the distance to the nearest edge of a (non-ignored) polygon: ``thresh_max`` on the border, falling to
  ``thresh_min`` at distance D and beyond (so ``thresh_min`` far from text). Overlaps take the maximum.
* ``thresh_mask``: 1 inside every non-ignored polygon dilated outwards by the same D.

Coordinates are pixel centres: pixel (row y, column x) is the point (x, y), so a polygon with corners
(10, 10) and (50, 30) covers columns 10..50. Polygons are not clipped to the image: offsets and
distances use the true shape, and rasterisation clips.

Usage::

    maps = make_labels([np.array([[10, 10], [90, 10], [90, 40], [10, 40]], float)], [False], (64, 128))
    maps["prob"].shape == (64, 128); maps["thresh"].min() >= 0.3
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pyclipper

# pyclipper works on integers: coordinates are scaled by this factor so offsets keep sub-pixel accuracy.
_CLIPPER_SCALE = 256.0
# cv2.fillPoly fixed-point bits (1/16 pixel), for the same reason.
_FILL_SHIFT = 4
# Edge-chunk budget (edges x bbox pixels) for the vectorised distance computation: bounds memory for
# large many-vertex polygons while keeping quads in a single numpy pass.
_DIST_CHUNK = 4_000_000


def polygon_area_perimeter(poly: np.ndarray) -> tuple[float, float]:
    """Absolute area (shoelace) and perimeter of a closed polygon; cheaper than building a shapely object."""
    x, y = poly[:, 0], poly[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    area = 0.5 * abs(float(np.dot(x, yn) - np.dot(xn, y)))
    perimeter = float(np.hypot(xn - x, yn - y).sum())
    return area, perimeter


def offset_polygon(poly: np.ndarray, delta: float) -> list[np.ndarray]:
    """Offset a closed polygon by ``delta`` pixels (negative = shrink) with round joins.

    Returns a list because shrinking a concave polygon can split it and shrinking a thin one can
    delete it (empty list). Clipper normalises the path orientation itself, so either winding works.
    """
    pco = pyclipper.PyclipperOffset(2.0, 0.25 * _CLIPPER_SCALE)  # arc tolerance 0.25 px, as unscaled
    path = np.round(np.asarray(poly, dtype=np.float64) * _CLIPPER_SCALE).astype(np.int64)
    pco.AddPath(path.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    out = pco.Execute(delta * _CLIPPER_SCALE)
    return [np.asarray(p, dtype=np.float64) / _CLIPPER_SCALE for p in out if len(p) >= 3]


def fill_polygons(canvas: np.ndarray, polys: Sequence[np.ndarray], value: float) -> None:
    """Rasterise float polygons into ``canvas`` in place with 1/16-pixel precision.

    One ``fillPoly`` call per polygon: a single call with several polygons fills even-odd, so
    overlapping words would punch holes in each other.
    """
    for p in polys:
        pts = np.round(np.asarray(p) * (1 << _FILL_SHIFT)).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(canvas, [pts], float(value), lineType=cv2.LINE_8, shift=_FILL_SHIFT)


def _edge_distance(poly: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Distance from every pixel of the grid ``ys x xs`` to the nearest edge of ``poly``: (len(ys), len(xs)).

    Point-to-segment distance by projection onto each edge, clamped to the segment, computed for all
    edges at once by broadcasting (E, h, w) arrays (in edge chunks that bound memory). float32 on
    coordinates relative to the grid origin is exact enough for pixels and twice as fast as float64;
    the square root is taken once, after the minimum over edges.
    """
    origin = np.array([xs[0], ys[0]])
    a = (poly - origin).astype(np.float32)
    e = (np.roll(poly, -1, axis=0) - poly).astype(np.float32)   # edge vectors (E, 2)
    len2 = (e**2).sum(axis=1)
    inv_len2 = np.where(len2 > 0, 1.0 / np.maximum(len2, 1e-12), 0.0).astype(np.float32)  # repeated vertex: t = 0
    gx = (xs - xs[0]).astype(np.float32)[None, None, :]
    gy = (ys - ys[0]).astype(np.float32)[None, :, None]
    best = np.full((len(ys), len(xs)), np.inf, dtype=np.float32)
    step = max(1, _DIST_CHUNK // max(1, len(ys) * len(xs)))
    for s in range(0, len(poly), step):
        ax, ay = a[s:s + step, 0, None, None], a[s:s + step, 1, None, None]
        ex, ey = e[s:s + step, 0, None, None], e[s:s + step, 1, None, None]
        dx, dy = gx - ax, gy - ay                                 # (E, 1, w), (E, h, 1)
        t = np.clip(dx * (ex * inv_len2[s:s + step, None, None]) + dy * (ey * inv_len2[s:s + step, None, None]),
                    0.0, 1.0)
        px, py = dx - t * ex, dy - t * ey
        np.minimum(best, (px * px + py * py).min(axis=0), out=best)
    return np.sqrt(best)


def _draw_border(canvas: np.ndarray, poly: np.ndarray, dilated: list[np.ndarray], distance: float) -> None:
    """canvas = max(canvas, 1 - min(dist_to_edges / D, 1)) over the dilated polygon's bounding box."""
    h, w = canvas.shape
    pts = np.concatenate(dilated, axis=0)
    x0, y0 = np.floor(pts.min(axis=0)).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
    if x1 < x0 or y1 < y0:
        return  # dilated polygon entirely off the image
    xs = np.arange(x0, x1 + 1, dtype=np.float64)
    ys = np.arange(y0, y1 + 1, dtype=np.float64)
    closeness = 1.0 - np.minimum(_edge_distance(poly, xs, ys) * np.float32(1.0 / distance), 1.0)
    region = canvas[y0:y1 + 1, x0:x1 + 1]
    np.maximum(region, closeness, out=region)


def make_labels(polys: Sequence[np.ndarray], ignore: Sequence[bool], size: tuple[int, int], *,
                shrink_ratio: float = 0.4, thresh_min: float = 0.3, thresh_max: float = 0.7,
                min_text_size: float = 8) -> dict[str, np.ndarray]:
    """Build the DBNet targets for one image of ``size = (H, W)``.

    ``polys`` are float (N, 2) arrays (N >= 3) in the resized image's pixel coordinates and
    ``ignore[i]`` marks don't-care text. See the module docstring for what each map holds; the
    defaults are the values every reference implementation uses (DOMAIN.md §1.2).
    """
    if len(polys) != len(ignore):
        raise ValueError(f"make_labels: got {len(polys)} polygons but {len(ignore)} ignore flags")
    if not 0.0 <= shrink_ratio < 1.0:
        raise ValueError(f"make_labels: shrink_ratio must be in [0, 1), got {shrink_ratio}")
    h, w = int(size[0]), int(size[1])
    prob = np.zeros((h, w), np.float32)
    prob_mask = np.ones((h, w), np.float32)
    canvas = np.zeros((h, w), np.float32)
    thresh_mask = np.zeros((h, w), np.float32)
    dont_care: list[np.ndarray] = []
    dilated_all: list[np.ndarray] = []

    for poly, flag in zip(polys, ignore):
        poly = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if poly.shape[0] < 3:
            raise ValueError(f"make_labels: a polygon needs >= 3 points, got shape {poly.shape}")
        area, perimeter = polygon_area_perimeter(poly)
        if flag or area < 1.0 or perimeter <= 0.0:
            dont_care.append(poly)
            continue
        # Short side of the min-area rectangle (as mmocr): unlike the axis-aligned bbox it also
        # catches thin rotated text, which would shrink to a sliver.
        (_, _), (rw, rh), _ = cv2.minAreaRect(poly.astype(np.float32))
        if min(rw, rh) < min_text_size:
            dont_care.append(poly)
            continue
        distance = area * (1.0 - shrink_ratio**2) / perimeter
        shrunk = offset_polygon(poly, -distance)
        if not shrunk:
            dont_care.append(poly)
            continue
        fill_polygons(prob, shrunk, 1.0)
        dilated = offset_polygon(poly, distance)
        if not dilated:  # cannot happen for a valid polygon; fall back to the polygon itself
            dilated = [poly]
        dilated_all.extend(dilated)
        _draw_border(canvas, poly, dilated, distance)

    fill_polygons(prob_mask, dont_care, 0.0)
    fill_polygons(thresh_mask, dilated_all, 1.0)
    thresh = canvas * np.float32(thresh_max - thresh_min) + np.float32(thresh_min)
    return {"prob": prob, "prob_mask": prob_mask, "thresh": thresh, "thresh_mask": thresh_mask}
