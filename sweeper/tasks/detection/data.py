"""COCO-JSON detection data for the detection task: loading, checking, resizing, batching.

Contract
--------
* Input: an images directory plus a COCO annotation JSON (``images``, ``annotations``,
  ``categories``). ``file_name`` is relative to the images directory.
* Labels: category ids are mapped to contiguous labels ``1..K`` in sorted category-id order
  (0 is background, as torchvision's detectors expect); :attr:`CocoDetection.label_to_cat_id`
  and :attr:`CocoDetection.label_names` map them back for COCO results and per-class metrics.
* Training targets leave out ``iscrowd: 1`` and ``ignore: 1`` annotations (COCO scores crowds
  as "ignore" regions, so they must not become positives). Images without annotations stay in
  the set with empty targets: they are the negatives. Boxes with zero or negative size are
  dropped, counted and reported with one warning per dataset. Boxes reaching more than
  :data:`OUTSIDE_TOLERANCE` px outside their image (``width``/``height`` of its ``images`` record,
  when given) are counted and reported with one warning per dataset. Every box is clipped to its
  image when an item is made (and dropped if nothing is left), whether reported or not.
* Transform: resize so the longest side equals ``resolution`` (aspect kept), then zero-pad
  bottom/right to ``resolution x resolution``. The detector therefore never resizes again, and
  :func:`to_original_coords` maps predictions back exactly: divide by ``scale``, clip to the
  original image. :meth:`CocoDetection.set_resolution` changes ``resolution`` (a
  ``train.resolution_schedule``, an evaluation resolution).
* Augmentation (``train=True`` only; see :mod:`.augment`): with probability
  ``augment.mosaic_ratio`` an item is a mosaic of itself and 3 other images of the split, while
  :meth:`CocoDetection.set_epoch` says mosaic is on (``augment.mosaic_until``); otherwise the
  resize scale is jittered (``augment.scale_jitter``; a result larger than R is cropped at a random
  place). Then horizontal (``hflip``) and vertical (``augment.vflip``) flips, on the content before
  padding so the padding stays bottom/right, and colour jitter. All draws come from one RNG per
  ``(seed, epoch, idx)``, so an epoch is the same after a checkpoint restore and for any number of
  workers (set the epoch in the main process before iterating; workers are not persistent).
* Every item is ``(image, target)``: image ``float32 [3, R, R]`` in ``[0, 1]``; target has
  ``boxes`` (``float32 [N, 4]`` xyxy, resized coordinates), ``labels`` (``int64 [N]``),
  ``sizes`` (``float32 [N]``: sqrt of each box's area in ORIGINAL image pixels, of the visible part
  for a clipped box, so size buckets do not move with the resolution), ``image_id`` (int, the
  COCO id), ``scale`` (float) and ``orig_size`` (``(height, width)``). ``scale`` and
  ``orig_size`` map back exactly only for unaugmented items (evaluation); a mosaic item has the
  ``image_id`` of item ``idx``, ``scale`` 1.0 and ``orig_size`` ``(R, R)``, a scale-jittered item
  the jittered scale.
* Bad input raises :class:`DatasetError` (the one COCO error type, :class:`.coco_io.CocoFormatError`)
  naming the file and the field (and the image or annotation id). The file passes the same checks
  as for evaluation (:func:`.coco_io.validate_coco_gt`): a missing or unreadable annotation file,
  JSON syntax errors, missing keys, duplicate image ids or category names, unknown image or
  category ids, malformed boxes or areas; and here: a split without images or categories,
  a ``file_name`` that leaves the images directory (``../x.png``, absolute paths), a training
  split without a single box, missing image files (checked at load) and image files that fail to
  decode or claim an absurd size (when opened). The driver runs the same checks, and every image's
  header, before dispatch (:func:`.coco_io.check_coco_split`).
* Images of any mode are read as 8-bit RGB by :func:`sweeper.tasks.images.to_rgb`: 16-bit grey
  is scaled from its own range (PIL's ``convert`` would clip it to white).

Usage::

    ds = CocoDetection("data/train.json", "data/images", resolution=512, hflip=0.5, train=True,
                       augment={"mosaic_ratio": 0.5, "mosaic_until": 0.8}, seed=0)
    loader = make_loader(ds, batch_size=4, shuffle=True, seed=0)
    for epoch in range(1, epochs + 1):
        ds.set_epoch(epoch, epochs)                # mosaic on/off, per-item RNG
        ds.set_resolution(resolution_at(epoch, epochs, 512, [[0.8, 640]]))
        set_loader_epoch(loader, seed=0, epoch=epoch)     # same order for the same (seed, epoch)
    for images, targets in loader: ...
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import pil_to_tensor

from sweeper.tasks.detection.augment import (
    Tile,
    box_sizes_original,
    color_jitter,
    hflip,
    item_rng,
    mosaic,
    mosaic_active,
    mosaic_centre,
    parse_augment,
    random_crop,
    resolution_at,
    scale_factor,
    vflip,
)
from sweeper.tasks.detection.coco_io import (TRAIN_REQUIRED, CocoFormatError, check_file_name, read_json,
                                             record_name, validate_coco_gt)
from sweeper.tasks.folds import FoldError, held_out_for
from sweeper.tasks.images import ImageError, check_size, to_rgb

__all__ = ["CocoDetection", "CocoFormatError", "DatasetError", "coco_fold", "collate_fn", "make_loader",
           "mosaic_active", "resolution_at", "set_loader_epoch", "to_original_coords"]


#: px a box may reach outside its image's width/height before it is reported (rounding noise)
OUTSIDE_TOLERANCE = 1.0


#: the name the training code has always raised: the one COCO error type, whatever went wrong
DatasetError = CocoFormatError
#: what training reads of each record (``area`` and the annotation ``id`` are optional here)
_TRAIN_REQUIRED = TRAIN_REQUIRED
_check_file_name = check_file_name


def _overhangs(box: list[float], img: dict[str, Any]) -> bool:
    """Whether an xyxy box reaches more than OUTSIDE_TOLERANCE px outside its image (False when
    the record has no usable size)."""
    w, h = img.get("width"), img.get("height")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (w, h)):
        return False
    tol = OUTSIDE_TOLERANCE
    return box[0] < -tol or box[1] < -tol or box[2] > w + tol or box[3] > h + tol


class CocoDetection(Dataset):
    """A COCO detection split, resized/padded to a square ``resolution`` (see module docstring).

    ``categories`` (a list of ``{"id", "name"}``) forces a label mapping, so the validation split
    uses the same labels as training; it is an error if this file's categories differ.
    ``max_images`` keeps only the first N images in file order (quick trials). ``augment`` is the
    trial config's ``augment`` section (missing keys: off); it and ``hflip`` apply only when
    ``train``. ``seed`` seeds the per-item augmentation RNG together with the epoch and index.
    ``gt`` is ``ann_file`` already parsed (e.g. by :func:`.coco_io.load_coco_gt`), so a trial
    parses its validation file once for the dataset and the evaluator; it is not modified, and
    ``ann_file`` still names it in messages.
    """

    def __init__(
        self,
        ann_file: str | Path,
        images_dir: str | Path,
        *,
        resolution: int,
        hflip: float = 0.0,
        train: bool = False,
        max_images: int | None = None,
        augment: Mapping[str, Any] | None = None,
        seed: int = 0,
        gt: Mapping[str, Any] | None = None,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.images_dir = Path(images_dir)
        if not isinstance(resolution, int) or resolution <= 0:
            raise DatasetError(f"train.resolution must be a positive int, got {resolution!r}")
        if not 0.0 <= float(hflip) <= 1.0:
            raise DatasetError(f"train.hflip must be a probability in [0, 1], got {hflip!r}")
        self.resolution = resolution
        self.hflip = float(hflip) if train else 0.0
        self.train = train
        self.augment = parse_augment(augment)
        self.seed = int(seed)
        self.epoch = 0  # until set_epoch: its own RNG stream, mosaic on as in epoch 1
        self.mosaic_on = self.augment.mosaic_until > 0
        path = self.ann_file
        data = read_json(path, "annotation") if gt is None else gt
        validate_coco_gt(data, str(path), required=_TRAIN_REQUIRED, name_ids=True)

        cats = {cat["id"]: str(cat["name"]) for cat in data["categories"]}
        if not cats:
            raise DatasetError(f"{path}: 'categories' is empty; at least one category is needed")
        #: label (1..K) -> COCO category id / name; index 0 is background.
        self.label_to_cat_id: list[int | None] = [None, *sorted(cats)]
        self.label_names: list[str] = ["__background__", *(cats[c] for c in sorted(cats))]
        self.cat_id_to_label = {cid: i for i, cid in enumerate(self.label_to_cat_id) if i > 0}
        self.categories = [{"id": c, "name": cats[c]} for c in sorted(cats)]

        self.images: list[dict[str, Any]] = []
        for i, img in enumerate(data["images"]):
            _check_file_name(path, record_name("images", i, img), str(img["file_name"]))
            self.images.append({"id": img["id"], "file_name": str(img["file_name"]), "boxes": [], "labels": []})
        if not self.images:
            raise DatasetError(f"{path}: 'images' is empty; a split needs at least one image")
        index = {img["id"]: i for i, img in enumerate(self.images)}
        sizes = [{"width": img.get("width"), "height": img.get("height")} for img in data["images"]]

        self.num_dropped = 0
        #: boxes reaching outside their image's width/height (reported; clipped when an item is made)
        self.num_outside = 0
        dropped: list[str] = []
        outside: list[str] = []
        for i, ann in enumerate(data["annotations"]):
            if ann.get("iscrowd", 0) or ann.get("ignore", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w <= 0 or h <= 0:
                self.num_dropped += 1
                dropped.append(record_name("annotations", i, ann))
                continue
            j = index[ann["image_id"]]
            rec = self.images[j]
            rec["boxes"].append([x, y, x + w, y + h])
            rec["labels"].append(self.cat_id_to_label[ann["category_id"]])
            if _overhangs(rec["boxes"][-1], sizes[j]):
                self.num_outside += 1
                outside.append(record_name("annotations", i, ann))
        if self.num_dropped:
            warnings.warn(
                f"{path}: dropped {self.num_dropped} annotation(s) with zero or negative box size "
                f"(e.g. {', '.join(dropped[:3])})",
                stacklevel=2,
            )
        if self.num_outside:
            warnings.warn(
                f"{path}: {self.num_outside} box(es) reach outside their image's width/height; they are "
                f"clipped to the image (dropped if nothing is left) (e.g. {', '.join(outside[:3])})",
                stacklevel=2,
            )

        if train and not any(rec["boxes"] for rec in self.images):
            raise DatasetError(f"{path}: no annotation gives a box to train on (crowds and zero-size boxes aside) "
                               f"in its {len(self.images)} image(s): a detector would learn no object")
        if max_images is not None:
            if max_images <= 0:
                raise DatasetError(f"train.max_train_images must be a positive int, got {max_images!r}")
            self.images = self.images[:max_images]
        for img in self.images:
            file = self.images_dir / img["file_name"]
            if not file.is_file():
                raise DatasetError(f"{file}: image file not found (file_name of image id {img['id']} in {path})")
        self._warned_outside = False

    def check_categories(self, other: CocoDetection) -> None:
        """Raise if ``other`` maps categories differently (e.g. val vs train JSON)."""
        if self.categories != other.categories:
            raise DatasetError(
                f"{other.ann_file}: categories {other.categories} differ from those in "
                f"{self.ann_file} ({self.categories}); both splits need the same categories"
            )

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Enter ``epoch`` (1-based) of ``epochs``: switches mosaic per ``augment.mosaic_until`` and
        moves the per-item RNG on. Call it in the main process before iterating the loader."""
        self.mosaic_on = mosaic_active(epoch, epochs, self.augment.mosaic_until)
        self.epoch = int(epoch)

    def set_resolution(self, resolution: int) -> None:
        """Make items ``resolution x resolution`` from now on (see :func:`resolution_at`)."""
        if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution <= 0:
            raise DatasetError(f"resolution must be a positive int, got {resolution!r}")
        self.resolution = resolution

    def load_image(self, idx: int) -> Image.Image:
        """Open image ``idx`` as RGB, turning any decoding error into a DatasetError naming it."""
        file = self.images_dir / self.images[idx]["file_name"]
        try:
            with Image.open(file) as im:
                check_size(im, file)  # before decoding (PIL's own bomb limit raises no OSError)
                return to_rgb(im)  # 16-bit grey scaled, not clipped to white
        except FileNotFoundError:
            raise DatasetError(f"{file}: image file not found (file_name of image id {self.images[idx]['id']} "
                               f"in {self.ann_file})") from None
        except ImageError as exc:
            raise DatasetError(f"{exc} (image id {self.images[idx]['id']} in {self.ann_file})") from None
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
            raise DatasetError(f"{file}: cannot read image (image id {self.images[idx]['id']} in "
                               f"{self.ann_file}): {exc}") from None

    def _load(self, idx: int, factor: float = 1.0) -> tuple[Tile, float, tuple[int, int]]:
        """Image ``idx`` resized to longest side ``resolution * factor`` (unpadded, still uint8:
        a mosaic converts only the parts it keeps), its boxes clipped to it, and
        ``(scale, (height, width))`` of the original."""
        rec = self.images[idx]
        im = self.load_image(idx)
        w, h = im.size
        scale = self.resolution / max(w, h) * factor
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        im = im.resize((new_w, new_h), Image.BILINEAR)
        image = pil_to_tensor(im)

        orig = torch.tensor(rec["boxes"], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor(rec["labels"], dtype=torch.int64)
        boxes = orig * scale
        # COCO boxes may poke outside the image; clip so no target lies in the padding.
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, new_w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, new_h)
        orig[:, 0::2] = orig[:, 0::2].clamp(0, w)
        orig[:, 1::2] = orig[:, 1::2].clamp(0, h)
        sizes = box_sizes_original(orig)  # original pixels: independent of resolution and jitter
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not bool(keep.all()):
            if not self._warned_outside:
                warnings.warn(
                    f"{self.ann_file}: image id {rec['id']}: dropped {int((~keep).sum())} box(es) "
                    "outside the image or too small after resizing (warned once per dataset)",
                    stacklevel=3,
                )
                self._warned_outside = True
            boxes, labels, sizes = boxes[keep], labels[keep], sizes[keep]
        return (image, boxes, labels, sizes), scale, (h, w)

    def _mosaic(self, idx: int, rng: np.random.Generator) -> Tile:
        """Item ``idx`` and 3 images drawn from the whole split, in random quadrants."""
        aug, res = self.augment, self.resolution
        order = [idx, *(int(i) for i in rng.integers(0, len(self), size=3))]
        quadrant = rng.permutation(4)
        centre = mosaic_centre(res, rng)
        tiles: list[Tile] = [None] * 4  # type: ignore[list-item]
        for q, i in zip(quadrant, order):
            tiles[int(q)] = self._load(i, scale_factor(aug, rng))[0]
        return mosaic(tiles, centre, res, aug.mosaic_min_size, aug.mosaic_min_visibility)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, Any]]:
        rec, res, aug = self.images[idx], self.resolution, self.augment
        if not self.train:
            (image, boxes, labels, sizes), scale, orig_size = self._load(idx)
            image = image.float().div_(255.0)
        else:
            from sweeper.tasks.training import check_injected_worker_crash  # test-only fault hook
            check_injected_worker_crash(self.epoch)
            rng = item_rng(self.seed, self.epoch, idx)
            if self.mosaic_on and aug.mosaic_ratio > 0 and rng.random() < aug.mosaic_ratio:
                image, boxes, labels, sizes = self._mosaic(idx, rng)
                scale, orig_size = 1.0, (res, res)
            else:
                tile, scale, orig_size = self._load(idx, scale_factor(aug, rng))
                image, boxes, labels, sizes = random_crop(tile, res, rng, aug.mosaic_min_size,
                                                          aug.mosaic_min_visibility)
            # flips on the content before padding, so the padding stays bottom/right
            if self.hflip > 0 and rng.random() < self.hflip:
                image, boxes = hflip(image, boxes)
            if aug.vflip > 0 and rng.random() < aug.vflip:
                image, boxes = vflip(image, boxes)
            image = color_jitter(image.float().div_(255.0), aug, rng)

        _, new_h, new_w = image.shape
        padded = image if (new_h, new_w) == (res, res) else torch.zeros(3, res, res, dtype=torch.float32)
        if padded is not image:
            padded[:, :new_h, :new_w] = image
        target = {
            "boxes": boxes,
            "labels": labels,
            "sizes": sizes,
            "image_id": rec["id"],
            "scale": scale,
            "orig_size": orig_size,
        }
        return padded, target

