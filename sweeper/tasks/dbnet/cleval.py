"""CLEval: character-level text-detection evaluation (detection level), in two flavours.

Contract
--------
* :func:`cleval` is clovaai/CLEval's det-level score with its defaults (``QUAD`` boxes, area-precision
  constraint 0.3, granularity penalty weights 1, vertical aspect threshold 0.5, case-sensitive),
  number for number: the tests reproduce the official CLI on 100 Korean receipts to 1e-9.
  Global values are **micro** (counts summed over images, then ratios).
* :func:`cleval_per_image` is the Upstage receipt-competition ("baseline") variant of the same
  algorithm: ``POLY`` boxes without transcriptions, every box gets a pseudo-length of
  ``min(round(0.5 + max(ar, 1/ar)), 100)`` from a minimum-area rectangle, "###" is not special,
  the false-positive character estimate is capped at 100, only the first 500 detections of an
  image count, and P/R/H are computed per image and then **averaged over images** (macro; the
  reported hmean is the mean of per-image hmeans). Micro numbers are returned too.

The algorithm (per image)
-------------------------
1. Every GT word gets one *pseudo character centre* (PCC) per character. ``cleval``: evenly spaced
   on the segment joining the midpoints of the quad's left and right edges (corners rotated first
   when mean-horizontal / mean-vertical side < 0.5). Don't-care GTs ("###"/``gt_ignore``) get
   ``"#" * min(round(0.5 + max(ar, 1/ar)), 10)`` and lose the area they share with cared GTs.
   ``cleval_per_image`` (and ``cleval`` for non-quads): CLEval's POLY rule, which interpolates the
   top and bottom chains with integer truncation and averages four points per character.
2. ``ap[g, d] = area(g & d) / area(d)`` (float32, as CLEval); ``pcc[g, d]`` = g's PCCs inside d.
   A detection is don't-care if ``ap >= 0.3`` against a don't-care GT, or its ap summed over the
   don't-care GTs whose PCCs it holds is ``>= 0.3``.
3. Matching: one-to-one (the pair is the only candidate -- ``ap >= 0.3`` and a PCC inside -- in its
   row and column, don't-care boxes included in the counts), one-to-many (a GT with >= 2 candidate
   detections), many-to-one (a detection holding PCCs of >= 2 GTs whose ap sums to >= 0.3).
4. TP = PCCs covered by a matched detection (each once). Recall ``max(0, TP - split) / GT chars``
   with split = sum over GTs of (matched dets - 1); precision ``max(0, TP - merge) / det chars``,
   det chars = PCCs inside matched detections (a PCC in two matched dets counts twice) + for each
   unmatched cared detection ``min(round(0.5 + 1 / (aspect + eps)), cap)``.

Geometry follows CLEval's Polygon3 semantics without Polygon3 (GPC is non-commercial): polygon
vertices are truncated to integers, areas are the shoelace formula, intersections come from
shapely, and "point inside" is the half-open crossing test (a point on a left/top edge is inside,
on a right/bottom edge outside). Rounding is half-to-even, as Python's ``round``; the Upstage
pseudo-lengths are computed in float32 as the baseline does, and its false-positive estimate
``round(0.5 + 1 / (ar + eps))`` uses ``ar = height / width`` of the rectangle found from the first
minimum-area hull edge in scipy's (qhull's) vertex order, which we reproduce (see ``_qhull_first``).

Decisions
---------
* A cared GT without a transcription counts 0 characters in :func:`cleval`, as in CLEval; when no
  GT has one, :func:`cleval` warns and points to :func:`cleval_per_image`.
* CLEval's ``QUAD`` type needs 4 points. For other polygons :func:`cleval` uses CLEval's POLY PCC
  rule and a minimum-area-rectangle aspect ratio (CLEval's own POLY aspect adds 1e5, a bug).
* Coordinates may be floats; like CLEval we truncate them for areas and containment only.
* qhull's vertex order is reproduced exactly for quads (checked against scipy); for polygons with
  more vertices it can differ in rare exact ties, moving a pseudo-length by one.

Usage::

    from sweeper.tasks.dbnet.cleval import cleval, cleval_per_image
    from sweeper.tasks.dbnet.hmean import load_text_eval_pairs

    samples = load_text_eval_pairs("gt.zip", "res.zip")
    cleval(samples)["hmean"], cleval_per_image(samples)["hmean"]
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import shapely

_F32 = np.float32
_EPS32 = np.finfo(np.float32).eps
_COUNTS = ("num_char_gt", "num_char_det", "tp", "gran_score_recall", "gran_score_precision", "num_char_fp",
           "num_splitted", "num_merged", "num_char_overlapped")


# ----------------------------------------------------------------------------- geometry
def _polys(sample: Any, field: str) -> list[np.ndarray]:
    """``sample.<field>`` as float64 ``(N, 2)`` arrays; non-finite coordinates are a user error."""
    out = []
    for i, poly in enumerate(getattr(sample, field)):
        arr = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(arr).all():
            raise ValueError(f"sample {sample.name!r}: {field}[{i}] has non-finite coordinates")
        out.append(arr)
    return out


def _pad(contours: Sequence[np.ndarray]) -> np.ndarray:
    """``(D, M, 2)`` stack, short contours repeating their last vertex (adds only zero-length edges)."""
    if not contours:
        return np.zeros((0, 3, 2))
    m = max(len(c) for c in contours)
    return np.stack([np.vstack([c, np.repeat(c[-1:], m - len(c), axis=0)]) for c in contours])


def _geoms(contours: Sequence[np.ndarray]) -> np.ndarray:
    """Shapely polygons; a self-intersecting contour becomes its even-odd area (GPC's reading)."""
    out = np.empty(len(contours), dtype=object)
    out[:] = [shapely.Polygon()] * len(contours)
    for n in {len(c) for c in contours if len(c) >= 3}:
        idx = [i for i, c in enumerate(contours) if len(c) == n]
        out[idx] = shapely.polygons(np.stack([contours[i] for i in idx]))
    bad = ~shapely.is_valid(out)
    if bad.any():
        out[bad] = [shapely.make_valid(g) for g in out[bad]]
    return out


def _shoelace(padded: np.ndarray) -> np.ndarray:
    """Polygon3's ``area()``: half the absolute shoelace sum (exact for the integer contours used)."""
    x, y = padded[..., 0], padded[..., 1]
    return 0.5 * np.abs(np.sum((x + np.roll(x, -1, axis=1)) * (np.roll(y, -1, axis=1) - y), axis=1))


def _inside(pts: np.ndarray, padded: np.ndarray) -> np.ndarray:
    """``(P, D)`` crossing-number test, bit-exact with Polygon3's ``isInside`` (half-open in y and x)."""
    x, y = pts[:, :1], pts[:, 1:]
    result = np.zeros((len(pts), len(padded)), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(padded.shape[1]):
            vi, vj = padded[:, i], padded[:, i - 1]
            straddle = ((vi[:, 1] <= y) & (y < vj[:, 1])) | ((vj[:, 1] <= y) & (y < vi[:, 1]))
            result ^= straddle & (x < (vj[:, 0] - vi[:, 0]) * (y - vi[:, 1]) / (vj[:, 1] - vi[:, 1]) + vi[:, 0])
    return result


def _hull(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Convex hull, counter-clockwise (x right, y up) from the lowest-x-then-y vertex; collinear dropped."""
    srt = sorted(set(pts))

    def chain(seq: list) -> list:
        out: list = []
        for p in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out

    hull = chain(srt)[:-1] + chain(srt[::-1])[:-1] if len(srt) >= 3 else []
    return hull if len(hull) >= 3 else []


def _qhull_first(pts: list[tuple[float, float]], hull: list[tuple[float, float]]) -> int:
    """Index in ``hull`` of the vertex scipy's ``ConvexHull(pts).vertices`` lists first.

    The baseline keeps the first minimum-area edge in that order, so exact ties (a rectangle gives
    four) depend on it. qhull lists the hull from the first edge of its initial triangle that is
    still a hull edge; the triangle is the first minimum-x and first maximum-x point plus the y
    extreme of largest determinant (else the first point clearly off their line). Checked against
    scipy on 17,591 random quads in every vertex order; for polygons whose three initial edges all
    disappear we start at ``hull[0]``, which may differ from qhull.
    """
    def first_extremes(k: int) -> tuple[int, int]:
        lo = hi = 0
        for i, p in enumerate(pts):
            if pts[hi][k] < p[k]:
                hi = i
            elif pts[lo][k] > p[k]:
                lo = i
        return lo, hi

    (minx, maxx), maxpoints = first_extremes(0), [*first_extremes(0), *first_extremes(1)]
    (ax, ay), (bx, by) = pts[minx], pts[maxx]

    def det(p: int) -> float:
        return abs((ax - pts[p][0]) * (by - pts[p][1]) - (ay - pts[p][1]) * (bx - pts[p][0]))

    third, best = None, -1.0
    for p in maxpoints:
        if p not in (minx, maxx) and det(p) > best:
            third, best = p, det(p)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    target = (bx - ax) * max(max(xs) - min(xs), max(ys) - min(ys))
    if third is None or best == 0 or best < 1e-3 * target:  # qhull's "search all points" path
        for p in range(len(pts)):
            if p not in maxpoints and det(p) > best:
                third, best = p, det(p)
                if best > 1e-2 * target:
                    break
    where = {v: k for k, v in enumerate(hull)}
    for a, b in ((maxx, minx), (third, minx), (third, maxx)):
        ia, ib = where.get(pts[a]), where.get(pts[b])
        if ia is not None and ib is not None and (ib - ia) % len(hull) in (1, len(hull) - 1):
            return ia if (ib - ia) % len(hull) == 1 else ib
    return 0


def _rect_sides(hulls: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-area rectangles of ``(B, H, 2)`` hulls over their edges (first minimum in hull order).

    Returns the side along the chosen edge, the side across it and the edge's unit vector. In
    float32 this repeats the Upstage baseline operation by operation (float32 areas decide which
    edge wins, and that can flip a pseudo-length at a tie such as an exact integer ratio).
    """
    h, n = hulls, hulls.shape[1]
    best = np.full(len(h), np.inf, dtype=h.dtype)
    along_best, across_best, unit = np.zeros_like(best), np.zeros_like(best), np.zeros_like(h[:, 0])
    for i in range(n):
        p0, p1 = h[:, i], h[:, (i + 1) % n]
        d = p0 - p1
        dist = np.sqrt((d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]).astype(np.float64)).astype(h.dtype)
        u = (p1 - p0) / dist[:, None]
        along = u[:, :1] * h[..., 0] + u[:, 1:] * h[..., 1]
        across = (-u[:, 1:]) * h[..., 0] + u[:, :1] * h[..., 1]
        len_p, len_o = along.max(1) - along.min(1), across.max(1) - across.min(1)
        area = len_p * len_o
        win = area < best
        best[win], along_best[win], across_best[win], unit[win] = area[win], len_p[win], len_o[win], u[win]
    return along_best, across_best, unit


def _upstage_aspects(polys: Sequence[np.ndarray]) -> np.ndarray:
    """The baseline's float32 ``min(100, height / (width + eps))`` per polygon (0 if degenerate)."""
    out = np.zeros(len(polys), dtype=np.float32)
    groups: dict[int, tuple[list[int], list[list]]] = {}
    for i, poly in enumerate(polys):
        pts = list(map(tuple, poly.astype(np.float32).astype(np.float64).tolist()))
        hull = _hull(pts)
        if hull:
            k = _qhull_first(pts, hull)
            idx, rows = groups.setdefault(len(hull), ([], []))
            idx.append(i)
            rows.append(hull[k:] + hull[:k])
    for idx, rows in groups.values():
        width, height, _ = _rect_sides(np.array(rows, dtype=np.float32))
        out[idx] = np.minimum(_F32(100), height / (width + _EPS32))
    return out


def _official_aspects(polys: Sequence[np.ndarray]) -> np.ndarray:
    """CLEval's QUAD aspect (mean of top & bottom sides + 1e-5) / (mean of left & right sides + 1e-5).

    A non-quad (official flavour only) uses its minimum-area rectangle, the side nearer the x axis
    as horizontal: our extension, as CLEval's own POLY aspect ratio is broken (it adds 1e5).
    """
    out = np.ones(len(polys))
    quads = [i for i, p in enumerate(polys) if len(p) == 4]
    if quads:
        q = np.stack([polys[i] for i in quads])
        d = q - np.roll(q, -1, axis=1)
        side = np.sqrt(d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1])
        out[quads] = ((side[:, 0] + side[:, 2]) / 2 + 1e-5) / ((side[:, 1] + side[:, 3]) / 2 + 1e-5)
    for i in set(range(len(polys))) - set(quads):
        hull = _hull(list(map(tuple, polys[i].tolist())))
        if hull:
            along, across, u = _rect_sides(np.array([hull], dtype=np.float64))
            hor, ver = (along[0], across[0]) if abs(u[0, 0]) >= abs(u[0, 1]) else (across[0], along[0])
            out[i] = (hor + 1e-5) / (ver + 1e-5)
    return out


# ----------------------------------------------------------------------------- pseudo character centres
def _quad_pccs(quads: np.ndarray, lengths: np.ndarray, aspects: np.ndarray,
               vertical_thresh: float = 0.5) -> np.ndarray:
    """CLEval QUAD rule: ``length`` points evenly spaced on the mid-left -> mid-right segment."""
    q = np.where((aspects >= vertical_thresh)[:, None, None], quads, quads[:, [3, 0, 1, 2]])
    p1, p2 = (q[:, 0] + q[:, 3]) / 2, (q[:, 1] + q[:, 2]) / 2
    u = (p2 - p1) / lengths[:, None]  # lengths > 0 here
    owner = np.repeat(np.arange(len(q)), lengths)
    i = (np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)).astype(np.float64)
    return p1[owner] + u[owner] / 2 + u[owner] * i[:, None]


