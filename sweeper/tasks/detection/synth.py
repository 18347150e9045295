"""Synthetic COCO detection dataset: coloured shapes on textured backgrounds.

The demo sweep and the end-to-end tests need a detection dataset that is small, offline,
deterministic and still *learnable in a few CPU epochs*, with enough small objects that
``map_small`` means something. This module draws one, in standard COCO layout, so everything
downstream (data loader, evaluator, MLflow logging) runs exactly as on real data.

Design choices (and why):

* Classes ``square``, ``circle``, ``triangle``. Colours are drawn at random per object,
  independent of the class, so a model must look at shape, not colour.
* Backgrounds are a random base colour with a low-frequency texture, a few thin distractor
  lines, and per-pixel noise over everything (objects included): flat backgrounds make the task
  trivial.
* Object sides: with probability 0.45 a COCO-"small" side of 8..30 px (small is an absolute
  size in COCO, so this does not scale); otherwise log-uniform in 33 px .. 0.55 x ``size``.
  At ``size=128`` that gives small + medium objects; at ``size>=256`` large ones (>96 px) appear.
  Larger objects fail placement more often, so the measured small fraction is a bit above 0.45.
* Objects never overlap (a 1-px gap is kept), so every box is tight around fully visible pixels.
* ``area`` is the box area ``w * h``, not the shape's pixel count: the small/medium/large
  bucket then follows the box a detector predicts (COCO proper uses the mask area).
* Each image has its own RNG stream (``[seed, image_index]``), so image *k* is the same whatever
  ``images`` is; the train/val split comes from ``seed`` alone. Same arguments -> byte-identical
  PNG and JSON files.

Usage::

    from sweeper.tasks.detection.synth import make_synthetic_coco

    info = make_synthetic_coco("data/shapes", images=96, size=128, seed=0)
    info["train"], info["val"], info["images"]   # paths for the sweep's `data:` section
"""
from __future__ import annotations

import colorsys
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sweeper.tasks.synthetic import check_args, save_png, val_indices

CATEGORIES: tuple[str, ...] = ("square", "circle", "triangle")
#: probability that an object gets a COCO-small side (< 32 px)
P_SMALL = 0.45
SMALL_SIDE = (8, 30)  # px, inclusive
MIN_NON_SMALL_SIDE = 33  # px
MAX_SIDE_FRACTION = 0.55  # of the image size
MAX_OBJECTS = 6
PLACEMENT_TRIES = 30
PIXEL_NOISE_STD = 10.0  # grey levels
TEXTURE_AMPLITUDE = 45.0  # grey levels, low-frequency background variation
MIN_CONTRAST = 90.0  # Euclidean RGB distance between object colour and local background mean


def _shape_mask(rng: np.random.Generator, shape: str, side: int) -> np.ndarray:
    """Boolean mask of one shape, cropped to its own tight bounding box."""
    if shape == "square":
        mask = np.ones((side, side), dtype=bool)
    else:
        if shape == "circle":
            w = h = side
        else:  # triangle: base `side`, height 75..100% of it, pointing up/down/left/right
            w, h = side, max(3, int(round(side * rng.uniform(0.75, 1.0))))
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        if shape == "circle":
            draw.ellipse([0, 0, w - 1, h - 1], fill=255)
        else:
            draw.polygon([(0, h - 1), (w - 1, h - 1), ((w - 1) / 2, 0)], fill=255)
        mask = np.asarray(canvas) > 0
        if shape == "triangle":
            mask = np.rot90(mask, k=int(rng.integers(4)))
    ys, xs = np.nonzero(mask)
    return mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]


