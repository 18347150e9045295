"""COCO files in and out of the detection task: the one reader and validator of COCO ground truth
and COCO detection results, behind training (:class:`.data.CocoDetection`), evaluation
(:func:`.coco_eval.evaluate_coco`, ``sweeper eval``) and ``sweeper data stats``.

One reader, so a file that trains also evaluates: every problem is a :class:`CocoFormatError`
naming the file and the field, never a ``KeyError`` inside COCOeval or a silently skipped record.
What each caller needs from a record differs (COCOeval reads ``area``, training reads
``file_name``), so callers say which keys are required (``required=``); the checks of the values
themselves are the same for all:

* the three sections are lists of objects; image ids are unique; category names are unique (they
  name the ``ap/<class>`` metrics);
* ids (of images, categories, annotations, and ``image_id``/``category_id``) are integers or
  strings, one kind per section (a list as an id cannot be looked up; mixed kinds cannot be
  sorted, which the evaluator does);
* every annotation's ``image_id`` and ``category_id`` exist, its ``bbox`` is 4 finite numbers, and
  its ``area``, when given (COCOeval buckets by it), is a finite number (a string or NaN would
  fail inside COCOeval; a negative one is simply in no size range, like a negative box); its
  ``iscrowd``, when given, is 0 or 1 (the string ``"0"`` would read as a crowd).

:func:`check_coco_split` is what the driver runs on every training and validation file before it
dispatches a trial (``sweeper validate``, ``sweeper launch``): the checks above and the training
loader's (file names inside the images directory, at least one image and category), at least one
annotation that is not a crowd (without one a training split teaches nothing and every metric
of a validation split is -1), and the header of every image (:func:`sweeper.tasks.images.check_image`:
0-byte, truncated, unreadable or absurdly large files).

Usage::

    gt = load_coco_gt("data/val.json")            # validated dict, parsed once
    CocoDetection("data/val.json", "data/images", resolution=512, gt=gt)
    evaluate_coco(gt, load_detections("preds.json"))
"""
from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

#: section -> keys each of its items needs for COCOeval (``validate_coco_gt``'s default)
GT_REQUIRED: dict[str, tuple[str, ...]] = {
    "images": ("id",),
    "categories": ("id", "name"),
    "annotations": ("id", "image_id", "category_id", "bbox", "area"),
}
#: the keys ``validate_coco_gt``'s own checks read: the least any ``required=`` may name
#: (enough for code that only reads boxes, e.g. dataset statistics, where ``area`` is optional)
GT_REQUIRED_MINIMAL: dict[str, tuple[str, ...]] = {
    "images": ("id",),
    "categories": ("id", "name"),
    "annotations": ("image_id", "category_id", "bbox"),
}
_DET_REQUIRED = ("image_id", "category_id", "bbox", "score")


