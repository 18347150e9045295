"""Box-size statistics of a COCO detection dataset, to choose size thresholds from the data.

COCO's small/medium/large split (32 and 96 px of sqrt-area) was made for COCO; on a dataset of
tiny parts or of full-frame documents nearly every box can fall in one bucket, and ``map_small``
then says little. This module shows where a dataset's sizes really are, so that
``eval.area_ranges`` (``{tiny: [0, 16], ...}``, sqrt-area px) can be set from them:

* a histogram of sqrt(area), the side of the square of the same area, in pixels;
* counts per class per size bucket (``thresholds=(32, 96)`` gives COCO's small/medium/large),
  with each box in exactly one bucket: ``lo <= sqrt(area) < hi``. (COCOeval's own ranges are
  closed on both ends, so a box exactly on a threshold counts in both there);
* percentiles, boxes per image, images without boxes, crowd boxes (left out of the
  statistics, as COCOeval leaves them out of the metrics).

The size is the annotation's ``area`` field when present (COCOeval buckets by it), else the box
``w * h``. Usage::

    from sweeper.tasks.detection.datastats import dataset_stats, render_stats

    stats = dataset_stats("data/shapes/train.json", thresholds=(16, 32, 96))
    print(render_stats(stats))

or ``sweeper data stats data/shapes/train.json --thresholds 16,32,96 --plot sizes.png``.
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sweeper.tasks.detection.coco_io import GT_REQUIRED_MINIMAL, load_coco_gt

#: histogram edges in sqrt-area px; the last bin is open-ended. Roughly log-spaced: object
#: sizes span orders of magnitude, and the small end is where thresholds are hard to choose.
DEFAULT_BINS: tuple[float, ...] = (0, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
PERCENTILES: tuple[int, ...] = (1, 5, 10, 25, 50, 75, 90, 95, 99)


def bucket_names(thresholds: Sequence[float]) -> list[str]:
    """``small/medium/large`` for two thresholds (COCO's names), else the ranges: ``0-t0``,
    ``t0-t1``, ..., ``>=tn``."""
    if len(thresholds) == 2:
        return ["small", "medium", "large"]
    edges = [0.0, *thresholds]
    return [_bin_label(lo, hi) for lo, hi in zip(edges, [*thresholds, None])]


def parse_thresholds(text: str) -> tuple[float, ...]:
    """``"32,96"`` -> ``(32.0, 96.0)``: positive, increasing sqrt-area sizes in pixels."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--thresholds: expected comma-separated sizes in pixels like 32,96, got {text!r}") from None
    _check_thresholds(values, "--thresholds")
    return values


def _check_thresholds(values: Sequence[float], where: str) -> None:
    if not values or any(not math.isfinite(v) or v <= 0 for v in values) or list(values) != sorted(set(values)):
        raise ValueError(f"{where}: need one or more positive, increasing sizes in pixels (e.g. 32,96), "
                         f"got {list(values)}")


def dataset_stats(
    ann_file: str | Path,
    thresholds: Sequence[float] = (32, 96),
    bins: Sequence[float] = DEFAULT_BINS,
) -> dict[str, Any]:
    """Size distribution of the (non-crowd) boxes of a COCO annotation file.

    Args:
        ann_file: COCO detection JSON (``images``, ``annotations``, ``categories``).
        thresholds: bucket boundaries in sqrt-area px; ``(32, 96)`` is COCO's split.
        bins: histogram edges in sqrt-area px, increasing; the last bin is ``[bins[-1], inf)``.

    Returns a JSON-ready dict: ``file``, ``images``, ``images_without_boxes``, ``boxes``,
    ``crowd_boxes``, ``thresholds``, ``buckets`` (names), ``totals`` and ``per_class``
    (name -> bucket -> count, plus ``total``), ``histogram`` (``edges`` with ``null`` for
    infinity, ``counts``), ``percentiles`` (``p50`` -> px), ``min``/``max``/``mean`` sqrt-area,
    ``boxes_per_image`` (``mean``, ``max``).
    """
    _check_thresholds(list(thresholds), "thresholds")
    if len(bins) < 1 or list(bins) != sorted(set(bins)) or bins[0] < 0:
        raise ValueError(f"bins: need increasing edges >= 0 in pixels, got {list(bins)}")
    path = Path(ann_file)
    # COCOeval-only fields (``id``, ``area``) are optional here; an ``area`` that is there is checked
    # as everywhere else (it is preferred to the box's size; a negative one counts as 0, as boxes do).
    data = load_coco_gt(path, required=GT_REQUIRED_MINIMAL, what="COCO annotation")

    names = {c["id"]: str(c["name"]) for c in data["categories"]}
    anns = [a for a in data["annotations"] if not a.get("iscrowd")]
    areas = [a["area"] if "area" in a else max(a["bbox"][2], 0) * max(a["bbox"][3], 0) for a in anns]
    sides = np.sqrt(np.maximum(np.asarray(areas, dtype=float), 0))
    bucket_of = np.searchsorted(np.asarray(thresholds, float), sides, side="right")  # lo <= s < hi
    labels = bucket_names(thresholds)

    # one pass: class row x bucket column counts
    classes = sorted(names.items(), key=lambda kv: kv[1])
    row = {cid: i for i, (cid, _) in enumerate(classes)}
    cls_of = np.array([row[a["category_id"]] for a in anns], dtype=np.int64)
    grid = np.bincount(cls_of * len(labels) + bucket_of, minlength=len(classes) * len(labels)).reshape(len(classes), -1)
    per_class = {name: {**{b: int(n) for b, n in zip(labels, grid[i])}, "total": int(grid[i].sum())}
                 for i, (_, name) in enumerate(classes)}
    totals = grid.sum(axis=0)

    edges = np.array([*bins, np.inf], dtype=float)
    hist, _ = np.histogram(sides, bins=edges)
    per_image: dict[Any, int] = {img["id"]: 0 for img in data["images"]}
    for a in anns:
        per_image[a["image_id"]] += 1
    box_counts = np.array(list(per_image.values()), dtype=float)

    def rounded(x: float) -> float:
        return round(float(x), 2)

    return {
        "file": str(path),
        "images": len(data["images"]),
        "images_without_boxes": int(sum(1 for img in data["images"] if per_image[img["id"]] == 0)),
        "boxes": len(anns),
        "crowd_boxes": len(data["annotations"]) - len(anns),
        "thresholds": [float(t) for t in thresholds],
        "buckets": labels,
        "totals": {b: int(n) for b, n in zip(labels, totals)},
        "per_class": per_class,
        "histogram": {"edges": [float(e) for e in bins] + [None], "counts": [int(n) for n in hist]},
        "percentiles": {f"p{q}": rounded(np.percentile(sides, q)) for q in PERCENTILES} if len(anns) else {},
        "min": rounded(sides.min()) if len(anns) else None,
        "max": rounded(sides.max()) if len(anns) else None,
        "mean": rounded(sides.mean()) if len(anns) else None,
        "boxes_per_image": {"mean": rounded(box_counts.mean()) if box_counts.size else 0.0,
                            "max": int(box_counts.max()) if box_counts.size else 0},
    }