def _poly_pccs(polys: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """CLEval POLY rule for ``(Q, N, 2)`` polygons: the first half of the vertices is the top chain,
    the rest (reversed) the bottom; each chain is resampled ``length`` times per section with integer
    truncation, and a character's centre is the mean of the two top and two bottom samples around it."""
    if polys.shape[1] == 3:  # CLEval completes a triangle with (x1, y3)
        polys = np.concatenate([polys, np.stack([polys[:, 0, 0], polys[:, 2, 1]], axis=1)[:, None]], axis=1)
    half = polys.shape[1] // 2
    sections = half - 1
    owner = np.repeat(np.arange(len(polys)), lengths)
    c = np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    n = lengths[owner]

    def sample(chain: np.ndarray, m: np.ndarray) -> np.ndarray:
        s = np.minimum(m // n, sections - 1)
        k = (m - s * n)[:, None]
        a, b = chain[owner, s], chain[owner, s + 1]
        v = np.where(k == 0, a, np.trunc(a + (b - a) / n[:, None] * k))
        return np.where((m == sections * n)[:, None], chain[owner, -1], v)

    top, bottom = polys[:, :half], polys[:, half:][:, ::-1]
    lo, hi = c * sections, (c + 1) * sections
    return (sample(top, lo) + sample(top, hi) + sample(bottom, lo) + sample(bottom, hi)) / 4


def _pccs(polys: Sequence[np.ndarray], lengths: np.ndarray,
          aspects: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """All PCCs of an image and the GT each belongs to: the QUAD rule for quads when ``aspects`` is
    given (official flavour), else CLEval's POLY rule (polygons of fewer than 3 points get none)."""
    pts, owner = [np.zeros((0, 2))], [np.zeros(0, dtype=np.intp)]
    groups: dict[Any, list[int]] = {}
    for i, p in enumerate(polys):
        if len(p) >= 3 and lengths[i] > 0:
            groups.setdefault("quad" if len(p) == 4 and aspects is not None else len(p), []).append(i)
    for key, idx in groups.items():
        stack = np.stack([polys[i] for i in idx])
        pts.append(_quad_pccs(stack, lengths[idx], aspects[idx]) if key == "quad" else _poly_pccs(stack, lengths[idx]))
        owner.append(np.repeat(np.asarray(idx, dtype=np.intp), lengths[idx]))
    return np.vstack(pts), np.concatenate(owner)


# ----------------------------------------------------------------------------- scoring one image
def _score_image(pcc_pts: np.ndarray, owner: np.ndarray, n_chars: np.ndarray, gt_dc: np.ndarray,
                 gt_contours: list[np.ndarray], det_contours: list[np.ndarray], det_fp: np.ndarray,
                 apc: float) -> dict[str, int]:
    """Steps 2-4 of the module docstring on integer contours; returns the image's counts."""
    n_gt, n_det = len(gt_contours), len(det_contours)
    gt_geoms, det_geoms, det_pad = _geoms(gt_contours), _geoms(det_contours), _pad(det_contours)
    if gt_dc.any() and (~gt_dc).any():  # a don't-care region loses the area it shares with cared GTs
        cared = gt_geoms[~gt_dc]
        tree = shapely.STRtree(cared)
        for g in np.flatnonzero(gt_dc):
            near = cared[tree.query(gt_geoms[g])]
            near = near[shapely.area(shapely.intersection(near, gt_geoms[g])) > 0]
            if len(near):
                gt_geoms[g] = shapely.difference(gt_geoms[g], shapely.union_all(near))
    det_area = _shoelace(det_pad)
    ap = np.zeros((n_gt, n_det), dtype=np.float32)
    if n_gt and n_det:  # bounding-box prefilter: only overlapping pairs are intersected
        gi, di = shapely.STRtree(det_geoms).query(gt_geoms)
        gi, di = gi[det_area[di] > 0], di[det_area[di] > 0]
        if len(gi):
            ap[gi, di] = (shapely.area(shapely.intersection(gt_geoms[gi], det_geoms[di])) / det_area[di]).astype(_F32)
    ap_ok = ap >= _F32(apc)  # CLEval compares float32 with float32(0.3)

    inside = _inside(pcc_pts, det_pad)
    pcc = np.zeros((n_gt, n_det), dtype=np.int64)
    np.add.at(pcc, owner, inside.astype(np.int64))

    det_dc = np.zeros(n_det, dtype=bool)
    if gt_dc.any() and n_det:  # float32 running sum in GT order, as CLEval's loop
        dc_sum = np.cumsum(np.where(pcc[gt_dc] > 0, ap[gt_dc], _F32(0)), axis=0, dtype=np.float32)[-1]
        det_dc = ap_ok[gt_dc].any(axis=0) | (dc_sum >= _F32(apc))
    care_g, care_d = ~gt_dc, ~det_dc

    cand = ap_ok & (pcc > 0)  # candidate counts include don't-care rows and columns, as CLEval
    one_to_one = cand & (cand.sum(1) == 1)[:, None] & (cand.sum(0) == 1)[None, :] & care_g[:, None] & care_d[None, :]
    cand_d = cand & care_d[None, :]
    one_to_many = cand_d & (care_g & (cand_d.sum(1) >= 2))[:, None]
    holds = (pcc > 0) & care_g[:, None]
    ap_sum = np.cumsum(np.where(holds, ap.astype(np.float64), 0.0), axis=0)[-1] if n_gt else np.zeros(n_det)
    many = care_d & (holds.sum(0) >= 2) & (ap_sum >= apc)
    match = one_to_one | one_to_many | (holds & many[None, :])

    kept = inside & match[owner]  # PCC flags of unmatched pairs are cleared
    tp = int(kept.any(axis=1).sum())
    per_gt, per_det = match.sum(1), match.sum(0)
    fp = int(det_fp[care_d & (per_det == 0)].sum())
    return dict(num_char_gt=int(n_chars[care_g].sum()), num_char_det=int(kept.sum()) + fp, tp=tp,
                gran_score_recall=int(np.maximum(per_gt - 1, 0)[care_g].sum()),
                gran_score_precision=int(np.maximum(per_det - 1, 0)[care_d].sum()), num_char_fp=fp,
                num_splitted=int((per_gt > 1).sum()), num_merged=int((per_det > 1).sum()),
                num_char_overlapped=int(kept.sum()) - tp)


def _rph(c: dict[str, Any]) -> dict[str, float]:
    """CLEval's ``calculate_rph`` on (summed) counts; 0 for an empty side."""
    r = 0.0 if c["num_char_gt"] == 0 else max(0.0, c["tp"] - c["gran_score_recall"]) / c["num_char_gt"]
    p = 0.0 if c["num_char_det"] == 0 else max(0.0, c["tp"] - c["gran_score_precision"]) / c["num_char_det"]
    return dict(recall=r, precision=p, hmean=0.0 if r + p == 0 else 2 * r * p / (r + p))


def _total(per_image: list[dict[str, Any]]) -> dict[str, Any]:
    totals = {k: sum(img[k] for img in per_image) for k in _COUNTS}
    return dict(_rph(totals), **totals)


# ----------------------------------------------------------------------------- public API
def cleval(samples: Iterable[Any], *, area_precision_constraint: float = 0.3, case_sensitive: bool = True) -> dict:
    """Official det-level CLEval (micro over images); see the module docstring.

    ``samples`` are :class:`~sweeper.tasks.dbnet.hmean.TextSample` (or alike: ``name, gt, gt_texts,
    gt_ignore, det``). A cared GT without a transcription has no characters (as in CLEval), so data
    without transcriptions should use :func:`cleval_per_image`. Returns ``precision, recall, hmean``,
    the summed counts (``num_char_gt, num_char_det, tp, gran_score_recall, gran_score_precision,
    num_char_fp, num_splitted, num_merged, num_char_overlapped``) and ``per_image``: a list of dicts
    with ``name``, the same counts and the image's ``precision, recall, hmean``.
    """
    per_image, any_text, any_cared = [], False, False
    for s in samples:
        gts = _polys(s, "gt")
        dc = np.asarray(s.gt_ignore, dtype=bool).reshape(-1)
        if len(dc) != len(gts) or len(s.gt_texts) != len(gts):
            raise ValueError(f"sample {s.name!r}: {len(gts)} GT polygons, {len(s.gt_texts)} gt_texts, "
                             f"{len(dc)} gt_ignore flags")
        aspects = _official_aspects(gts)
        pseudo = np.minimum(np.rint(0.5 + np.maximum(aspects, 1 / aspects)), 10).astype(np.int64)
        texts = [len(t if case_sensitive else t.upper()) for t in s.gt_texts]
        n_chars = np.where(dc, pseudo, np.asarray(texts, dtype=np.int64)).astype(np.int64)
        any_cared, any_text = any_cared or bool((~dc).any()), any_text or bool((n_chars[~dc] > 0).any())
        dets = _polys(s, "det")
        fp = np.minimum(np.rint(0.5 + 1 / (1e-5 + _official_aspects(dets))), 10).astype(np.int64)
        counts = _score_image(*_pccs(gts, n_chars, aspects), n_chars, dc, [np.trunc(g) for g in gts],
                              [np.trunc(d) for d in dets], fp, area_precision_constraint)
        per_image.append(dict(name=s.name, **counts, **_rph(counts)))
    if any_cared and not any_text:
        warnings.warn("cleval: no GT word has a transcription, so every GT counts 0 characters; "
                      "use cleval_per_image (pseudo-lengths) for data without transcriptions", stacklevel=2)
    return dict(_total(per_image), per_image=per_image)


def cleval_per_image(samples: Iterable[Any], *, max_detections: int = 500) -> dict:
    """Upstage receipt-competition CLEval: per-image P/R/H averaged over images (macro).

    Transcriptions and don't-care flags are ignored (every box is a cared word of pseudo-length
    ``min(round(0.5 + max(ar, 1/ar)), 100)``); polygons with fewer than 4 points are skipped, as in
    the baseline; only the first ``max_detections`` detections of an image count. Returns
    ``precision, recall, hmean`` (macro), ``micro_precision, micro_recall, micro_hmean``, the summed
    counts (as :func:`cleval`) and ``per_image`` (list of dicts: ``name``, counts, P/R/H).
    """
    per_image = []
    for s in samples:
        gts = [g for g in _polys(s, "gt") if len(g) >= 4]
        dets = [d for d in _polys(s, "det")[:max_detections] if len(d) >= 4]
        ar = _upstage_aspects(gts)
        n_chars = np.minimum(np.rint(_F32(0.5) + np.maximum(ar, _F32(1) / (ar + _EPS32))), 100).astype(np.int64)
        fp = np.minimum(np.rint(_F32(0.5) + _F32(1) / (_EPS32 + _upstage_aspects(dets))), 100).astype(np.int64)
        counts = _score_image(*_pccs(gts, n_chars, None), n_chars, np.zeros(len(gts), dtype=bool),
                              [np.trunc(g) for g in gts], [np.trunc(d) for d in dets], fp, 0.3)
        per_image.append(dict(name=s.name, **counts, **_rph(counts)))
    total = _total(per_image)
    macro = {k: float(np.mean([img[k] for img in per_image])) if per_image else 0.0
             for k in ("precision", "recall", "hmean")}
    micro = {f"micro_{k}": total.pop(k) for k in ("precision", "recall", "hmean")}
    return dict(macro, **micro, **total, per_image=per_image)
