"""DBNet post-processing knobs: box_thresh, max_candidates, min_size, box vs polygon mode."""
from __future__ import annotations

import time

import numpy as np
import pytest
from shapely.geometry import Polygon

from sweeper.tasks.dbnet.postprocess import polygons_from_prob

DEFAULTS = dict(thresh=0.3, box_thresh=0.4, unclip_ratio=1.5, max_candidates=500, min_size=3)


def blobs(*specs: tuple[int, int, int, int, float], size: tuple[int, int] = (100, 200)) -> np.ndarray:
    """Probability map with rectangular blobs (x0, y0, x1, y1 inclusive, value)."""
    prob = np.zeros(size, np.float32)
    for x0, y0, x1, y1, value in specs:
        prob[y0:y1 + 1, x0:x1 + 1] = value
    return prob


def signed_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def test_box_thresh_filters_by_mean_probability():
    prob = blobs((10, 10, 60, 40, 0.9), (100, 10, 160, 40, 0.5))
    polys, scores = polygons_from_prob(prob, **dict(DEFAULTS, box_thresh=0.4))
    assert len(polys) == 2
    assert sorted(scores) == pytest.approx([0.5, 0.9], abs=1e-6)
    polys, scores = polygons_from_prob(prob, **dict(DEFAULTS, box_thresh=0.6))
    assert len(polys) == 1 and scores[0] == pytest.approx(0.9)
    assert polys[0][:, 0].max() < 80                      # the bright blob survived
    assert polygons_from_prob(prob, **dict(DEFAULTS, box_thresh=0.95)) == ([], [])


def test_thresh_binarises_before_scoring():
    prob = blobs((10, 10, 60, 40, 0.25), (100, 10, 160, 40, 0.5))
    assert len(polygons_from_prob(prob, **dict(DEFAULTS, box_thresh=0.2))[0]) == 1
    assert len(polygons_from_prob(prob, **dict(DEFAULTS, box_thresh=0.2, thresh=0.2))[0]) == 2


def test_max_candidates_caps_the_contours():
    specs = [(10 + 30 * i, 10 + 40 * j, 30 + 30 * i, 40 + 40 * j, 0.9) for i in range(6) for j in range(2)]
    prob = blobs(*specs)
    assert len(polygons_from_prob(prob, **DEFAULTS)[0]) == 12
    for cap in (0, 1, 5):
        polys, scores = polygons_from_prob(prob, **dict(DEFAULTS, max_candidates=cap))
        assert len(polys) == len(scores) == cap


@pytest.mark.parametrize("mode", ["box", "polygon"])
def test_min_size_drops_tiny_blobs(mode):
    prob = blobs((10, 10, 60, 40, 0.9), (100, 50, 102, 52, 0.9))   # 51x31 and 3x3 pixels
    polys, _ = polygons_from_prob(prob, **dict(DEFAULTS, min_size=3, mode=mode))
    assert len(polys) == 1 and polys[0][:, 0].max() < 80
    if mode == "box":  # the 3x3 blob (short side 2 between pixel centres) passes a smaller min_size
        assert len(polygons_from_prob(prob, **dict(DEFAULTS, min_size=1, mode=mode))[0]) == 2
    # Box mode tests the contour's short side (30) against min_size; polygon mode, like the
    # references, only tests the unclipped shape (~58) against min_size + 2.
    assert polygons_from_prob(prob, **dict(DEFAULTS, min_size=60, mode=mode)) == ([], [])


def test_box_mode_gives_ordered_quads_and_polygon_mode_follows_the_shape():
    # An L-shaped blob: its min-area box covers the empty corner, the polygon does not. The expected
    # output is the L grown by the unclip distance D' = A * 1.5 / L.
    prob = blobs((40, 40, 160, 60, 0.9), (40, 40, 65, 110, 0.9), size=(150, 200))
    kernel = Polygon([(40, 40), (160, 40), (160, 60), (65, 60), (65, 110), (40, 110)])
    ell = kernel.buffer(kernel.area * 1.5 / kernel.length)
    (box,), _ = polygons_from_prob(prob, **dict(DEFAULTS, mode="box"))
    (poly,), _ = polygons_from_prob(prob, **dict(DEFAULTS, mode="polygon"))
    assert box.shape == (4, 2) and poly.shape[0] > 4
    assert signed_area(box) > 0                                  # clockwise on screen (y down)
    assert np.argmin(box.sum(axis=1)) == 0                       # starts at the top-left corner

    def iou(p: np.ndarray) -> float:
        return ell.intersection(Polygon(p)).area / ell.union(Polygon(p)).area

    assert iou(poly) > 0.95 and iou(poly) > iou(box) + 0.2


def test_unclip_ratio_grows_the_output():
    prob = blobs((40, 30, 140, 60, 0.9))
    areas = [Polygon(polygons_from_prob(prob, **dict(DEFAULTS, unclip_ratio=r))[0][0]).area for r in (1.0, 1.5, 2.0)]
    assert areas[0] < areas[1] < areas[2]


def test_edge_cases_and_errors():
    assert polygons_from_prob(np.zeros((64, 64), np.float32), **DEFAULTS) == ([], [])
    prob = blobs((10, 10, 60, 40, 0.9))
    assert len(polygons_from_prob(prob[None], **DEFAULTS)[0]) == 1     # (1, H, W) accepted
    with pytest.raises(ValueError, match="post.mode"):
        polygons_from_prob(prob, **dict(DEFAULTS, mode="quad"))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        polygons_from_prob(np.zeros((2, 8, 8)), **DEFAULTS)
    with pytest.raises(ValueError, match="scale"):
        polygons_from_prob(prob, scale=0.0, **DEFAULTS)


def test_postprocess_is_fast_on_a_640_map():
    rng = np.random.default_rng(1)
    specs = [(int(x), int(y), int(x) + int(w), int(y) + int(h), 0.9)
             for x, y, w, h in zip(rng.integers(0, 560, 100), rng.integers(0, 620, 100),
                                   rng.integers(10, 80, 100), rng.integers(4, 16, 100))]
    prob = blobs(*specs, size=(640, 640)) + rng.uniform(0, 0.2, (640, 640)).astype(np.float32)
    for mode in ("box", "polygon"):
        polygons_from_prob(prob, **dict(DEFAULTS, mode=mode))
        start = time.perf_counter()
        polys, _ = polygons_from_prob(prob, **dict(DEFAULTS, mode=mode))
        assert polys and time.perf_counter() - start < 0.5