def coco_fold(ann_file: str | Path, folds: Any, fold: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A COCO training file split for cross-validation (`data.folds`, `data.fold`): (the other
    folds, the held-out fold) as COCO dicts holding their images' annotations and every category,
    for :class:`CocoDetection`'s ``gt`` and the evaluator. Images are split by file name
    (:mod:`sweeper.tasks.folds`), so every trial and resume holds out the same ones."""
    path = Path(ann_file)
    data = read_json(path, "annotation")
    validate_coco_gt(data, str(path), required=_TRAIN_REQUIRED, name_ids=True)
    try:
        held = held_out_for([str(img["file_name"]) for img in data["images"]], folds, fold)
    except FoldError as exc:
        raise DatasetError(f"{path}: data.fold: {exc}") from None

    def part(held_out: bool) -> dict[str, Any]:
        images = [img for img, h in zip(data["images"], held) if h == held_out]
        ids = {img["id"] for img in images}
        return {**data, "images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}

    return part(False), part(True)


def to_original_coords(boxes: torch.Tensor, scale: float, orig_size: Sequence[int]) -> torch.Tensor:
    """Map xyxy boxes from resized/padded coordinates back to the original image.

    Dividing by the single resize scale undoes the aspect-preserving resize; clipping removes
    whatever part of a box lies in the padding (which has no original pixels).
    """
    h, w = int(orig_size[0]), int(orig_size[1])
    out = boxes.detach().to(torch.float64) / scale
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out


def collate_fn(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Keep images and targets as lists: torchvision detectors take a list of images."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def make_loader(
    dataset: CocoDetection, *, batch_size: int, shuffle: bool, seed: int, workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` and the epoch (see set_loader_epoch)."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=pin_memory,
        collate_fn=collate_fn,
        generator=gen,
        drop_last=False,
        persistent_workers=False,
    )


def set_loader_epoch(loader: DataLoader, *, seed: int, epoch: int) -> None:
    """Reseed the loader's generator so epoch ``epoch`` gets the same order (and worker seeds)
    whether it runs straight through or after a restore from a checkpoint."""
    loader.generator.manual_seed(seed * 100_003 + epoch)
