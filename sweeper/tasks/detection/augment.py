"""Training-time augmentation for detection: mosaic, scale jitter, flips, colour jitter.

Contract
--------
* Settings are the trial config's ``augment`` section (keys and defaults from
  :class:`sweeper.tasks.detection.spec.DetectionAugment`; every default leaves the image alone), read once by
  :func:`parse_augment`. ``train.hflip`` stays in ``train`` and is passed separately.
* Randomness comes only from :func:`item_rng` ``(seed, epoch, idx)``: an item is the same whether
  epoch ``e`` runs straight through or after a checkpoint restore, and whatever the number of
  DataLoader workers. Nothing here touches torch's, numpy's or Python's global RNG.
* Images are ``[3, h, w]`` tensors (unpadded content, or a full canvas): any dtype for the
  geometric functions, ``float32`` in ``[0, 1]`` for :func:`color_jitter`; boxes are
  ``float32 [N, 4]`` xyxy in the same pixels; ``sizes`` is ``float32 [N]``, per box the sqrt of
  its area in ORIGINAL image pixels. Resizing never changes ``sizes`` (so size buckets do not move
  with the training resolution); clipping a box to a window multiplies it by
  ``sqrt(visible area / full area)``, i.e. the visible part's area in original pixels.
* A clipped box (mosaic quadrant, scale-jitter crop) is dropped when its shorter side is below
  ``mosaic_min_size`` px (at the training resolution) or it keeps less than
  ``mosaic_min_visibility`` of its area; see :func:`clip_boxes`. Labels follow their boxes.
* :func:`mosaic` puts 4 tiles (each resized like a plain item: longest side = resolution, times
  its scale jitter) on an ``R x R`` canvas, YOLO-style: tile ``q`` has a corner on the centre
  ``(cx, cy)`` and is cut to its quadrant, so objects keep the scale they have in plain items
  (what matters for small objects). Empty canvas is 0, like the padding of plain items.
* :func:`mosaic_active` and :func:`resolution_at` are the per-epoch switches
  (``augment.mosaic_until``, ``train.resolution_schedule``); epochs are 1-based.

Usage::

    params = parse_augment(config.get("augment"))
    rng = item_rng(seed, epoch, idx)
    image, boxes = hflip(image, boxes)
    image = color_jitter(image, params, rng)
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torchvision.transforms.v2 import functional as F

from sweeper.tasks.detection.spec import DetectionAugment

#: one mosaic tile or plain item: image [3, h, w], boxes [N, 4], labels [N], sizes [N]
Tile = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class AugmentError(ValueError):
    """An ``augment`` setting is unknown or out of range."""


def parse_augment(augment: Mapping[str, Any] | None) -> DetectionAugment:
    """Validate the ``augment`` section once (missing keys take the schema's defaults: off), so a
    dataset built without the sweep-file loader gets the same checks and the same defaults."""
    try:
        return DetectionAugment.model_validate(dict(augment or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise AugmentError(f"augment.{where}: {err['msg']} (got {err.get('input')!r})") from None


def item_rng(seed: int, epoch: int, idx: int) -> np.random.Generator:
    """The one RNG of item ``idx`` in ``epoch``: a pure function of the three numbers."""
    return np.random.default_rng([int(v) % 2**63 for v in (seed, epoch, idx)])


def _fraction(epoch: int, epochs: int) -> float:
    if epochs <= 0 or epoch <= 0:
        raise ValueError(f"epoch {epoch} of {epochs}: both must be positive (epochs are 1-based)")
    return (epoch - 1) / epochs


def mosaic_active(epoch: int, epochs: int, mosaic_until: float) -> bool:
    """Whether mosaic is on in ``epoch`` (1-based): while ``(epoch - 1) / epochs < mosaic_until``,
    so 10 epochs with 0.8 give mosaic in epochs 1..8 and clean images in 9..10 (the model ends on
    the image statistics it is evaluated on); 0 never, 1 always."""
    return _fraction(epoch, epochs) < mosaic_until


def resolution_at(epoch: int, epochs: int, resolution: int,
                  schedule: Sequence[Sequence[float]] | None) -> int:
    """Training resolution of ``epoch`` (1-based): the last ``[fraction, res]`` entry of
    ``schedule`` with ``(epoch - 1) / epochs >= fraction``, else ``resolution``."""
    frac = _fraction(epoch, epochs)
    res = int(resolution)
    for start, r in sorted((float(f), int(r)) for f, r in (schedule or ())):
        if frac >= start:
            res = r
    return res


def scale_factor(params: DetectionAugment, rng: np.random.Generator) -> float:
    """Scale-jitter factor in ``[1 - j, 1 + j]`` (1.0 and no RNG draw when jitter is off)."""
    j = params.scale_jitter
    return float(rng.uniform(1.0 - j, 1.0 + j)) if j > 0 else 1.0


def clip_boxes(
    boxes: torch.Tensor, window: Sequence[float], min_size: float, min_visibility: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clip xyxy ``boxes`` to ``window`` ``(x0, y0, x1, y1)``.

    Returns ``(clipped, keep, visibility)``: ``visibility`` is clipped area / full area; ``keep``
    is False for fragments with nothing left, a shorter side below ``min_size`` or a visibility
    below ``min_visibility`` (slivers of an object are not that object any more).
    """
    x0, y0, x1, y1 = (float(v) for v in window)
    out = boxes.clone()
    out[:, 0::2] = out[:, 0::2].clamp(x0, x1)
    out[:, 1::2] = out[:, 1::2].clamp(y0, y1)
    w, h = out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]
    full = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp_min(1e-12)
    vis = (w * h) / full
    keep = (w > 0) & (h > 0) & (torch.minimum(w, h) >= min_size) & (vis >= min_visibility)
    return out, keep, vis