class CocoFormatError(ValueError):
    """A COCO ground-truth, detection or data-set file (or dict) is missing or malformed; the
    message names the file and the field."""


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; a missing, unreadable or malformed one raises CocoFormatError naming it
    (``what`` says which file, e.g. "COCO ground-truth")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CocoFormatError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CocoFormatError(f"{path}: cannot read {what} file: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CocoFormatError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except RecursionError:  # json's C parser recurses once per [ or {
        raise CocoFormatError(f"{path}: {what} file nests JSON arrays/objects too deeply to read "
                              "(COCO needs 4 levels)") from None


def is_number(value: Any) -> bool:
    """A real number, bools excepted (numpy scalars included)."""
    # Plain floats and ints first: the ABC check below is slow and runs 5x per detection.
    if type(value) is float or type(value) is int:
        return True
    # numbers.Real also admits numpy scalars (np.float32 from a model's output).
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_box(value: Any, *, finite: bool = False) -> bool:
    """``[x, y, w, h]``: 4 numbers (all finite with ``finite``; a model's NaN box still scores)."""
    return (isinstance(value, (list, tuple)) and len(value) == 4 and all(map(is_number, value))
            and (not finite or all(map(math.isfinite, value))))


def record_name(section: str, i: int, item: Any) -> str:
    """How the training loader names a record in messages: ``annotations[3] (id 17)`` (the id
    finds it in the file; the index alone when it has none)."""
    if isinstance(item, Mapping) and "id" in item:
        return f"{section}[{i}] (id {item['id']})"
    return f"{section}[{i}]"


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _check_ids(source: str, section: str, items: list[Any], key: str, *, optional: bool = False) -> None:
    """``items[*][key]`` are ints or strings, not both (see the module docstring)."""
    kinds: set[type] = set()
    for i, item in enumerate(items):
        if optional and key not in item:
            continue
        value = item[key]
        if not _is_id(value):
            raise CocoFormatError(f"{source}: {section}[{i}].{key} must be an integer id, got {value!r}")
        kinds.add(int if isinstance(value, int) else str)
    if len(kinds) > 1:
        raise CocoFormatError(f"{source}: {section}[*].{key}: ids must be all numbers or all strings (some "
                              "are integers, some strings; COCO uses integers)")


def validate_coco_gt(data: Any, source: str = "<ground truth>", *,
                     required: Mapping[str, Sequence[str]] = GT_REQUIRED, name_ids: bool = False) -> None:
    """Check a COCO ground truth (see the module docstring) so a bad file fails here with its
    name and field instead of as a ``KeyError`` deep inside ``COCOeval`` or a trial.

    ``required`` maps each section (images, categories, annotations: all three must be there) to
    the keys each of its items must have; it names at least :data:`GT_REQUIRED_MINIMAL`, which the
    checks read. The default is what COCOeval reads. ``name_ids`` words the messages as the
    training loader always has, naming records with their id (``annotations[3] (id 17): ...``);
    otherwise they read ``annotations[3].bbox ...``.
    """
    if not isinstance(data, Mapping):
        raise CocoFormatError(f"{source}: COCO ground truth must be a JSON object with 'images', 'annotations' "
                              f"and 'categories', got {type(data).__name__}")
    for section, keys in required.items():
        if section not in data:
            raise CocoFormatError(f"{source}: missing top-level key {section!r} "
                                  "(COCO needs images, annotations, categories)")
        items = data[section]
        if not isinstance(items, list):
            raise CocoFormatError(f"{source}: {section!r} must be a list, got {type(items).__name__}")
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise CocoFormatError(f"{source}: {section}[{i}] must be an object")
            for key in keys:
                if key not in item:
                    raise CocoFormatError(f"{source}: {record_name(section, i, item)} has no {key!r} field"
                                          if name_ids else f"{source}: {section}[{i}] is missing {key!r}")
    _check_ids(source, "images", data["images"], "id")
    _check_ids(source, "categories", data["categories"], "id")
    for key in ("id", "image_id", "category_id"):
        _check_ids(source, "annotations", data["annotations"], key, optional=True)
    image_ids: set[Any] = set()
    for i, img in enumerate(data["images"]):
        if img["id"] in image_ids:
            raise CocoFormatError(f"{source}: images[{i}]: duplicate image id {img['id']}")
        image_ids.add(img["id"])
    cat_names: dict[Any, str] = {}
    for i, cat in enumerate(data["categories"]):
        if cat["name"] in cat_names.values():
            raise CocoFormatError(f"{source}: categories[{i}].name {cat['name']!r} is used twice "
                                  "(metric ap/<name> must be unique)")
        cat_names[cat["id"]] = cat["name"]
    for i, ann in enumerate(data["annotations"]):
        where = f"{source}: {record_name('annotations', i, ann)}: " if name_ids else f"{source}: annotations[{i}]."
        if ann["image_id"] not in image_ids:
            raise CocoFormatError(f"{where}image_id {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in cat_names:
            raise CocoFormatError(f"{where}category_id {ann['category_id']!r} is not in 'categories'")
        if not is_box(ann["bbox"], finite=True):
            raise CocoFormatError(f"{where}'bbox' must be 4 finite numbers [x, y, w, h], got {ann['bbox']!r}"
                                  if name_ids else f"{where}bbox must be 4 numbers [x, y, w, h], all finite, "
                                  f"got {ann['bbox']!r}")
        area = ann.get("area", 0)
        if not (is_number(area) and math.isfinite(area)):
            raise CocoFormatError(f"{where}area must be a number, not NaN or infinite, got {area!r}")
        crowd = ann.get("iscrowd", 0)
        if not (type(crowd) in (int, bool) and crowd in (0, 1)):
            raise CocoFormatError(f"{where}iscrowd must be 0 or 1, got {crowd!r}")


def validate_detections(dets: Any, source: str = "<detections>") -> None:
    """Check a loadRes-style detection list: a list of objects with image_id, category_id,
    bbox [x, y, w, h] and score."""
    if not isinstance(dets, list):
        raise CocoFormatError(f"{source}: detections must be a JSON list of objects, got {type(dets).__name__}")
    for i, det in enumerate(dets):
        if not isinstance(det, Mapping):
            raise CocoFormatError(f"{source}: detection [{i}] must be an object, got {type(det).__name__}")
        for key in _DET_REQUIRED:
            if key not in det:
                raise CocoFormatError(f"{source}: detection [{i}] is missing {key!r} (need {', '.join(_DET_REQUIRED)})")
        if not is_box(det["bbox"]):
            raise CocoFormatError(f"{source}: detection [{i}].bbox must be 4 numbers [x, y, w, h], got {det['bbox']!r}")
        score = det["score"]
        if not is_number(score) or not math.isfinite(score):
            raise CocoFormatError(f"{source}: detection [{i}].score must be a finite number, got {score!r}")


def load_coco_gt(path: str | Path, *, required: Mapping[str, Sequence[str]] = GT_REQUIRED,
                 what: str = "COCO ground-truth") -> dict[str, Any]:
    """Read and validate a COCO ground-truth JSON file (``required``: see :func:`validate_coco_gt`;
    ``what`` names the file in a not-found message); errors name the file and the field."""
    data = read_json(path, what)
    validate_coco_gt(data, str(path), required=required)
    return data


def load_detections(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a COCO results JSON file (a list of detections)."""
    data = read_json(path, "detections")
    validate_detections(data, str(path))
    return data


#: what training reads of each record (``area`` and the annotation ``id`` are optional there)
TRAIN_REQUIRED: dict[str, tuple[str, ...]] = {**GT_REQUIRED_MINIMAL, "images": ("id", "file_name")}


def check_file_name(path: str | Path, where: str, name: str) -> None:
    """Refuse file names that leave the images directory (checked on the name, not resolved,
    so an images directory of symlinks still works)."""
    forms = (PurePosixPath(name), PureWindowsPath(name))
    if not name or any(p.is_absolute() or p.drive or ".." in p.parts for p in forms):
        raise CocoFormatError(f"{path}: {where}: file_name {name!r} must be a relative path inside the images "
                              "directory (no '..', no absolute path)")


def check_coco_split(ann_file: str | Path, images_dir: str | Path, *, split: str = "train",
                     format: str = "coco") -> None:
    """Read a training or validation split as a trial will and refuse what would make every trial
    fail or mean nothing (see the module docstring); ``split`` ("train" or "val") words the
    message (``format``: always coco here). The driver calls it before dispatch; CocoFormatError
    names the file and record."""
    from sweeper.tasks.images import ImageError, check_image  # PIL: only when images are checked

    path, images_dir = Path(ann_file), Path(images_dir)
    data = read_json(path, "annotation")
    validate_coco_gt(data, str(path), required=TRAIN_REQUIRED, name_ids=True)
    if not data["categories"]:
        raise CocoFormatError(f"{path}: 'categories' is empty; at least one category is needed")
    if not data["images"]:
        raise CocoFormatError(f"{path}: 'images' is empty; a split needs at least one image")
    if not any(not ann.get("iscrowd", 0) for ann in data["annotations"]):
        why = ("a detector would learn no object" if split == "train" else
               "every metric would be -1 (COCO scores no image without ground truth)")
        raise CocoFormatError(f"{path}: 'annotations' holds no box (crowds aside) for its {len(data['images'])} "
                              f"image(s): {why}")
    if not images_dir.is_dir():
        raise CocoFormatError(f"{images_dir}: images directory not found (data.images)")
    for i, img in enumerate(data["images"]):
        where = record_name("images", i, img)
        name = str(img["file_name"])
        check_file_name(path, where, name)
        file = images_dir / name
        try:
            check_image(file)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise CocoFormatError(f"{file}: image file not found (file_name of image id {img['id']} "
                                  f"in {path})") from None
        except (ImageError, OSError) as exc:
            raise CocoFormatError(f"{exc} (image id {img['id']} in {path})") from None