def _sample_side(rng: np.random.Generator, size: int) -> int:
    hi = max(MIN_NON_SMALL_SIDE, int(size * MAX_SIDE_FRACTION))
    if rng.random() < P_SMALL or hi <= MIN_NON_SMALL_SIDE:
        return int(rng.integers(SMALL_SIDE[0], SMALL_SIDE[1] + 1))
    return int(round(math.exp(rng.uniform(math.log(MIN_NON_SMALL_SIDE), math.log(hi)))))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float RGB image: base colour + bilinear-upsampled coarse noise + distractor lines."""
    base = rng.uniform(40, 215, size=3)
    cells = max(2, size // 24)
    coarse = rng.normal(0.0, TEXTURE_AMPLITUDE / 2, size=(cells, cells, 3)) + base
    coarse_img = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8), "RGB")
    bg = coarse_img.resize((size, size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(bg)
    for _ in range(int(rng.integers(0, 4))):
        pts = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.line(pts, fill=colour, width=int(rng.integers(1, 3)))
    return np.asarray(bg, dtype=np.float32)


def _object_colour(rng: np.random.Generator, local_mean: np.ndarray) -> np.ndarray:
    """A random colour that stands out from the background under it (else invert the best try)."""
    colour = np.zeros(3)
    for _ in range(10):
        h, s, v = rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.25, 1.0)
        colour = np.array(colorsys.hsv_to_rgb(h, s, v)) * 255
        if np.linalg.norm(colour - local_mean) >= MIN_CONTRAST:
            return colour
    return 255.0 - local_mean


def _render_image(seed: int, index: int, size: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One image and its objects ``{category_id, bbox, area}``; deterministic in (seed, index)."""
    rng = np.random.default_rng([seed, index])
    img = _background(rng, size)
    boxes: list[tuple[int, int, int, int]] = []  # x0, y0, x1, y1 inclusive
    objects: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        cat = int(rng.integers(len(CATEGORIES)))
        mask = _shape_mask(rng, CATEGORIES[cat], min(_sample_side(rng, size), size))
        h, w = mask.shape
        for _ in range(PLACEMENT_TRIES):
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            x1, y1 = x0 + w - 1, y0 + h - 1
            # keep a 1-px gap so shapes never touch: every box stays fully visible and tight
            if all(x0 > bx1 + 1 or x1 < bx0 - 1 or y0 > by1 + 1 or y1 < by0 - 1 for bx0, by0, bx1, by1 in boxes):
                break
        else:
            continue  # no room left for this one; fewer objects is fine
        region = img[y0: y1 + 1, x0: x1 + 1]
        region[mask] = _object_colour(rng, region.reshape(-1, 3).mean(axis=0))
        boxes.append((x0, y0, x1, y1))
        objects.append({"category_id": cat + 1, "bbox": [x0, y0, w, h], "area": w * h})
    img += PIXEL_NOISE_STD * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objects


def make_synthetic_coco(
    out_dir: str | Path,
    *,
    images: int = 96,
    size: int = 128,
    seed: int = 0,
    val_fraction: float = 0.25,
) -> dict[str, Any]:
    """Write a deterministic COCO-format shapes dataset and return where it went.

    Args:
        out_dir: created if needed; gets ``images/000001.png``..., ``train.json``, ``val.json``.
            Existing files with the same names are overwritten, nothing else is touched.
        images: number of images (>= 2 when both splits are non-empty).
        size: square image side in px (>= 32). Large (>96 px) objects need ``size >= 176``.
        seed: same seed -> byte-identical files.
        val_fraction: share of images in ``val.json`` (rounded, at least 1 when > 0).

    Returns:
        ``{"train", "val", "images"}`` (absolute paths as str, ready for the sweep's ``data:``
        section), ``num_images``, ``num_train``, ``num_val``, ``num_annotations``, ``categories``.
    """
    check_args(images, size, min_size=32, val_fraction=val_fraction)
    out = Path(out_dir).resolve()
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)

    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES)]
    image_entries: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(images):
        image_id = index + 1
        pixels, objects = _render_image(seed, index, size)
        file_name = f"{image_id:06d}.png"
        save_png(pixels, img_dir / file_name)
        image_entries.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0, **obj})

    val_ids = {i + 1 for i in val_indices(images, val_fraction, seed)}  # image ids are 1-based
    num_val = len(val_ids)
    paths: dict[str, str] = {}
    for split, keep in (("train", lambda i: i not in val_ids), ("val", lambda i: i in val_ids)):
        split_images = [im for im in image_entries if keep(im["id"])]
        split_anns = [a for a in annotations if keep(a["image_id"])]
        coco = {
            "info": {"description": f"sweeper synthetic shapes (seed={seed}, size={size})", "version": "1"},
            "images": split_images,
            "annotations": split_anns,
            "categories": categories,
        }
        path = out / f"{split}.json"
        path.write_text(json.dumps(coco, separators=(",", ":")), encoding="utf-8")
        paths[split] = str(path)

    return {
        "train": paths["train"],
        "val": paths["val"],
        "images": str(img_dir),
        "num_images": images,
        "num_train": images - num_val,
        "num_val": num_val,
        "num_annotations": len(annotations),
        "categories": list(CATEGORIES),
    }
