"""Text-detection Hmean: the ICDAR-2015 IoU protocol, mmocr's HmeanIOU, and the file loading
behind ``sweeper eval --task dbnet``.

Contract
--------
* :class:`TextSample` holds one image: GT polygons with transcriptions and don't-care flags,
  detections with optional transcriptions and scores. Polygons are ``(N, 2)`` float arrays
  (``N >= 3``) in pixel coordinates.
* :func:`icdar15_hmean` is the RRC Challenge-4 Task-1 ``script.py`` protocol, number for number
  (tests reproduce the official script on 100 receipts to 1e-9). Per image: "###" GT is
  don't-care; a detection is don't-care when ``area(det & dcGT) / area(det) > ignore_thr`` for some
  don't-care GT; then GTs in order, and for each GT the detections in order, are matched
  greedily one-to-one when neither is matched or don't-care and ``IoU > iou_thr`` (strict).
  ``R = matched / careGT``, ``P = matched / careDet``; an image without care GT has ``R = 1`` and
  ``P = 0`` if it has care detections, else 1. Global P/R/H are **micro**: summed counts, then
  ratios (an all-empty data set scores 0, as in the official script).
* :func:`mmocr_hmean` is mmocr's ``HmeanIOUMetric``: predictions scoring below the smallest
  threshold are dropped, then those with ``inter / (area + 1e-5) > ignore_thr`` against an
  ignored GT; matches need ``IoU > iou_thr``; for each score threshold the hits are counted
  ("vanilla": greedy in (GT, pred) row-major order; "max_matching": maximum bipartite
  matching) and the threshold with the best dataset-level hmean is reported.
* :func:`load_text_eval_pairs` reads GT and predictions from a folder, a zip or a UFO JSON.
  Text files hold ``x1,y1,x2,y2,x3,y3,x4,y4[,transcription]`` per line (the transcription may
  contain commas, may be double-quoted as in RRC files); files pair by name after stripping a
  ``gt_`` / ``res_`` prefix and ``.txt`` (CLEval's rule). A GT without a prediction file has no
  detections; a prediction without a GT file is an error. Bad input raises
  :class:`TextEvalFormatError` naming the file and line (or JSON field). The parsing is
  :mod:`.text_io`'s, the reader training uses too.

Decisions (where we knowingly differ from the official script)
--------------------------------------------------------------
* Orientation: the official validator rejects counter-clockwise quads ("Points are not
  clockwise"). We accept either orientation and do not reorder points: area, intersection
  and IoU do not depend on the direction of traversal, and an exporter's convention should not
  fail an evaluation. (Reordering, as WenmuZhou's copy does, can change a non-convex polygon.)
* Invalid polygons (self-intersecting "bow ties", zero area, fewer than 3 points or non-finite
  points given in memory) are repaired with ``shapely.make_valid`` and only their polygonal
  parts kept (a bow tie becomes its two triangles; a degenerate one becomes empty, area 0). They
  still count as GT/detections, as in the official script -- MhLiao/DB's ``iou.py`` drops them
  instead, which would reward a model for emitting garbage. Results report the count as
  ``invalid_polygons``. The loader itself rejects lines without 8 finite numbers.
* Coordinates may be floats (the official regex wants integers; our own predictions are floats).
* Text files carry no confidences: a 9th field is always the transcription.

Usage::

    from sweeper.tasks.dbnet.hmean import icdar15_hmean, load_text_eval_pairs

    samples = load_text_eval_pairs("gt.zip", "preds/")     # or "val.json" (UFO) on either side
    result = icdar15_hmean(samples)
    result["hmean"], result["per_image"]["img_1"]["recall"]
"""
from __future__ import annotations

import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from sweeper.tasks.dbnet.text_io import DONT_CARE, TextEvalFormatError, Words, parse_icdar, read_ufo

__all__ = ["DONT_CARE", "TextEvalFormatError", "TextSample", "greedy_matches", "icdar15_hmean",
           "load_text_eval_pairs", "max_matches", "mmocr_hmean"]

_PREFIXES = ("gt_", "res_")

@dataclass
class TextSample:
    """One image's ground truth and detections (polygons ``(N, 2)`` float, pixel coordinates)."""

    name: str
    gt: list[np.ndarray]
    gt_texts: list[str]  # "" when unknown
    gt_ignore: list[bool]  # don't-care ("###" / illegible)
    det: list[np.ndarray]
    det_texts: list[str] = field(default_factory=list)
    det_scores: list[float] | None = None


