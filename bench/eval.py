"""COCO evaluation time per backend: faster-coco-eval vs pycocotools on the same inputs.

A sweep evaluates every trial every epoch (and every eval-grid point), so the evaluator's speed
is paid hundreds of times. This times :func:`sweeper.tasks.detection.coco_eval.evaluate_coco`
end to end (validation, our id renumbering, the library) with each backend on one synthetic
set: ``--images`` images with 1..15 GT boxes of 20 classes over COCO-like sizes, and exactly
``--dets`` detections per image (jittered copies of the GT, some with the wrong class, plus
random boxes; uniform scores), fixed seed. It checks that both backends give the same metrics.

Writes ``bench/results/eval.json``: wall and CPU seconds per backend (best of ``--repeat``
interleaved runs), their ratios, the time spent in our own preparation, and the largest metric
difference. On a shared machine read ``ratio_cpu``: other processes' load moves wall time a lot.

    python bench/eval.py             # 5,000 images x 100 detections (about 3 minutes on 2 cores)
    python bench/eval.py --quick     # 500 images, a smoke run
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from results_io import RESULTS, environment, write_result  # bench/ is on sys.path when run as a script

CLASSES = 20


def synthetic(images: int, dets_per_image: int, seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """COCO GT and detections; sizes log-uniform over 4..300 px so every area bucket is used."""
    rng = np.random.default_rng(seed)
    gt: dict[str, Any] = {"images": [], "categories": [{"id": c, "name": f"class{c}"} for c in range(1, CLASSES + 1)],
                          "annotations": []}
    dets: list[dict[str, Any]] = []
    for image_id in range(1, images + 1):
        gt["images"].append({"id": image_id, "width": 640, "height": 480})
        n = int(rng.integers(1, 16))
        side = np.exp(rng.uniform(np.log(4), np.log(300), n))
        wh = side[:, None] * rng.uniform(0.7, 1.4, (n, 2))
        xy = rng.uniform(0, 1, (n, 2)) * np.maximum([640, 480] - wh, 1)
        cats = rng.integers(1, CLASSES + 1, n)
        for (x, y), (w, h), c in zip(xy, wh, cats):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": int(c),
                                      "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h),
                                      "iscrowd": 0})
        # detections: per GT a few jittered copies (20% with a random class), the rest random boxes
        src = rng.integers(0, n, dets_per_image)
        copy = rng.random(dets_per_image) < 0.4
        jitter = rng.normal(0, 0.1, (dets_per_image, 4)) * np.repeat(side[src][:, None], 4, axis=1)
        box = np.concatenate([xy[src], wh[src]], axis=1) + jitter
        rand = np.concatenate([rng.uniform(0, 600, (dets_per_image, 2)),
                               np.exp(rng.uniform(np.log(4), np.log(300), (dets_per_image, 2)))], axis=1)
        box = np.where(copy[:, None], box, rand)
        box[:, 2:] = np.maximum(box[:, 2:], 1.0)
        right_class = copy & (rng.random(dets_per_image) < 0.8)
        label = np.where(right_class, cats[src], rng.integers(1, CLASSES + 1, dets_per_image))
        score = rng.random(dets_per_image)
        for b, c, s in zip(box.tolist(), label.tolist(), score.tolist()):
            dets.append({"image_id": image_id, "category_id": c, "bbox": b, "score": s})
    return gt, dets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=100, help="detections per image")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per backend; the best counts")
    ap.add_argument("--quick", action="store_true", help="500 images, one run: a smoke test")
    ap.add_argument("--out", type=Path, default=RESULTS / "eval.json")
    ap.add_argument("--no-loader", action="store_true",
                    help="skip the second half: data-loader images/s with and without mosaic (mosaic_loader.py)")
    args = ap.parse_args()
    if args.quick:
        args.images, args.repeat = 500, 1

    from sweeper.tasks.detection import coco_eval
    from sweeper.tasks.detection.coco_eval import BACKENDS, evaluate_coco, resolve_backend

    t0 = time.perf_counter()
    gt, dets = synthetic(args.images, args.dets)
    print(f"generated {len(gt['images'])} images, {len(gt['annotations'])} GT boxes, {len(dets)} detections "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)

    # our share: validation + id renumbering, the same for both backends
    t0 = time.perf_counter()
    coco_eval.validate_coco_gt(gt)
    coco_eval.validate_detections(dets)
    with coco_eval._gc_paused():  # as inside evaluate_coco
        coco_eval._renumbered(gt, dets)
    prep_s = time.perf_counter() - t0

    for backend in BACKENDS:
        if resolve_backend(backend) != backend:
            raise SystemExit(f"{backend} is not installed: cannot compare")
    # Interleaved runs, best of each: on a shared machine, load drifts between runs. CPU time
    # (this process, all threads) is barely touched by other processes' load; wall time is.
    wall: dict[str, list[float]] = {b: [] for b in BACKENDS}
    cpu: dict[str, list[float]] = {b: [] for b in BACKENDS}
    metrics: dict[str, dict[str, float]] = {}
    for _ in range(args.repeat):
        for backend in BACKENDS:
            t0, c0 = time.perf_counter(), time.process_time()
            metrics[backend] = evaluate_coco(gt, dets, backend=backend)
            wall[backend].append(time.perf_counter() - t0)
            cpu[backend].append(time.process_time() - c0)
            print(f"{backend}: {wall[backend][-1]:.2f} s wall, {cpu[backend][-1]:.2f} s CPU "
                  f"(map {metrics[backend]['map']:.6f})", flush=True)

    fast, ref = metrics["faster_coco_eval"], metrics["pycocotools"]
    diff = max(abs(fast[k] - ref[k]) for k in ref)
    if fast.keys() != ref.keys() or diff > 1e-12:
        raise SystemExit(f"backends disagree: max difference {diff:g}")
    from importlib.metadata import version

    best_wall = {b: min(v) for b, v in wall.items()}
    best_cpu = {b: min(v) for b, v in cpu.items()}
    write_result({
        "benchmark": "COCO bbox evaluation, evaluate_coco end to end, best of interleaved runs",
        "images": args.images, "detections_per_image": args.dets, "gt_boxes": len(gt["annotations"]),
        "detections": len(dets), "repeat": args.repeat,
        "wall_s": {b: round(v, 3) for b, v in best_wall.items()},
        "cpu_s": {b: round(v, 3) for b, v in best_cpu.items()},
        "ratio_wall": round(best_wall["pycocotools"] / best_wall["faster_coco_eval"], 2),
        "ratio_cpu": round(best_cpu["pycocotools"] / best_cpu["faster_coco_eval"], 2),
        "all_wall_s": {b: [round(v, 2) for v in runs] for b, runs in wall.items()},
        "our_preparation_s": round(prep_s, 3),
        "max_metric_difference": diff, "map": ref["map"],
        "eval_versions": {name: version(name) for name in ("faster-coco-eval", "pycocotools", "numpy")},
        **environment(),
    }, args.out)
    if not args.no_loader:  # the second figure: the loader with and without mosaic at 640 px
        import subprocess
        import sys

        subprocess.run([sys.executable, str(Path(__file__).with_name("mosaic_loader.py"))], check=True)


if __name__ == "__main__":
    main()
