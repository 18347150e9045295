"""Detection data-loader throughput with and without mosaic (and with every augmentation on).

Synthetic shapes rendered at 640 px, loaded at ``--resolution`` (640) by the training
CocoDetection, batch 4, 0 workers and 1 torch thread (what a 1-CPU trial has). Each setting
runs ``--passes`` epochs over the split; images/s counts items out of the loader. A mosaic item
decodes and resizes 4 images, so expect it to cost about 3-4x a plain item.

Writes `bench/results/mosaic_loader.json`.

    python bench/mosaic_loader.py            # about a minute on 2 cores
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from results_io import RESULTS, write_result  # bench/ is on sys.path when run as a script

SETTINGS = {
    "plain": {},
    "mosaic": {"mosaic_ratio": 1.0},
    "all_on": {"mosaic_ratio": 0.5, "scale_jitter": 0.3, "brightness": 0.3, "contrast": 0.3,
               "saturation": 0.3, "hue": 0.05, "vflip": 0.5},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64, help="synthetic images (all used for training)")
    ap.add_argument("--size", type=int, default=640, help="px of the generated images")
    ap.add_argument("--resolution", type=int, default=640)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "mosaic_loader.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from sweeper.tasks.detection.data import CocoDetection, make_loader, set_loader_epoch
    from sweeper.tasks.detection.synth import make_synthetic_coco

    data = make_synthetic_coco(Path(tempfile.mkdtemp(prefix="mosaic-bench-")), images=args.images,
                               size=args.size, seed=0, val_fraction=0.0)
    results = {}
    for name, augment in SETTINGS.items():
        ds = CocoDetection(data["train"], data["images"], resolution=args.resolution, hflip=0.5, train=True,
                           augment=augment, seed=0)
        loader = make_loader(ds, batch_size=4, shuffle=True, seed=0, workers=0)
        n, boxes, start = 0, 0, time.perf_counter()
        for epoch in range(1, args.passes + 1):
            ds.set_epoch(epoch, args.passes)
            set_loader_epoch(loader, seed=0, epoch=epoch)
            for images, targets in loader:
                n += len(images)
                boxes += sum(len(t["boxes"]) for t in targets)
        elapsed = time.perf_counter() - start
        results[name] = {"images_per_s": round(n / elapsed, 1), "ms_per_image": round(1000 * elapsed / n, 2),
                         "boxes_per_image": round(boxes / n, 2), "augment": augment}
    write_result({
        "benchmark": "mosaic_loader",
        "images": args.images, "image_size": args.size, "resolution": args.resolution, "passes": args.passes,
        "workers": 0, "threads": args.threads, "batch_size": 4,
        "mosaic_slowdown": round(results["plain"]["images_per_s"] / results["mosaic"]["images_per_s"], 2),
        "results": results,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s)",
    }, args.out)


if __name__ == "__main__":
    main()
