"""Cost of the pre-dispatch image header check (`sweeper.tasks.images.check_image`), which
`sweeper validate` and `sweeper launch` run on every image of every split before any trial starts.

Writes ``--images`` (10,000) small PNGs and JPEGs (half each, 64x48 noise) to a temporary
directory, then times, warm (files in the page cache, as right after a copy), the header check of
all of them, and the whole COCO split check (`check_coco_split`: the JSON read and validated, then
every header) on a COCO file naming them. The budget is a few seconds for 10,000 images.

Writes `bench/results/image_check.json`.

    python bench/image_check.py            # about 15 s on 2 cores, most of it writing the images
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from results_io import RESULTS, write_result  # bench/ is on sys.path when run as a script


def _write_images(out: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        name = f"{i:06d}.png" if i % 2 == 0 else f"{i:06d}.jpg"
        Image.fromarray(pixels).save(out / name, compress_level=1) if name.endswith(".png") else \
            Image.fromarray(pixels).save(out / name, quality=90)
        names.append(name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best is reported")
    parser.add_argument("--out", type=Path, default=RESULTS / "image_check.json")
    args = parser.parse_args()

    from sweeper.tasks.detection.coco_io import check_coco_split
    from sweeper.tasks.images import check_image

    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        names = _write_images(images, args.images)
        ann = Path(tmp) / "train.json"
        ann.write_text(json.dumps({
            "images": [{"id": i + 1, "file_name": n, "width": 64, "height": 48} for i, n in enumerate(names)],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [4, 4, 20, 10], "area": 200}
                            for i in range(len(names))],
        }))
        for name in names:  # warm the page cache: the timed passes measure the check, not the disk
            check_image(images / name)
        headers, split = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for name in names:
                check_image(images / name)
            headers.append(time.perf_counter() - start)
            start = time.perf_counter()
            check_coco_split(ann, images, split="train")
            split.append(time.perf_counter() - start)
    best_headers, best_split = min(headers), min(split)
    write_result({
        "benchmark": "image_check",
        "images": args.images, "image_size": [64, 48], "formats": ["PNG", "JPEG"], "repeats": args.repeats,
        "header_check_s": round(best_headers, 3),
        "header_check_us_per_image": round(1e6 * best_headers / args.images, 1),
        "coco_split_check_s": round(best_split, 3),
        "all_header_passes_s": [round(t, 3) for t in headers],
        "all_split_passes_s": [round(t, 3) for t in split],
        "machine": f"{platform.processor() or platform.machine()}, 1 process",
    }, args.out)


if __name__ == "__main__":
    main()