def crop(tile: Tile, window: Sequence[int], min_size: float, min_visibility: float) -> Tile:
    """Cut ``tile`` to the integer ``window`` ``(x0, y0, x1, y1)``; boxes follow and are clipped
    (and dropped) by :func:`clip_boxes`; ``sizes`` shrink to the visible part."""
    image, boxes, labels, sizes = tile
    x0, y0, x1, y1 = (int(v) for v in window)
    out, keep, vis = clip_boxes(boxes, (x0, y0, x1, y1), min_size, min_visibility)
    out = out[keep] - torch.tensor([x0, y0, x0, y0], dtype=out.dtype)
    return image[:, y0:y1, x0:x1], out, labels[keep], sizes[keep] * vis[keep].sqrt()


def random_crop(tile: Tile, resolution: int, rng: np.random.Generator,
                min_size: float, min_visibility: float) -> Tile:
    """Cut a ``resolution``-sized window at a random place out of a tile that grew beyond it
    (scale jitter above 1); a tile that fits is returned as is, with no RNG draw."""
    _, h, w = tile[0].shape
    if w <= resolution and h <= resolution:
        return tile
    x0 = int(rng.integers(0, max(0, w - resolution) + 1))
    y0 = int(rng.integers(0, max(0, h - resolution) + 1))
    return crop(tile, (x0, y0, min(w, x0 + resolution), min(h, y0 + resolution)), min_size, min_visibility)


def hflip(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror left-right: ``x -> width - x`` (exact, boxes stay xyxy)."""
    w = image.shape[-1]
    return image.flip(-1), torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)


def vflip(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror top-bottom: ``y -> height - y``."""
    h = image.shape[-2]
    return image.flip(-2), torch.stack([boxes[:, 0], h - boxes[:, 3], boxes[:, 2], h - boxes[:, 1]], dim=1)


def color_jitter(image: torch.Tensor, params: DetectionAugment, rng: np.random.Generator) -> torch.Tensor:
    """Brightness/contrast/saturation factors in ``[1-v, 1+v]`` and a hue shift in ``[-h, h]``,
    in a random order as torchvision's ColorJitter does, with torchvision's own functional ops
    but our per-item RNG. Knobs at 0 draw nothing and cost nothing."""
    ops = []
    for name, op in (("brightness", F.adjust_brightness), ("contrast", F.adjust_contrast),
                     ("saturation", F.adjust_saturation)):
        v = getattr(params, name)
        if v > 0:
            ops.append((op, float(rng.uniform(max(0.0, 1.0 - v), 1.0 + v))))
    if params.hue > 0:
        ops.append((F.adjust_hue, float(rng.uniform(-params.hue, params.hue))))
    for i in rng.permutation(len(ops)) if len(ops) > 1 else range(len(ops)):
        op, value = ops[i]
        image = op(image, value)
    return image.clamp_(0.0, 1.0)


def mosaic_centre(resolution: int, rng: np.random.Generator) -> tuple[int, int]:
    """Random centre in ``[R/4, 3R/4]^2``, drawn as fractions of R so the RNG stream does not
    depend on the resolution (a resolution schedule changes only the pixels, not the draw)."""
    fx, fy = rng.uniform(0.25, 0.75, size=2)
    return int(round(fx * resolution)), int(round(fy * resolution))


def mosaic(tiles: Sequence[Tile], centre: tuple[int, int], resolution: int,
           min_size: float, min_visibility: float) -> Tile:
    """Put 4 tiles (top-left, top-right, bottom-left, bottom-right) on an ``R x R`` canvas.

    Tile ``q`` touches the centre ``(cx, cy)`` with its inner corner (top-left tile: its
    bottom-right corner) and is cut to its quadrant; boxes are shifted, clipped to the quadrant
    and dropped by :func:`clip_boxes`. Returns the canvas and the concatenated targets.
    """
    if len(tiles) != 4:
        raise ValueError(f"mosaic needs 4 tiles, got {len(tiles)}")
    R = int(resolution)
    cx, cy = (int(v) for v in centre)
    if not (0 <= cx <= R and 0 <= cy <= R):
        raise ValueError(f"mosaic centre {centre} outside the {R} x {R} canvas")
    canvas = torch.zeros(3, R, R, dtype=tiles[0][0].dtype)
    out_boxes, out_labels, out_sizes = [], [], []
    for q, (image, boxes, labels, sizes) in enumerate(tiles):
        _, h, w = image.shape
        right, bottom = q % 2 == 1, q >= 2
        ox, oy = (cx if right else cx - w), (cy if bottom else cy - h)
        window = ((cx, R) if right else (0, cx)), ((cy, R) if bottom else (0, cy))
        (wx0, wx1), (wy0, wy1) = window
        x0, x1, y0, y1 = max(wx0, ox), min(wx1, ox + w), max(wy0, oy), min(wy1, oy + h)
        if x1 > x0 and y1 > y0:
            canvas[:, y0:y1, x0:x1] = image[:, y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        shifted = boxes + torch.tensor([ox, oy, ox, oy], dtype=boxes.dtype)
        clipped, keep, vis = clip_boxes(shifted, (wx0, wy0, wx1, wy1), min_size, min_visibility)
        out_boxes.append(clipped[keep])
        out_labels.append(labels[keep])
        out_sizes.append(sizes[keep] * vis[keep].sqrt())
    return (canvas, torch.cat(out_boxes).reshape(-1, 4), torch.cat(out_labels),
            torch.cat(out_sizes).to(torch.float32))


def box_sizes_original(boxes: torch.Tensor) -> torch.Tensor:
    """``sqrt(w * h)`` of xyxy boxes given in original image pixels (float32)."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp_min(0)
    return (wh[:, 0] * wh[:, 1]).sqrt().to(torch.float32)

