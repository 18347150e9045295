"""Synthetic receipt photos for the DBNet task, in UFO JSON.

The demo sweep and the end-to-end tests need a text-detection set that is small, offline,
deterministic and learnable by DBNet in a few CPU epochs at ``resolution = size``. This module
draws receipt-like pages and writes them in the UFO layout the receipt competition uses, so the
loader, label generation, post-processing and CLEval/IoU metrics all run as on real data.

What an image looks like (and why):

* A portrait photo, ``size`` px high and ``0.75 * size`` wide (receipt photos are portrait, and a
  non-square image exercises the pad-and-map-back path): a darker textured "table" with a
  white/grey/cream paper page on it, rotated by up to +-6 degrees, partly outside the frame.
* The page holds a receipt layout: a large centred store name, info lines (phone, date, time,
  receipt no.), item lines (name left, quantity, price right-aligned), dashed separators, a
  total line and a barcode. Separators and barcode are unannotated distractors: the model must
  learn that stripes are not words.
* Font: PIL's built-in scalable font (``ImageFont.load_default(size=...)``), so no font files are
  needed and the pixels are the same on every machine with the same Pillow. Normal text is
  ``0.05..0.075 x size`` px (13..19 px at 256), whose cap-height boxes are >= 10 px tall.
* One quad per word, clockwise from the top-left corner, in image coordinates after the page
  rotation: horizontally the ink extent, vertically from the cap line (or the ink top, if
  higher) to the baseline (or the ink bottom, for descenders), plus a 1 px margin -- the way
  annotators box words, so every box of one line has the same height whatever its letters.
* Don't-care regions (``"###"``, ``illegibility: true``): 1-3 smudged words per image (blurred
  and faded inside their box) and, when it fits, a line of tiny fine print (~8 px at 256).
* Words whose box would leave the frame are not drawn at all, so no visible text is unlabelled.
* Photo effects: a lighting gradient, Gaussian blur (radius 0.2-0.9 px) and pixel noise.
* Each image has its own RNG stream ``[seed, index]``, so image *k* does not depend on
  ``images``; the split depends on ``seed`` alone. Same arguments -> byte-identical files.

Usage::

    from sweeper.tasks.dbnet.synth import make_synthetic_receipts

    info = make_synthetic_receipts("data/receipts", images=64, size=256, seed=0)
    info["train"], info["val"], info["images"]   # the sweep's data: section (format: ufo)
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from sweeper.tasks.synthetic import check_args, save_png, val_indices

ASPECT = 0.75  # width / height of every image
ANGLE_DEG = 6.0  # max page rotation
FONT_RANGE = (0.05, 0.075)  # normal text size, fraction of `size`
TITLE_FACTOR = (1.3, 1.6)
TINY_FRACTION = 0.032  # fine print (don't care), fraction of `size`
MIN_FONT_PX = 6
BOX_MARGIN = 1.0  # px around each word box
NOISE_STD = (3.0, 9.0)  # grey levels
BLUR_RADIUS = (0.2, 0.9)  # px
SMUDGED_PER_IMAGE = (1, 3)  # inclusive

STORES = ("MART", "CAFE", "BAKERY", "MARKET", "DELI", "GS25", "SUNNY", "CORNER", "FRESH", "DAILY", "CITY", "BLUE")
ITEMS = ("COFFEE", "LATTE", "BAGEL", "WATER", "MILK", "BREAD", "APPLE", "SALAD", "TEA", "CAKE", "RICE", "SODA",
         "JUICE", "SOUP", "PASTA", "EGGS", "CHEESE", "NOODLE", "COOKIE", "MUFFIN", "Bag", "Large", "Small", "Hot",
         "Iced", "Orange", "Green", "Tuna", "Kimchi", "Mocha", "Yogurt", "Chips", "Gum", "Beef", "Tofu", "Lemon")
LABELS = ("TEL", "DATE", "TIME", "No.", "POS", "CARD", "CASH", "VAT", "Table", "Staff")
TOTALS = ("TOTAL", "SUBTOTAL", "AMOUNT", "CHANGE", "PAID")
FINE_PRINT = ("thank", "you", "please", "come", "again", "receipt", "no", "refund", "without", "keep", "this")


@dataclass
class _Word:
    text: str
    font_px: int
    x: float  # draw origin (PIL's left/ascender anchor), page coordinates
    y: float
    box: tuple[float, float, float, float]  # left, top, right, bottom on the page (continuous px)
    kind: str = "text"  # text | tiny (don't care) | smudged (don't care, chosen later)


@functools.lru_cache(maxsize=64)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=px)


@functools.lru_cache(maxsize=64)
def _cap_span(px: int) -> tuple[int, int]:
    """(cap top, baseline) relative to the draw origin: the vertical extent of "H"."""
    bb = _font(px).getbbox("H")
    return int(bb[1]), int(bb[3])


@functools.lru_cache(maxsize=4096)
def _ink_span(text: str, px: int) -> tuple[int, int, int, int]:
    """Ink extent (left, top, right, bottom) relative to the draw origin, measured on a rendered
    mask: the font's bbox includes side bearings (1-3 px of blank), which would loosen the box."""
    bb = _font(px).getbbox(text)
    mask = Image.new("L", (int(bb[2]) + 4, int(bb[3]) + 4), 0)
    ImageDraw.Draw(mask).text((2, 2), text, font=_font(px), fill=255)
    cols = np.flatnonzero(np.asarray(mask).max(axis=0) >= 96)  # ignore the faintest anti-aliasing
    rows = np.flatnonzero(np.asarray(mask).max(axis=1) >= 96)
    if not len(cols):
        return int(bb[0]), int(bb[1]), int(bb[2]), int(bb[3])
    return int(cols[0]) - 2, int(rows[0]) - 2, int(cols[-1]) - 1, int(rows[-1]) - 1