def _bin_label(lo: float, hi: float | None) -> str:
    return f"{lo:g}-{hi:g}" if hi is not None else f">={lo:g}"


def render_stats(stats: Mapping[str, Any], width: int = 100) -> str:
    """The stats as text: a summary line, a per-class x bucket table and a bar histogram."""
    from rich.console import Console
    from rich.table import Table

    out = io.StringIO()
    c = Console(file=out, width=width, force_terminal=False, highlight=False)
    c.print(f"{stats['file']}: {stats['images']} images, {stats['boxes']} boxes "
            f"({stats['crowd_boxes']} crowd boxes left out), {stats['images_without_boxes']} images without boxes, "
            f"{stats['boxes_per_image']['mean']:g} boxes per image on average (max {stats['boxes_per_image']['max']})",
            markup=False, soft_wrap=True)
    if stats["boxes"]:
        pct = ", ".join(f"{k} {v:g}" for k, v in stats["percentiles"].items())
        c.print(f"sqrt(area) px: min {stats['min']:g}, mean {stats['mean']:g}, max {stats['max']:g}; {pct}",
                markup=False, soft_wrap=True)
    buckets = stats["buckets"]
    edges = [0.0, *stats["thresholds"], None]
    t = Table(title="boxes per class and size (sqrt-area px)", caption="a box is in a bucket when lo <= size < hi")
    t.add_column("class")
    for name, lo, hi in zip(buckets, edges, edges[1:]):
        span = _bin_label(lo, hi)
        t.add_column(name if name == span else f"{name}\n{span}", justify="right")
    t.add_column("total", justify="right")
    for name, row in stats["per_class"].items():
        t.add_row(name, *(str(row[b]) for b in buckets), str(row["total"]))
    total = stats["boxes"] or 1
    t.add_row("all", *(f"{stats['totals'][b]} ({100 * stats['totals'][b] / total:.0f}%)" for b in buckets),
              str(stats["boxes"]), style="bold")
    c.print(t)
    counts = stats["histogram"]["counts"]
    edges_h = stats["histogram"]["edges"]
    peak = max(counts) if counts and max(counts) else 1
    c.print("histogram of sqrt(area), px:")
    for lo, hi, n in zip(edges_h, edges_h[1:], counts):
        bar = "#" * round(40 * n / peak)
        c.print(f"  {_bin_label(lo, hi):>9} {n:>7}  {bar}", markup=False)
    return out.getvalue()


def plot_histogram(stats: Mapping[str, Any], out: str | Path) -> Path:
    """Save the sqrt-area histogram (log-x, thresholds as dashed lines) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    edges = stats["histogram"]["edges"]
    counts = stats["histogram"]["counts"]
    finite = [float(e) for e in edges[:-1]]
    top = max(finite[-1] * 2, (stats["max"] or 0) * 1.05, finite[-1] + 1)
    # log axis: 0 cannot be drawn; the first bin [0, x) starts at x / 2 instead
    left = [finite[1] / 2 if e == 0 and len(finite) > 1 else max(e, 0.5) for e in finite]
    right = [*left[1:], top]
    fig = Figure(figsize=(9, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(left, counts, width=[r - lo for lo, r in zip(left, right)], align="edge", edgecolor="black", color="#4c72b0")
    ax.set_xscale("log")
    for t in stats["thresholds"]:
        ax.axvline(t, color="#c44e52", linestyle="--")
        ax.text(t, ax.get_ylim()[1] * 0.97, f" {t:g}", color="#c44e52", va="top")
    ax.set_xlabel("sqrt(area), px (log scale)")
    ax.set_ylabel("boxes")
    ax.set_title(f"{Path(stats['file']).name}: {stats['boxes']} boxes, {stats['images']} images")
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
