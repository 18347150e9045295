"""Image files in the tasks: a cheap header check of every image before any trial starts, and the
one conversion to 8-bit RGB that training and evaluation use. PIL and numpy only (no torch), so
the driver can check a dataset before dispatch.

* :func:`check_image` reads the header only (PIL's ``Image.open`` is lazy: no pixel is decoded)
  and the file's last bytes: a 0-byte file, an unknown format, a size of 0, a side over
  :data:`MAX_SIDE` or more than :data:`MAX_PIXELS` pixels (refused before a decoder would try to
  allocate it), and a PNG or JPEG cut short (no ``IEND`` chunk / ``EOI`` marker at its end: a
  partial download or copy) are :class:`ImageError` naming the file. About 0.1-0.3 ms per small
  file (``bench/image_check.py``), so 10,000 images cost one to three seconds.
* :func:`to_rgb` converts any mode PIL opens to 8-bit RGB without losing the picture: 16-bit and
  32-bit grey (``I;16*``, ``I``, ``F``) are scaled from the image's own value range to 0..255
  (PIL's own ``convert`` clips them at 255, so a 16-bit scan becomes a white page); palette,
  grey+alpha, CMYK and 1-bit images go through PIL's conversions (alpha is dropped).

Usage::

    width, height = check_image(Path("data/images/a.png"))     # ImageError when unusable
    with Image.open(path) as im:
        rgb = to_rgb(im)
"""
from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

#: widest/highest image accepted (px): JPEG's own limit, and far beyond any detection input
MAX_SIDE = 65535
#: most pixels accepted (2**28 = 268 M px: 800 MB as 8-bit RGB, before any resize)
MAX_PIXELS = 2 ** 28
#: bytes read from the end of a file to find its end marker (JPEGs may carry a little padding)
_TAIL = 64
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk type and its CRC
_JPEG_EOI = b"\xff\xd9"


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and says why."""


def _cut_short(head: bytes, tail: bytes) -> bool:
    """Whether a PNG or JPEG lacks its end marker (other formats: not checked)."""
    if head.startswith(_PNG_MAGIC):
        return _PNG_END not in tail
    if head.startswith(b"\xff\xd8"):
        return _JPEG_EOI not in tail
    return False


def check_image(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image from its header, after the checks the module docstring
    lists; raises :class:`ImageError` (``FileNotFoundError`` when there is no such file). The
    file is opened once (the cost is mostly system calls: ~10,000 images a second)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise ImageError(f"{path}: cannot read image: file is empty (0 bytes)")
        head = fh.read(8)
        fh.seek(max(0, size - _TAIL))
        tail = fh.read()
        fh.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we refuse by our own limit
                with Image.open(fh) as im:
                    width, height = im.size
                    fmt = im.format
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{path}: image header claims an absurd size ({exc}); refused before decoding") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"{path}: cannot read image (header): {exc}") from None
    if width <= 0 or height <= 0:
        raise ImageError(f"{path}: cannot read image: its header gives a size of {width}x{height} px")
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise ImageError(f"{path}: image header claims an absurd size, {width}x{height} px (at most {MAX_SIDE} px "
                         f"a side and {MAX_PIXELS} pixels are accepted); refused before decoding")
    if fmt in ("PNG", "JPEG") and _cut_short(head, tail):
        marker = "IEND chunk" if fmt == "PNG" else "end-of-image marker"
        raise ImageError(f"{path}: cannot read image: file is truncated ({fmt} without its {marker}, "
                         f"{size} bytes): a partial copy or download?")
    return width, height


def check_size(im: Image.Image, path: str | os.PathLike[str]) -> None:
    """Refuse an opened (not yet decoded) image over the size limits, before it is decoded."""
    width, height = im.size
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise ImageError(f"{path}: image header claims an absurd size, {width}x{height} px (at most {MAX_SIDE} px a side and "
                         f"{MAX_PIXELS} pixels are accepted); refused before decoding")


def _scaled_to_8bit(im: Image.Image) -> Image.Image:
    """A single-channel image of more than 8 bits as 8-bit grey, its own value range to 0..255."""
    values = np.asarray(im)
    if values.dtype.kind not in "iuf":  # e.g. I;16B read as bytes by an old PIL
        values = np.asarray(im.convert("I"))
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if hi > lo:
        scaled = (np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo) - lo) * (255.0 / (hi - lo))
    else:  # a flat image: keep its level (relative to the 16-bit range when above 8 bits)
        level = lo / 257.0 if lo > 255 else lo
        scaled = np.full(values.shape, level)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb(im: Image.Image) -> Image.Image:
    """The image as 8-bit RGB (see the module docstring for each mode)."""
    if im.mode.startswith("I") or im.mode == "F":  # I;16, I;16B, I;16L, I;16N, I, F
        return _scaled_to_8bit(im).convert("RGB")
    if im.mode == "P":  # a palette with transparency goes through RGBA, as PIL asks
        return im.convert("RGBA").convert("RGB") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("LA", "La", "PA"):
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")
