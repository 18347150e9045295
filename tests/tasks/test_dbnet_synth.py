"""Synthetic receipts: deterministic, valid UFO, tight in-frame quads, don't-care regions, word sizes."""
from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from shapely.geometry import Polygon

from sweeper.tasks.dbnet.data import TextDetDataset, load_ufo
from sweeper.tasks.dbnet.synth import ASPECT, make_synthetic_receipts


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _entries(info: dict) -> dict[str, dict]:
    return {n: e for split in ("train", "val") for n, e in json.loads(Path(info[split]).read_text())["images"].items()}


@pytest.fixture(scope="module")
def ds256(tmp_path_factory) -> dict:
    return make_synthetic_receipts(tmp_path_factory.mktemp("r256"), images=24, size=256, seed=0)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    make_synthetic_receipts(tmp_path / "a", images=6, size=128, seed=3)
    make_synthetic_receipts(tmp_path / "b", images=6, size=128, seed=3)
    make_synthetic_receipts(tmp_path / "c", images=6, size=128, seed=4)
    files_a, files_b, files_c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(files_a) == 6 + 2 and files_a == files_b
    assert files_a.keys() == files_c.keys()
    assert sum(files_a[k] != files_c[k] for k in files_a if k.endswith(".png")) == 6


def test_image_k_does_not_depend_on_image_count(tmp_path: Path) -> None:
    make_synthetic_receipts(tmp_path / "few", images=3, size=128)
    make_synthetic_receipts(tmp_path / "more", images=5, size=128)
    for name in ("000001.png", "000003.png"):
        assert (tmp_path / "few/images" / name).read_bytes() == (tmp_path / "more/images" / name).read_bytes()


def test_valid_ufo_that_loads_without_repairs(ds256: dict) -> None:
    assert ds256["num_images"] == 24 and (ds256["num_train"], ds256["num_val"]) == (18, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not one polygon needs dropping, repairing or clipping
        train = load_ufo(ds256["train"], ds256["images"])
        val = load_ufo(ds256["val"], ds256["images"])
    assert len(train) == 18 and len(val) == 6
    assert sum(len(im.polys) for im in train + val) == ds256["num_words"]
    assert sum(sum(im.ignore) for im in train + val) == ds256["num_dont_care"]
    assert all(im.size == (256, round(256 * ASPECT)) for im in train + val)


def test_train_val_disjoint_and_cover_all_images(ds256: dict) -> None:
    train = set(json.loads(Path(ds256["train"]).read_text())["images"])
    val = set(json.loads(Path(ds256["val"]).read_text())["images"])
    assert not train & val
    assert train | val == {p.name for p in Path(ds256["images"]).glob("*.png")}


def test_quads_inside_image_clockwise_and_dont_care_in_every_image(ds256: dict) -> None:
    h, w = 256, round(256 * ASPECT)
    for name, entry in _entries(ds256).items():
        words = list(entry["words"].values())
        assert len(words) >= 5, name
        assert any(wd["illegibility"] and wd["transcription"] == "###" for wd in words), name
        assert any(not wd["illegibility"] for wd in words), name
        for wd in words:
            pts = np.array(wd["points"])
            assert pts.shape == (4, 2)
            assert pts.min() >= 0 and pts[:, 0].max() <= w and pts[:, 1].max() <= h
            poly = Polygon(pts)
            assert poly.is_valid and poly.area > 0
            # clockwise on screen (y down) = positive shoelace sum; first corner is the top-left
            x, y = pts[:, 0], pts[:, 1]
            assert np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)) > 0
            assert wd["illegibility"] == (wd["transcription"] == "###")


def test_word_heights_learnable_at_resolution_size(ds256: dict) -> None:
    heights = []
    for entry in _entries(ds256).values():
        for wd in entry["words"].values():
            if not wd["illegibility"]:
                p = np.array(wd["points"])
                heights.append((np.linalg.norm(p[3] - p[0]) + np.linalg.norm(p[2] - p[1])) / 2)
    assert min(heights) >= 8.0
    assert max(heights) > 1.5 * min(heights)  # font sizes vary (titles, totals)


def _fill(size: tuple[int, int], *polys) -> np.ndarray:
    img = Image.new("L", size, 0)
    draw = ImageDraw.Draw(img)
    for poly in polys:
        draw.polygon([tuple(p) for p in poly], fill=255)
    return np.asarray(img) > 0


def _loose_boxes(info: dict, shift: tuple[float, float] = (0.0, 0.0), images: int = 8) -> tuple[int, int]:
    """(boxes with ink in the 3-px ring around them, readable boxes checked), boxes moved by ``shift``.
    Ink in the ring = dark pixels there that lie in no box at all."""
    bad = total = 0
    for name, entry in list(_entries(info).items())[:images]:
        grey = np.asarray(Image.open(Path(info["images"]) / name).convert("L"), dtype=np.float32)
        size = (grey.shape[1], grey.shape[0])
        words = [[(x + shift[0], y + shift[1]) for x, y in wd["points"]] for wd in entry["words"].values()]
        readable = [not wd["illegibility"] for wd in entry["words"].values()]
        union = _fill(size, *words)
        for quad, ok in zip(words, readable):
            if not ok:
                continue
            inside = _fill(size, quad)
            ring = _fill(size, Polygon(quad).buffer(3, join_style=2).exterior.coords) & ~union
            dark = grey < np.median(grey[inside | ring]) - 50
            assert (dark & inside).sum() >= 4 or shift != (0.0, 0.0)  # every box holds ink
            bad += int((dark & ring).sum() > 0.03 * (dark & inside).sum())
            total += 1
    return bad, total


def test_quads_are_tight_around_the_ink(ds256: dict) -> None:
    """Alignment after the page rotation: no readable box leaves ink just outside it, while the
    same boxes moved by 2 px do -- so the check would catch a misplaced or wrongly rotated box."""
    bad, total = _loose_boxes(ds256)
    assert total > 100 and bad <= 0.02 * total
    for shift in [(2.0, 0.0), (-2.0, 0.0), (0.0, 2.0), (0.0, -2.0)]:
        bad, total = _loose_boxes(ds256, shift, images=4)
        assert bad >= 0.15 * total, shift


def test_words_of_varied_lengths(ds256: dict) -> None:
    texts = [wd["transcription"] for e in _entries(ds256).values() for wd in e["words"].values()
             if not wd["illegibility"]]
    lengths = {len(t) for t in texts}
    assert min(lengths) <= 2 and max(lengths) >= 8


@pytest.mark.skipif(importlib.util.find_spec("sweeper.tasks.dbnet.labels") is None, reason="labels.py not written yet")
def test_feeds_the_training_dataset(ds256: dict) -> None:
    ds = TextDetDataset(load_ufo(ds256["train"], ds256["images"]), 256, train=True, hflip=0.5)
    image, maps, meta = ds[0]
    assert image.shape == (3, 256, 256) and maps["prob"].shape == (256, 256)
    assert float(maps["prob"].sum()) > 50  # words produce positive pixels after shrinking
    assert meta["orig_size"] == (256, round(256 * ASPECT)) and meta["scale"] == 1.0


@pytest.mark.parametrize("kwargs", [{"images": 0}, {"size": 32}, {"val_fraction": 1.0}])
def test_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_synthetic_receipts(tmp_path, **kwargs)