# ----------------------------------------------------------------------------- geometry
def _polygonal(geom) -> Polygon | MultiPolygon:
    """Keep the area-bearing parts of ``make_valid``'s output (lines and points have no area)."""
    if isinstance(geom, (Polygon, MultiPolygon)):
        return geom
    parts = [g for g in shapely.get_parts(geom) if isinstance(g, (Polygon, MultiPolygon))]
    polys = [p for g in parts for p in shapely.get_parts(g)]
    return MultiPolygon(polys) if polys else Polygon()


def _to_geoms(polys: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
    """Shapely polygons for ``polys`` (repaired where invalid) and the number repaired.

    Polygons with the same vertex count are built in one vectorised call (a receipt has
    hundreds of quads; one ``Polygon()`` at a time was most of the run time).
    """
    arrs = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polys]
    usable = np.array([len(a) >= 3 and bool(np.isfinite(a).all()) for a in arrs], dtype=bool)
    out = np.empty(len(arrs), dtype=object)
    for i in np.flatnonzero(~usable):
        out[i] = Polygon()
    for n in sorted({len(arrs[i]) for i in np.flatnonzero(usable)}):
        idx = [i for i in np.flatnonzero(usable) if len(arrs[i]) == n]
        try:
            out[idx] = shapely.polygons(np.stack([arrs[i] for i in idx]))
        except shapely.errors.GEOSException:  # e.g. a ring of 3 points closed on itself
            for i in idx:
                try:
                    out[i] = Polygon(arrs[i])
                except (shapely.errors.GEOSException, ValueError):
                    out[i], usable[i] = Polygon(), False
    broken = usable & ~shapely.is_valid(out)
    for i in np.flatnonzero(broken):
        out[i] = _polygonal(shapely.make_valid(out[i]))
    return out, int((~usable).sum() + broken.sum())


def _overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j)`` of ``a`` x ``b`` with positive intersection area, sorted row-major.

    An STRtree bounding-box query prefilters the pairs, so an image with a few hundred boxes
    costs a few hundred intersections instead of N x M; pairs that do not touch have
    intersection (and IoU) 0, which can never pass a ``>`` threshold.
    """
    if len(a) == 0 or len(b) == 0:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty, np.zeros(0)
    ia, ib = shapely.STRtree(b).query(a)
    inter = shapely.area(shapely.intersection(a[ia], b[ib])) if len(ia) else np.zeros(0)
    keep = inter > 0
    ia, ib, inter = ia[keep], ib[keep], inter[keep]
    order = np.lexsort((ib, ia))
    return ia[order], ib[order], inter[order]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den`` with 0 where ``den <= 0`` (the official script's zero-area rule)."""
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


# ----------------------------------------------------------------------------- matching
def greedy_matches(rows: np.ndarray, cols: np.ndarray) -> int:
    """One-to-one matches taken first-come in the given (row-major) pair order."""
    used_r: set[int] = set()
    used_c: set[int] = set()
    for r, c in zip(np.asarray(rows).tolist(), np.asarray(cols).tolist()):
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
    return len(used_r)


def max_matches(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> int:
    """Size of a maximum bipartite matching over the candidate pairs (scipy, else our own)."""
    rows, cols = np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp)
    if len(rows) == 0:
        return 0
    try:
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import maximum_bipartite_matching
    except ImportError:  # pragma: no cover - scipy ships with the venv
        return _augmenting_matches(rows, cols, n_rows)
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_rows, n_cols))
    return int(np.sum(maximum_bipartite_matching(graph, perm_type="column") != -1))