def _word_box(text: str, px: int, x: float, y: float) -> tuple[float, float, float, float]:
    left, top, right, bottom = _ink_span(text, px)
    cap_top, baseline = _cap_span(px)
    return (x + left - BOX_MARGIN, y + min(top, cap_top) - BOX_MARGIN,
            x + right + BOX_MARGIN, y + max(bottom, baseline) + BOX_MARGIN)


def _price(rng: np.random.Generator) -> str:
    if rng.random() < 0.6:  # Korean-style 12,500
        return f"{int(rng.integers(1, 60))},{int(rng.integers(0, 10))}00"
    return f"{int(rng.integers(1, 100))}.{int(rng.integers(0, 100)):02d}"


def _info(rng: np.random.Generator) -> list[str]:
    label = str(rng.choice(LABELS))
    value = {
        "TEL": lambda: f"0{int(rng.integers(2, 70))}-{int(rng.integers(100, 999))}-{int(rng.integers(1000, 9999))}",
        "DATE": lambda: f"2024-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}",
        "TIME": lambda: f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}",
    }.get(label, lambda: f"#{int(rng.integers(0, 100000)):05d}")()
    return [label, value]


def _layout(rng: np.random.Generator, pw: int, ph: int, size: int) -> tuple[list[_Word], list[tuple]]:
    """Words and distractor marks (separators, barcode) on a pw x ph page."""
    base = max(MIN_FONT_PX, int(round(size * rng.uniform(*FONT_RANGE))))
    mx, y = 0.06 * pw, 0.04 * ph
    words: list[_Word] = []
    marks: list[tuple] = []

    def line(tokens: list[str], px: int, align: str = "split") -> None:
        nonlocal y
        if align == "center":  # a title shrinks (down to the base size) rather than lose words
            while px > base and _font(px).getlength(" ".join(tokens)) > pw - 2 * mx:
                px -= 1
        font, space = _font(px), _font(px).getlength(" ")
        widths = [font.getlength(t) for t in tokens]
        while tokens and sum(widths) + space * (len(tokens) - 1) > pw - 2 * mx:
            # too wide: drop the word before the last one (a line keeps its right-aligned price)
            k = len(tokens) - (2 if align == "split" and len(tokens) > 1 else 1)
            tokens, widths = tokens[:k] + tokens[k + 1:], widths[:k] + widths[k + 1:]
        if y + px * 1.25 > ph - 0.03 * ph:
            y = ph  # page full
            return
        if not tokens:  # not even one word fits across the page
            return
        if align == "center":
            xs = [(pw - sum(widths) - space * (len(tokens) - 1)) / 2]
        else:  # the last token (price) right-aligned, the rest from the left margin
            xs = [mx]
        for i, (t, w) in enumerate(zip(tokens, widths)):
            x = pw - mx - w if align == "split" and i == len(tokens) - 1 and i > 0 else xs[-1]
            words.append(_Word(t, px, x, y, _word_box(t, px, x, y)))
            xs.append(x + w + space)
        y += px * rng.uniform(1.2, 1.6)

    def separator() -> None:
        nonlocal y
        yy = y + base * 0.4
        marks.append(("dash", mx, yy, pw - mx, float(rng.uniform(2, 6))))
        y += base * 0.9

    title = [str(rng.choice(STORES))] + ([str(rng.choice(STORES))] if rng.random() < 0.5 else [])
    line(title, int(round(base * rng.uniform(*TITLE_FACTOR))), "center")
    for _ in range(int(rng.integers(1, 4))):
        line(_info(rng), base, "left")
    separator()
    while y < ph * rng.uniform(0.62, 0.8):
        name = [str(rng.choice(ITEMS)) for _ in range(int(rng.integers(1, 3)))]
        qty = [str(int(rng.integers(1, 5)))] if rng.random() < 0.4 else []
        line(name + qty + [_price(rng)], base)
        if rng.random() < 0.12:
            separator()
    separator()
    line([str(rng.choice(TOTALS)), _price(rng)], int(round(base * rng.uniform(1.0, 1.25))))
    if rng.random() < 0.7:
        tiny = max(MIN_FONT_PX, int(round(size * TINY_FRACTION)))
        before = len(words)
        line([str(t) for t in rng.choice(FINE_PRINT, size=int(rng.integers(2, 5)))], tiny, "center")
        for w in words[before:]:
            w.kind = "tiny"
    if y + base * 2 < ph:
        marks.append(("barcode", pw * 0.2, y + base * 0.3, pw * 0.8, y + base * 1.7))
    return words, marks


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A darker, low-frequency textured surface (table, floor) the page lies on."""
    base = rng.uniform(35, 120) + rng.uniform(-15, 15, size=3)
    cells = (max(2, h // 32), max(2, w // 32))
    coarse = rng.normal(0.0, 14.0, size=(*cells, 3)) + base
    img = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8), "RGB").resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _render_image(seed: int, index: int, size: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One receipt photo (uint8 HxWx3) and its words ``{points, transcription, illegibility}``."""
    rng = np.random.default_rng([seed, index])
    H, W = size, int(round(size * ASPECT))
    pw, ph = int(W * rng.uniform(0.62, 0.92)), int(H * rng.uniform(0.85, 1.25))
    words, marks = _layout(rng, pw, ph, size)

    # page -> image: rotate about the page centre, move it to (cx, cy); continuous coordinates
    theta = math.radians(rng.uniform(-ANGLE_DEG, ANGLE_DEG))
    c, s = math.cos(theta), math.sin(theta)
    cx, cy = W / 2 + rng.uniform(-0.08, 0.08) * W, H / 2 + rng.uniform(-0.1, 0.1) * H
    px0, py0 = pw / 2, ph / 2

    def to_image(x: float, y: float) -> tuple[float, float]:
        dx, dy = x - px0, y - py0
        return c * dx - s * dy + cx, s * dx + c * dy + cy

    kept: list[tuple[_Word, list[tuple[float, float]]]] = []
    for word in words:
        l, t, r, b = word.box
        quad = [to_image(x, y) for x, y in ((l, t), (r, t), (r, b), (l, b))]
        if all(0.5 <= x <= W - 0.5 and 0.5 <= y <= H - 0.5 for x, y in quad):
            kept.append((word, quad))  # partly outside the frame -> not drawn, so nothing unlabelled
    normal = [i for i, (w, _) in enumerate(kept) if w.kind == "text" and len(w.text) >= 3]
    # at least one don't-care per image, but most words stay readable
    n_smudge = min(max(1, len(normal) // 4), int(rng.integers(SMUDGED_PER_IMAGE[0], SMUDGED_PER_IMAGE[1] + 1)))
    n_smudge = min(n_smudge, len(normal))
    for i in rng.choice(normal, size=n_smudge, replace=False) if n_smudge else []:
        kept[int(i)][0].kind = "smudged"

    paper = np.clip(rng.uniform(212, 250) + rng.uniform(-8, 8, size=3), 0, 255)
    page = Image.new("RGBA", (pw, ph), (*(int(v) for v in paper), 255))
    draw = ImageDraw.Draw(page)
    ink = np.clip(rng.uniform(15, 70) + rng.uniform(-12, 12, size=3), 0, 255)
    for kind, *args in marks:
        if kind == "dash":
            x0, yy, x1, dash = args
            for xa in np.arange(x0, x1, 2 * dash):
                draw.line([(xa, yy), (min(xa + dash, x1), yy)], fill=(*(int(v) for v in ink), 255), width=1)
        else:  # barcode: random bars
            x0, y0, x1, y1 = args
            xa = x0
            while xa < x1:
                bar = float(rng.uniform(0.8, 3.0))
                draw.rectangle([xa, y0, min(xa + bar, x1), y1], fill=(*(int(v) for v in ink), 255))
                xa += bar + float(rng.uniform(0.8, 3.0))
    for word, _ in kept:
        colour = np.clip(ink + rng.uniform(-10, 10), 0, 255)
        draw.text((word.x, word.y), word.text, font=_font(word.font_px), fill=(*(int(v) for v in colour), 255))
    for word, _ in kept:
        if word.kind == "smudged":  # faded, smeared print: blurred and washed out inside its own box
            l, t, r, b = (int(math.floor(word.box[0])), int(math.floor(word.box[1])),
                          int(math.ceil(word.box[2])), int(math.ceil(word.box[3])))
            crop = page.crop((l, t, r, b)).filter(ImageFilter.GaussianBlur(max(1.5, 0.2 * word.font_px)))
            page.paste(Image.blend(crop, Image.new("RGBA", crop.size, (*(int(v) for v in paper), 255)), 0.45), (l, t))

    # inverse map (image -> page) for PIL's AFFINE transform
    data = (c, s, -c * cx - s * cy + px0, -s, c, s * cx - c * cy + py0)
    warped = page.transform((W, H), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)
    rgba = np.asarray(warped, dtype=np.float32)
    alpha = rgba[..., 3:] / 255.0
    img = _background(rng, W, H) * (1 - alpha) + rgba[..., :3] * alpha
    ramp = np.linspace(-1, 1, W, dtype=np.float32)[None, :] * rng.uniform(-1, 1) + \
        np.linspace(-1, 1, H, dtype=np.float32)[:, None] * rng.uniform(-1, 1)
    img *= (1.0 + 0.08 * ramp)[..., None]  # uneven lighting
    blurred = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB").filter(
        ImageFilter.GaussianBlur(float(rng.uniform(*BLUR_RADIUS))))
    img = np.asarray(blurred, dtype=np.float32)
    img += float(rng.uniform(*NOISE_STD)) * rng.standard_normal(img.shape, dtype=np.float32)

    out = []
    for word, quad in kept:
        dc = word.kind != "text"
        out.append({"points": [[round(x, 2), round(y, 2)] for x, y in quad],
                    "transcription": "###" if dc else word.text, "illegibility": dc})
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), out


