"""The synthetic shapes dataset: deterministic, valid COCO, the size mix the metrics need."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sweeper.tasks.detection.coco_eval import evaluate_coco
from sweeper.tasks.detection.synth import CATEGORIES, _shape_mask, make_synthetic_coco


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _annotations(info: dict) -> list[dict]:
    return [a for split in ("train", "val") for a in json.loads(Path(info[split]).read_text())["annotations"]]


def _buckets(anns: list[dict]) -> dict[str, float]:
    areas = np.array([a["area"] for a in anns], dtype=float)
    return {"small": float(np.mean(areas < 32**2)),
            "medium": float(np.mean((areas >= 32**2) & (areas <= 96**2))),
            "large": float(np.mean(areas > 96**2))}


@pytest.fixture(scope="module")
def ds128(tmp_path_factory) -> dict:
    return make_synthetic_coco(tmp_path_factory.mktemp("s128"), images=96, size=128, seed=0)


@pytest.fixture(scope="module")
def ds256(tmp_path_factory) -> dict:
    return make_synthetic_coco(tmp_path_factory.mktemp("s256"), images=48, size=256, seed=0)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_synthetic_coco(tmp_path / "a", images=12, seed=3)
    b = make_synthetic_coco(tmp_path / "b", images=12, seed=3)
    make_synthetic_coco(tmp_path / "c", images=12, seed=4)
    files_a, files_b, files_c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(files_a) == 12 + 2 and files_a == files_b
    assert {k: v for k, v in a.items() if k not in ("train", "val", "images")} == \
           {k: v for k, v in b.items() if k not in ("train", "val", "images")}
    assert files_a.keys() == files_c.keys()
    assert files_a["train.json"] != files_c["train.json"]
    assert sum(files_a[k] != files_c[k] for k in files_a if k.endswith(".png")) == 12


def test_image_k_does_not_depend_on_image_count(tmp_path):
    make_synthetic_coco(tmp_path / "few", images=4, seed=0)
    make_synthetic_coco(tmp_path / "more", images=8, seed=0)
    for name in ("000001.png", "000004.png"):
        assert (tmp_path / "few/images" / name).read_bytes() == (tmp_path / "more/images" / name).read_bytes()


def test_valid_coco_for_pycocotools(ds128):
    from pycocotools.coco import COCO

    for split in ("train", "val"):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(ds128[split])
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)
        assert len(CATEGORIES) >= 3
        assert coco.getAnnIds()
        for img in coco.loadImgs(coco.getImgIds()):
            with Image.open(Path(ds128["images"]) / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) == (128, 128) and im.mode == "RGB"


def test_gt_as_detections_scores_perfectly(ds128):
    gt = json.loads(Path(ds128["val"]).read_text())
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt["annotations"]]
    metrics = evaluate_coco(gt, dets)
    assert metrics["map"] == pytest.approx(1.0, abs=1e-9)
    assert all(metrics[f"ap/{name}"] == pytest.approx(1.0, abs=1e-9) for name in CATEGORIES)


def test_split_and_counts(ds128):
    train = json.loads(Path(ds128["train"]).read_text())
    val = json.loads(Path(ds128["val"]).read_text())
    train_ids = {im["id"] for im in train["images"]}
    val_ids = {im["id"] for im in val["images"]}
    assert not train_ids & val_ids and train_ids | val_ids == set(range(1, 97))
    assert (ds128["num_train"], ds128["num_val"]) == (len(train_ids), len(val_ids)) == (72, 24)
    assert ds128["num_annotations"] == len(train["annotations"]) + len(val["annotations"])
    assert {a["image_id"] for a in val["annotations"]} <= val_ids
    ann_ids = [a["id"] for a in train["annotations"] + val["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)


@pytest.mark.parametrize("which", ["ds128", "ds256"])
def test_boxes_inside_tight_count_and_disjoint(request, which):
    info = request.getfixturevalue(which)
    size = 128 if which == "ds128" else 256
    by_image: dict[int, list[list[int]]] = {}
    for a in _annotations(info):
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= size and y + h <= size, a
        assert a["area"] == w * h and a["iscrowd"] == 0
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    assert len(by_image) == info["num_images"]  # every image has 1..6 objects
    for boxes in by_image.values():
        assert 1 <= len(boxes) <= 6
        for i, (x0, y0, w0, h0) in enumerate(boxes):
            for x1, y1, w1, h1 in boxes[i + 1:]:
                assert x0 + w0 <= x1 or x1 + w1 <= x0 or y0 + h0 <= y1 or y1 + h1 <= y0


def test_size_mix_at_128(ds128):
    anns = _annotations(ds128)
    frac = _buckets(anns)
    assert frac["small"] >= 0.30 and frac["medium"] > 0.10
    assert {a["category_id"] for a in anns} == {1, 2, 3}


def test_size_mix_at_256_has_large(ds256):
    frac = _buckets(_annotations(ds256))
    assert frac["small"] >= 0.30 and frac["medium"] > 0.0 and frac["large"] > 0.0


@pytest.mark.parametrize("shape", CATEGORIES)
@pytest.mark.parametrize("side", [8, 17, 60])
def test_shape_masks_are_tight(shape, side):
    mask = _shape_mask(np.random.default_rng(side), shape, side)
    assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
    assert max(mask.shape) == side


@pytest.mark.parametrize("kwargs, message", [
    ({"images": 0}, "images"), ({"size": 16}, "size"), ({"val_fraction": 1.0}, "val_fraction"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_synthetic_coco(tmp_path, **kwargs)