def _augmenting_matches(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> int:
    """Kuhn's augmenting-path maximum matching (O(V*E)); fallback when scipy is missing."""
    adj: list[list[int]] = [[] for _ in range(n_rows)]
    for r, c in zip(rows.tolist(), cols.tolist()):
        adj[r].append(c)
    owner: dict[int, int] = {}

    def augment(r: int, seen: set[int]) -> bool:
        for c in adj[r]:
            if c not in seen:
                seen.add(c)
                if c not in owner or augment(owner[c], seen):
                    owner[c] = r
                    return True
        return False

    return sum(augment(r, set()) for r in range(n_rows))


def _prh(matched: float, n_gt: float, n_det: float) -> tuple[float, float, float]:
    """Per-image precision, recall, hmean with the official rule for an image without care GT."""
    if n_gt == 0:
        recall, precision = 1.0, (0.0 if n_det > 0 else 1.0)
    else:
        recall, precision = matched / n_gt, (0.0 if n_det == 0 else matched / n_det)
    return precision, recall, _hmean(precision, recall)


def _hmean(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


def _check(sample: TextSample) -> None:
    if len(sample.gt_ignore) != len(sample.gt):
        raise ValueError(f"sample {sample.name!r}: {len(sample.gt)} GT polygons but "
                         f"{len(sample.gt_ignore)} gt_ignore flags")
    if sample.det_scores is not None and len(sample.det_scores) != len(sample.det):
        raise ValueError(f"sample {sample.name!r}: {len(sample.det)} detections but "
                         f"{len(sample.det_scores)} det_scores")


# ----------------------------------------------------------------------------- ICDAR 2015
def _prepare(s: TextSample) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Checked sample -> (GT geometries, detection geometries, GT don't-care flags, repaired count)."""
    _check(s)
    gt, bad_gt = _to_geoms(s.gt)
    det, bad_det = _to_geoms(s.det)
    return gt, det, np.asarray(s.gt_ignore, dtype=bool).reshape(-1), bad_gt + bad_det


def icdar15_hmean(samples: Iterable[TextSample], iou_thr: float = 0.5, ignore_thr: float = 0.5) -> dict:
    """ICDAR-2015 IoU Hmean (RRC ch4 ``script.py``); see the module docstring for the rules.

    Returns ``precision, recall, hmean`` (micro), the totals ``matched, gt_care, det_care``,
    ``invalid_polygons`` (repaired, still counted) and ``per_image``: name -> ``precision,
    recall, hmean, matched, gt_care, det_care``.
    """
    per_image: dict[str, dict] = {}
    matched_sum = gt_sum = det_sum = invalid = 0
    for s in samples:
        gt, det, ignore, bad = _prepare(s)
        invalid += bad
        gt_area, det_area = shapely.area(gt), shapely.area(det)
        gi, di, inter = _overlaps(gt, det)

        det_dc = np.zeros(len(det), dtype=bool)
        covered = ignore[gi] & (_ratio(inter, det_area[di]) > ignore_thr)
        det_dc[di[covered]] = True

        iou = _ratio(inter, gt_area[gi] + det_area[di] - inter)
        cand = (iou > iou_thr) & ~ignore[gi] & ~det_dc[di]
        matched = greedy_matches(gi[cand], di[cand])
        n_gt, n_det = int((~ignore).sum()), int((~det_dc).sum())
        p, r, h = _prh(matched, n_gt, n_det)
        per_image[s.name] = dict(precision=p, recall=r, hmean=h, matched=matched, gt_care=n_gt, det_care=n_det)
        matched_sum, gt_sum, det_sum = matched_sum + matched, gt_sum + n_gt, det_sum + n_det

    recall = 0.0 if gt_sum == 0 else matched_sum / gt_sum
    precision = 0.0 if det_sum == 0 else matched_sum / det_sum
    return dict(precision=precision, recall=recall, hmean=_hmean(precision, recall),
                matched=matched_sum, gt_care=gt_sum, det_care=det_sum,
                invalid_polygons=invalid, per_image=per_image)


# ----------------------------------------------------------------------------- mmocr
def mmocr_hmean(samples: Iterable[TextSample], *, strategy: str = "vanilla",
                score_thrs: Sequence[float] | None = None, iou_thr: float = 0.5,
                ignore_thr: float = 0.5) -> dict:
    """mmocr ``HmeanIOUMetric``: best dataset-level hmean over score thresholds.

    ``det_scores=None`` means every detection scores 1. ``score_thrs`` defaults to mmocr's
    ``np.arange(0.3, 0.9, 0.1)``, which float rounding makes 0.3, 0.4, ..., 0.8 *and* 0.9000000000000001
    (seven thresholds; kept as mmocr has it). Returns ``precision, recall, hmean, score_thr`` of the best
    threshold (first one on ties), ``invalid_polygons`` and ``per_thr`` (all thresholds).
    """
    if strategy not in ("vanilla", "max_matching"):
        raise ValueError(f"strategy must be 'vanilla' or 'max_matching', got {strategy!r}")
    thrs = np.arange(0.3, 0.9, 0.1) if score_thrs is None else np.asarray(score_thrs, dtype=np.float64)
    if thrs.size == 0:
        raise ValueError("score_thrs is empty")
    images, invalid = [], 0
    for s in samples:
        gt, det, ignore, bad = _prepare(s)
        invalid += bad
        scores = np.ones(len(det)) if s.det_scores is None else np.asarray(s.det_scores, dtype=np.float64)
        keep = scores >= thrs.min()
        det_area = shapely.area(det)
        gi, di, inter = _overlaps(gt, det)
        hidden = keep[di] & ignore[gi] & (inter / (det_area[di] + 1e-5) > ignore_thr)
        keep[di[hidden]] = False
        hit = (_ratio(inter, shapely.area(gt)[gi] + det_area[di] - inter) > iou_thr) & ~ignore[gi] & keep[di]
        # re-index rows/cols to the kept GTs/preds; order (and so greedy order) is preserved
        row_of, col_of = np.cumsum(~ignore) - 1, np.cumsum(keep) - 1
        images.append((row_of[gi[hit]], col_of[di[hit]], scores[keep], int((~ignore).sum())))

    per_thr, best = [], None
    for thr in thrs:
        hits = n_gt = n_pred = 0
        for rows, cols, kept_scores, gt_count in images:
            ok = kept_scores >= thr
            sel = ok[cols]
            if strategy == "vanilla":
                hits += greedy_matches(rows[sel], cols[sel])
            else:
                hits += max_matches(rows[sel], cols[sel], gt_count, len(kept_scores))
            n_gt, n_pred = n_gt + gt_count, n_pred + int(ok.sum())
        p, r, h = _prh(hits, n_gt, n_pred)
        per_thr.append(dict(score_thr=float(thr), precision=p, recall=r, hmean=h))
        if best is None or h > best["hmean"]:
            best = per_thr[-1]
    return dict(best, invalid_polygons=invalid, per_thr=per_thr)


# ----------------------------------------------------------------------------- loading
_Record = tuple[list[np.ndarray], list[str], list[bool], "list[float] | None", str]


def load_text_eval_pairs(gt: str | Path, pred: str | Path) -> list[TextSample]:
    """Pair GT and prediction files (folder, zip or UFO JSON on either side) into samples.

    Samples come sorted by name. Raises :class:`TextEvalFormatError` for unreadable input and
    for prediction files without a GT file (usually a naming mistake that would silently
    drop detections otherwise).
    """
    gts, preds = _read_side(Path(gt)), _read_side(Path(pred))
    orphans = sorted(set(preds) - set(gts))
    if orphans:
        shown = ", ".join(preds[n][4] for n in orphans[:3])
        raise TextEvalFormatError(f"{len(orphans)} prediction file(s) have no GT in {gt}: {shown}"
                                  " (names pair after stripping gt_/res_ and .txt)")
    samples = []
    for name in sorted(gts):
        g_polys, g_texts, g_ignore, _, _ = gts[name]
        d_polys, d_texts, _, d_scores, _ = preds.get(name, ([], [], [], None, ""))
        samples.append(TextSample(name, g_polys, g_texts, g_ignore, d_polys, d_texts, d_scores))
    return samples


def _read_side(path: Path) -> dict[str, _Record]:
    if not path.exists():
        raise TextEvalFormatError(f"{path}: no such file or folder")
    if path.suffix.lower() == ".json":
        return _read_ufo(path)
    if path.is_dir():
        files = [(str(p), p.name, p.read_bytes()) for p in sorted(path.iterdir())
                 if p.is_file() and p.suffix.lower() == ".txt"]
    else:
        try:
            with zipfile.ZipFile(path) as zf:
                files = [(f"{path}!{info.filename}", Path(info.filename).name, zf.read(info))
                         for info in zf.infolist()
                         if not info.is_dir() and info.filename.lower().endswith(".txt")
                         and not info.filename.startswith("__MACOSX/")
                         and not Path(info.filename).name.startswith(".")]
        except (zipfile.BadZipFile, OSError) as err:
            raise TextEvalFormatError(f"{path}: not a readable zip file or folder ({err})") from err
    if not files:
        raise TextEvalFormatError(f"{path}: no .txt files found")
    out: dict[str, _Record] = {}
    for source, base, data in files:
        name = base[:-4]
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        if name in out:
            raise TextEvalFormatError(f"{source}: pairs as {name!r}, like {out[name][4]}")
        out[name] = _record(parse_icdar(data, source, eval_wording=True), source)
    return out


def _record(words: Words, source: str) -> _Record:
    """Scores only when every word has one (text files never do)."""
    scores = words.scores if words.scores and all(s is not None for s in words.scores) else None
    return words.polys, words.texts, words.ignore, scores, source


def _read_ufo(path: Path) -> dict[str, _Record]:
    """A UFO JSON side (see :mod:`.text_io`), every word with >= 3 points; the sample name is the
    image's file name without its extension."""
    out: dict[str, _Record] = {}
    for words in read_ufo(path, eval_wording=True):
        where = f"{path}: images.{words.name}"
        for wid, pts in zip(words.keys, words.polys):
            if len(pts) < 3:
                raise TextEvalFormatError(f"{where}.words.{wid}.points: need >= 3 finite [x, y] pairs, "
                                          f"got shape {pts.shape}")
        name = Path(words.name).stem
        if name in out:
            raise TextEvalFormatError(f"{where}: name {name!r} appears twice (extensions are ignored)")
        out[name] = _record(words, f"{path} (images.{words.name})")
    return out
