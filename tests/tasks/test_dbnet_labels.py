"""DBNet label generation: shrink size, threshold-map range, masks, and the label -> postprocess round trip."""
from __future__ import annotations

import time

import numpy as np
import pytest
from shapely.geometry import Polygon

from sweeper.tasks.dbnet.labels import make_labels, offset_polygon
from sweeper.tasks.dbnet.postprocess import polygons_from_prob


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def rotated(cx: float, cy: float, w: float, h: float, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    corners = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    return corners @ np.array([[c, s], [-s, c]]) + [cx, cy]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = Polygon(a), Polygon(b)
    return pa.intersection(pb).area / pa.union(pb).area


def shrink_distance(w: float, h: float, r: float = 0.4) -> float:
    return w * h * (1 - r**2) / (2 * (w + h))


@pytest.mark.parametrize("x0,y0,w,h", [(20, 20, 100, 60), (10, 30, 200, 40), (15.5, 12.25, 33.5, 21.0)])
@pytest.mark.parametrize("clockwise", [True, False])
def test_shrunk_rectangle_has_expected_size(x0, y0, w, h, clockwise):
    poly = rect(x0, y0, x0 + w, y0 + h)
    if not clockwise:
        poly = poly[::-1]
    maps = make_labels([poly], [False], (128, 256))
    d = shrink_distance(w, h)
    ys, xs = np.nonzero(maps["prob"])
    # Pixel centres are coordinates: the filled extent spans the shrunk rectangle to within a pixel.
    assert abs((xs.max() - xs.min()) - (w - 2 * d)) <= 1.0
    assert abs((ys.max() - ys.min()) - (h - 2 * d)) <= 1.0
    assert abs(xs.min() - (x0 + d)) <= 1.0 and abs(ys.min() - (y0 + d)) <= 1.0
    # A convex polygon shrinks to a rectangle: the filled region is solid.
    assert maps["prob"][ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()
    assert set(np.unique(maps["prob"])) == {0.0, 1.0}


def test_offset_polygon_shrinks_rectangle_exactly():
    (shrunk,) = offset_polygon(rect(10, 10, 110, 70), -15.75)
    assert np.allclose(np.sort(shrunk[:, 0]), [25.75, 25.75, 94.25, 94.25], atol=1 / 256)
    assert np.allclose(np.sort(shrunk[:, 1]), [25.75, 25.75, 54.25, 54.25], atol=1 / 256)


def test_threshold_map_border_far_and_range():
    x0, y0, x1, y1 = 40, 40, 140, 100
    maps = make_labels([rect(x0, y0, x1, y1)], [False], (160, 200))
    t = maps["thresh"]
    d = shrink_distance(x1 - x0, y1 - y0)
    assert t.dtype == np.float32 and t.shape == (160, 200)
    assert t.min() >= 0.3 - 1e-6 and t.max() <= 0.7 + 1e-6
    # On the border (pixel centres on the edges): thresh_max.
    assert np.allclose(t[y0, x0:x1 + 1], 0.7, atol=1e-6)
    assert np.allclose(t[y0:y1 + 1, x1], 0.7, atol=1e-6)
    # Far away (image corner) and deep inside (centre is 30 px > D from every edge): thresh_min.
    assert t[0, 0] == pytest.approx(0.3) and t[159, 199] == pytest.approx(0.3)
    assert t[70, 90] == pytest.approx(0.3)
    # Linear in between: D/2 outside the left edge sits halfway.
    half = int(round(d / 2))
    assert t[70, x0 - half] == pytest.approx(0.3 + 0.4 * (1 - half / d), abs=1e-5)
    # thresh_mask is the polygon dilated by D.
    tm = maps["thresh_mask"]
    assert tm[70, int(x0 - d) + 1] == 1 and tm[70, int(x0 - d) - 2] == 0
    assert tm[70, 90] == 1


def test_threshold_map_takes_max_over_overlaps_and_fills_overlaps():
    a, b = rect(20, 20, 100, 70), rect(60, 40, 140, 90)  # shrunk by D ~ 12.9: overlap x 73..87, y 53..57
    maps = make_labels([a, b], [False, False], (100, 160))
    assert maps["thresh"][40, 80] == pytest.approx(0.7)  # on b's top edge, inside a
    # Overlapping shrunk regions must stay filled (a single even-odd fillPoly would punch a hole).
    assert maps["prob"][54:57, 74:87].all()
    assert maps["thresh_mask"][50:60, 60:100].all()
    assert maps["thresh"].min() >= 0.3 - 1e-6 and maps["thresh"].max() <= 0.7 + 1e-6


def test_dont_care_and_tiny_text_zero_the_prob_mask():
    big, dont_care = rect(10, 10, 90, 50), rect(100, 10, 180, 50)
    tiny = rect(10, 70, 80, 75)                   # 5 px tall
    thin_rotated = rotated(140, 100, 80, 5, np.pi / 4)  # bbox ~60x60, but only 5 px wide
    maps = make_labels([big, dont_care, tiny, thin_rotated], [False, True, False, False], (140, 200))
    pm, prob = maps["prob_mask"], maps["prob"]
    for poly in (dont_care, tiny, thin_rotated):
        cx, cy = np.round(poly.mean(axis=0)).astype(int)
        assert pm[cy, cx] == 0, poly
        assert prob[cy, cx] == 0 and maps["thresh_mask"][cy, cx] == 0
    assert pm[30, 50] == 1 and prob[30, 50] == 1
    assert pm[0, 0] == 1 and pm[130, 5] == 1
    # Ignored text gets no threshold border either.
    assert maps["thresh"][10, 140] == pytest.approx(0.3)


def test_degenerate_polygon_is_ignored_and_bad_input_raises():
    line = np.array([[10, 10], [50, 10], [90, 10.2]], dtype=float)
    maps = make_labels([line], [False], (32, 100))
    assert maps["prob"].sum() == 0 and maps["thresh_mask"].sum() == 0
    with pytest.raises(ValueError, match="ignore flags"):
        make_labels([line], [], (32, 100))
    with pytest.raises(ValueError, match=">= 3 points"):
        make_labels([np.zeros((2, 2))], [False], (32, 100))


def test_empty_image_gives_background_maps():
    maps = make_labels([], [], (16, 24))
    assert maps["prob"].sum() == 0 and maps["prob_mask"].min() == 1
    assert np.allclose(maps["thresh"], 0.3) and maps["thresh_mask"].sum() == 0
    assert all(v.dtype == np.float32 and v.shape == (16, 24) for v in maps.values())


@pytest.mark.parametrize("gt", [rect(50, 60, 150, 120), rect(40, 40, 120, 120),
                                rotated(100, 100, 120, 60, 0.5), rotated(100, 90, 110, 70, -0.3)],
                         ids=["rect", "square", "rotated", "rotated_neg"])
@pytest.mark.parametrize("mode", ["box", "polygon"])
def test_round_trip_recovers_polygon(gt, mode):
    maps = make_labels([gt], [False], (200, 200))
    polys, scores = polygons_from_prob(maps["prob"], thresh=0.3, box_thresh=0.5, unclip_ratio=1.5,
                                       max_candidates=100, min_size=3, mode=mode)
    assert len(polys) == 1
    assert iou(polys[0], gt) > 0.8
    assert scores[0] > 0.9
    if mode == "box":
        assert polys[0].shape == (4, 2)


@pytest.mark.parametrize("mode", ["box", "polygon"])
def test_scale_and_orig_size_map_back_exactly(mode):
    orig_h, orig_w, scale = 300, 500, 0.4           # resized to 120 x 200 by the data pipeline
    gt = rotated(250, 150, 300, 150, 0.2)
    prob = make_labels([gt * scale], [False], (128, 200))["prob"]
    kwargs = dict(thresh=0.3, box_thresh=0.5, unclip_ratio=1.5, max_candidates=100, min_size=3, mode=mode)
    resized, _ = polygons_from_prob(prob, **kwargs)
    mapped, _ = polygons_from_prob(prob, scale=scale, orig_size=(orig_h, orig_w), **kwargs)
    assert len(mapped) == len(resized) == 1
    assert np.array_equal(mapped[0], np.clip(resized[0] / scale, 0, [orig_w, orig_h]))
    assert iou(mapped[0], gt) > 0.8
    # A word running off the right edge is clipped to the original width, not the padded map.
    edge = make_labels([rect(150, 40, 199, 90)], [False], (128, 200))["prob"]
    (clipped,), _ = polygons_from_prob(edge, scale=scale, orig_size=(orig_h, 480), **kwargs)
    assert clipped[:, 0].max() == 480 and clipped.min() >= 0


def test_make_labels_is_fast():
    rng = np.random.default_rng(0)
    polys = [rotated(*rng.uniform(30, 610, 2), rng.uniform(20, 120), rng.uniform(10, 40), rng.uniform(-0.3, 0.3))
             for _ in range(100)]
    ignore = [i % 10 == 0 for i in range(100)]
    make_labels(polys, ignore, (640, 640))
    start = time.perf_counter()
    make_labels(polys, ignore, (640, 640))
    # ~25 ms on a 2-core CPU; the bound only catches a regression to per-pixel Python loops.
    assert time.perf_counter() - start < 0.5
