"""What the synthetic-data generators share: argument checks, the train/val split and PNG writing.

numpy + PIL only (no torch), so `sweeper data synth` and `make demo`'s first launch stay light::

    check_args(images, size, min_size=32, val_fraction=0.25)
    val = val_indices(images, 0.25, seed)          # 0-based image indices in val.json
    save_png(pixels, out / "images" / "000001.png")
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def check_args(images: int, size: int, *, min_size: int, val_fraction: float) -> None:
    """Reject arguments no generator can honour, before any file is written."""
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    if size < min_size:
        raise ValueError(f"size must be >= {min_size} px, got {size}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")


def val_indices(images: int, val_fraction: float, seed: int) -> set[int]:
    """0-based indices of the validation images: a seeded permutation's first share, at least one
    image when `val_fraction` > 0 and never all of them."""
    num_val = 0 if val_fraction == 0 else min(images - 1, max(1, round(images * val_fraction)))
    return {int(i) for i in np.random.default_rng(seed).permutation(images)[:num_val]}


def save_png(pixels: np.ndarray, path: Path) -> None:
    # fixed (fast) level: noisy pixels barely compress, and bytes must not follow a PIL default
    Image.fromarray(pixels, "RGB").save(path, format="PNG", compress_level=1)