def make_synthetic_receipts(
    out_dir: str | Path,
    *,
    images: int = 64,
    size: int = 256,
    seed: int = 0,
    val_fraction: float = 0.25,
) -> dict[str, Any]:
    """Write a deterministic UFO-format receipt dataset and return where it went.

    Args:
        out_dir: created if needed; gets ``images/000001.png``..., ``train.json``, ``val.json``.
            Existing files with the same names are overwritten, nothing else is touched.
        images: number of images (>= 2 when both splits are non-empty).
        size: image height in px (the longest side; width is ``0.75 * size``); >= 64.
            Train DBNet at ``resolution = size`` for the word heights described above.
        seed: same seed -> byte-identical files.
        val_fraction: share of images in ``val.json`` (rounded, at least 1 when > 0).

    Returns:
        ``{"train", "val", "images"}`` (absolute paths as str, ready for the sweep's ``data:``
        section with ``format: ufo``), ``num_images``, ``num_train``, ``num_val``, ``num_words``,
        ``num_dont_care``.
    """
    check_args(images, size, min_size=64, val_fraction=val_fraction)
    out = Path(out_dir).resolve()
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)

    entries: dict[str, dict[str, Any]] = {}
    num_words = num_dc = 0
    for index in range(images):
        pixels, words = _render_image(seed, index, size)
        name = f"{index + 1:06d}.png"
        save_png(pixels, img_dir / name)
        entries[name] = {"img_h": pixels.shape[0], "img_w": pixels.shape[1],
                         "words": {f"{i + 1:04d}": w for i, w in enumerate(words)}}
        num_words += len(words)
        num_dc += sum(w["illegibility"] for w in words)

    val_idx = val_indices(images, val_fraction, seed)
    num_val = len(val_idx)
    paths: dict[str, str] = {}
    for split, in_split in (("train", lambda i: i not in val_idx), ("val", lambda i: i in val_idx)):
        ufo = {"images": {n: e for i, (n, e) in enumerate(entries.items()) if in_split(i)}}
        path = out / f"{split}.json"
        path.write_text(json.dumps(ufo, separators=(",", ":"), ensure_ascii=False), encoding="utf-8")
        paths[split] = str(path)
    return {
        "train": paths["train"],
        "val": paths["val"],
        "images": str(img_dir),
        "num_images": images,
        "num_train": images - num_val,
        "num_val": num_val,
        "num_words": num_words,
        "num_dont_care": num_dc,
    }
