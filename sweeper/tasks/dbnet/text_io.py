"""UFO JSON and ICDAR-2015 text files: the one reader of text-detection annotations and
predictions, behind training (:func:`.data.load_ufo`, :func:`.data.load_icdar2015`) and evaluation
(:func:`.hmean.load_text_eval_pairs`, which ``sweeper eval --task dbnet``, Hmean and CLEval read).

One reader, so a file that trains also evaluates and the other way round. It parses and checks
the *format*; what to do with a polygon (training repairs or drops bad ones, evaluation refuses
fewer than 3 points) is the caller's. Every problem is a :class:`TextDataError` naming the file
and the line or field.

* UFO: ``{"images": {file_name: {"words": {id: {"points": [[x, y], ...], "transcription"?: str,
  "illegibility"?: bool, "score"? | "confidence"?: number}}}}}``. Extra keys are fine, an image
  without ``words`` has none, and a key given twice in one object (two entries for one image file
  or word id, which JSON would silently collapse to the last one) is an error, as are a
  transcription that is not a string (or null) and JSON nested too deeply for the parser.
* ICDAR-2015: UTF-8 text (optional BOM), one word per line, ``x1,y1,...,x4,y4[,transcription]``;
  the transcription may contain commas and may be double-quoted as in RRC files (``\\"`` and
  ``\\\\`` escapes). Blank lines are skipped.
* ``"###"`` or ``illegibility: true`` marks a don't-care word (``ignore``).

``eval_wording`` words three messages (a JSON syntax error, a line with a non-number or too few
fields) as ``sweeper eval`` always has, compiler-style (``file:line: field 3 'x' is not a number``);
the others read the same for both.

:func:`check_text_split` is what the driver runs on every training and validation split before it
dispatches a trial: the annotations parsed as above, at least one image, every image file inside
the images directory and found, and its header checked (:func:`sweeper.tasks.images.check_image`).

Usage::

    for image in read_ufo("data/val.json"):
        image.name, image.keys, image.polys, image.texts, image.ignore, image.scores
    words = parse_icdar(Path("gt/gt_img_1.txt").read_bytes(), "gt/gt_img_1.txt")
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

DONT_CARE = "###"
#: the image files an ICDAR-2015 ``gt_<name>.txt`` may describe (lower case; upper case is tried too)
IMAGE_EXTENSIONS = (".jpg", ".png", ".jpeg")
_GT_NAME = re.compile(r"^gt_(.+)\.txt$")
_QUOTED = re.compile(r'^\s*"(.*)"\s*$')


class TextDataError(ValueError):
    """A text-detection file (annotations, predictions, an image) is missing or malformed; the
    message names the file and the line or field."""


#: the name evaluation has always raised: the same, one error type
TextEvalFormatError = TextDataError


@dataclass
class Words:
    """The words of one image in file order, as parallel lists (polygons float64 ``(N, 2)``)."""

    name: str  # UFO: the image's key (file name relative to the images directory); ICDAR: the source
    keys: list[str]  # UFO: word ids; ICDAR: line numbers (what a message names a word by)
    polys: list[np.ndarray]
    texts: list[str]  # "" when not given
    ignore: list[bool]  # don't-care ("###" or illegible)
    scores: list[float | None]  # UFO "score" (or "confidence"); None when not given


# ----------------------------------------------------------------------------- UFO


def _unique_keys(path: Path) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    """A json ``object_pairs_hook`` refusing a key given twice in one object (costs no time)."""
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            key = next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
            raise TextDataError(f"{path}: key {key!r} appears twice in one JSON object (an image file name "
                                "or word id given twice?); JSON would keep only the last one")
        return obj
    return hook


def _points_of_image(values: list[Any], where: Callable[[int], str]) -> list[np.ndarray]:
    """The words' JSON points as float64 (N, 2) arrays. numpy does the type check (strings, bools,
    nulls or ragged pairs give another dtype or a ValueError), for all words of an image at once
    when they have the same point count: one call per word costs seconds at ~400k words. The
    per-word pass (mixed counts, or an error somewhere) names the offending word."""
    def as_points(value: Any, shape_ok: Callable[[np.ndarray], bool]) -> np.ndarray | None:
        try:
            arr = np.asarray(value) if isinstance(value, list) else None
        except ValueError:  # ragged
            return None
        ok = arr is not None and arr.dtype.kind in "iuf" and shape_ok(arr) and np.isfinite(arr).all()
        return arr.astype(np.float64) if ok else None

    batch = as_points(values, lambda a: a.ndim == 3 and a.shape[2] == 2)
    if batch is not None:
        return list(batch)
    out = []
    for k, value in enumerate(values):
        arr = as_points(value, lambda a: a.size == 0 or (a.ndim == 2 and a.shape[1] == 2))
        if arr is None:
            raise TextDataError(f"{where(k)} must be a list of [x, y] pairs of finite numbers")
        out.append(arr.reshape(-1, 2))
    return out


def _score(word: dict[str, Any], where: str) -> float | None:
    key = "score" if "score" in word else "confidence"
    value = word.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TextDataError(f"{where}.{key} must be a finite number, got {value!r}")
    return float(value)


def read_ufo(path: str | Path, *, limit: int | None = None, eval_wording: bool = False) -> list[Words]:
    """The images of a UFO JSON file in file order (the first ``limit`` when given), checked as
    the module docstring says."""
    path = Path(path)
    if not path.is_file():
        raise TextDataError(f"{path}: annotation file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=_unique_keys(path))
    except json.JSONDecodeError as exc:
        raise TextDataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})" if eval_wording else
                            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TextDataError(f"{path}: cannot read annotation file: {exc}") from None
    except RecursionError:  # json's C parser recurses once per [ or {
        raise TextDataError(f"{path}: JSON arrays/objects nested too deeply to read (UFO needs 6 levels)") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), dict):
        raise TextDataError(f"{path}: field 'images' must be an object "
                            '{file_name: {"words": {id: {"points": ...}}}} (UFO format)')
    out: list[Words] = []
    for name, entry in list(data["images"].items())[:limit]:
        where = f"{path}: images[{name!r}]"
        if not isinstance(entry, dict):
            raise TextDataError(f"{where} must be an object with 'words'")
        words = entry.get("words", {})  # test splits ship images without words
        if not isinstance(words, dict):
            raise TextDataError(f"{where}.words must be an object {{id: word}}, got {type(words).__name__}")
        for wid, word in words.items():
            if not isinstance(word, dict) or "points" not in word:
                raise TextDataError(f"{where}.words[{wid!r}] has no 'points'")
            text = word.get("transcription")
            if text is not None and not isinstance(text, str):
                raise TextDataError(f"{where}.words[{wid!r}].transcription must be a string (or null), "
                                    f"got {type(text).__name__} {text!r:.40}")
        ids = list(words)
        texts = ["" if w.get("transcription") is None else str(w["transcription"]) for w in words.values()]
        out.append(Words(
            name=name,
            keys=ids,
            polys=_points_of_image([w["points"] for w in words.values()],
                                   lambda k: f"{where}.words[{ids[k]!r}].points"),
            texts=texts,
            ignore=[bool(w.get("illegibility", False)) or t == DONT_CARE for w, t in zip(words.values(), texts)],
            scores=[_score(w, f"{where}.words[{wid!r}]") for wid, w in words.items()],
        ))
    return out


# ----------------------------------------------------------------------------- ICDAR 2015


def parse_icdar(data: bytes, source: str, *, eval_wording: bool = False) -> Words:
    """The words of one ICDAR-2015 text file (its bytes; ``source`` names it in messages and
    becomes the record's ``name``), keyed by line number."""
    try:
        text = data.decode("utf-8-sig")  # -sig: the official ICDAR files start with a BOM
    except UnicodeDecodeError as exc:
        raise TextDataError(f"{source}: cannot read as UTF-8 text: {exc}") from None
    words = Words(name=source, keys=[], polys=[], texts=[], ignore=[], scores=[])
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        where = f"{source}:{lineno}:"
        fields = line.split(",", 8)  # the 9th field is the transcription, commas and all
        coords = []
        for k, value in enumerate(fields[:8]):
            try:
                coords.append(float(value))
            except ValueError:
                raise TextDataError(
                    f"{where} field {k + 1} {value.strip()[:30]!r} is not a number; expected 8 coordinates "
                    f"x1,y1,...,x4,y4 then an optional transcription (found {k})" if eval_wording else
                    f"{where} the first 8 fields must be numbers, got {line!r}") from None
        if len(coords) < 8:
            raise TextDataError(f"{where} expected 8 coordinates x1,y1,...,x4,y4, found {len(coords)}" if eval_wording
                                else f"{where} expected x1,y1,x2,y2,x3,y3,x4,y4[,transcription], got {line!r}")
        if not all(math.isfinite(c) for c in coords):
            raise TextDataError(f"{where} coordinates must be finite numbers, got {line!r}")
        transcription = fields[8].strip() if len(fields) > 8 else ""
        quoted = _QUOTED.match(transcription)
        if quoted:  # RRC files may quote the transcription, with \" and \\ escapes
            transcription = quoted.group(1).replace('\\\\', '\\').replace('\\"', '"')
        words.keys.append(str(lineno))
        words.polys.append(np.asarray(coords, dtype=np.float64).reshape(4, 2))
        words.texts.append(transcription)
        words.ignore.append(transcription == DONT_CARE)
        words.scores.append(None)
    return words


# ----------------------------------------------------------------------------- before dispatch


def safe_image_path(images_dir: Path, name: str, source: str) -> Path:
    """Refuse names that leave the images directory. Checked on the name itself (not resolved),
    so an images directory made of symlinks to elsewhere still works."""
    forms = (PurePosixPath(name), PureWindowsPath(name))
    if not name or any(p.is_absolute() or p.drive or ".." in p.parts for p in forms):
        raise TextDataError(f"{source}: image file name {name!r} must be a relative path inside the images "
                            f"directory {images_dir} (no '..', no absolute path)")
    return images_dir / name


def find_image(images_dir: Path, stem: str, source: Path) -> Path:
    """The image an ICDAR-2015 ``gt_<stem>.txt`` describes: ``<stem>.jpg|.png|.jpeg`` (any case)."""
    tried = [stem + ext for e in IMAGE_EXTENSIONS for ext in (e, e.upper())]
    for name in tried:
        file = safe_image_path(images_dir, name, str(source))
        if file.is_file():
            return file
    raise TextDataError(f"{source}: image not found in {images_dir} (tried {', '.join(tried)})")


def check_text_split(ann: str | Path, images_dir: str | Path, *, split: str = "train", format: str = "ufo") -> None:
    """Read a UFO file or ICDAR-2015 gt directory as a trial will (``format``), and check every
    image it names (see the module docstring); ``split`` is for symmetry with the detection
    check. Raises TextDataError naming the file and the record."""
    from sweeper.tasks.images import ImageError, check_image  # PIL: only when images are checked

    ann, images_dir = Path(ann), Path(images_dir)
    if not images_dir.is_dir():
        raise TextDataError(f"{images_dir}: images directory not found (data.images)")
    files: list[tuple[Path, str]] = []  # (image, what names it)
    if format == "icdar2015":
        if not ann.is_dir():
            raise TextDataError(f"{ann}: ground-truth directory not found "
                                "(icdar2015 expects a directory of gt_<name>.txt)")
        gts = sorted(p for p in ann.iterdir() if p.is_file() and _GT_NAME.match(p.name))
        if not gts:
            raise TextDataError(f"{ann}: no gt_<name>.txt files found")
        for gt in gts:
            try:
                parse_icdar(gt.read_bytes(), str(gt))
            except OSError as exc:
                raise TextDataError(f"{gt}: cannot read as UTF-8 text: {exc}") from None
            files.append((find_image(images_dir, _GT_NAME.match(gt.name).group(1), gt), str(gt)))
    else:
        records = read_ufo(ann)
        if not records:
            raise TextDataError(f"{ann}: 'images' is empty")
        files = [(safe_image_path(images_dir, r.name, str(ann)), f"{ann} images[{r.name!r}]") for r in records]
    for file, source in files:
        try:
            check_image(file)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise TextDataError(f"{file}: image file not found (referenced by {source})") from None
        except (ImageError, OSError) as exc:
            raise TextDataError(f"{exc} (referenced by {source})") from None
