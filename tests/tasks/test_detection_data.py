"""COCO detection data: category mapping, crowd handling, geometry, mapping back, input errors."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from sweeper.tasks.detection.data import (
    CocoDetection,
    DatasetError,
    collate_fn,
    make_loader,
    set_loader_epoch,
    to_original_coords,
)


def write_coco(tmp: Path, images: list[dict], annotations: list[dict], categories: list[dict], sizes=None) -> Path:
    """Write black images (size from ``sizes[file_name]`` or 32x32) and an annotation file."""
    (tmp / "images").mkdir(exist_ok=True)
    for img in images:
        size = (sizes or {}).get(img["file_name"], (32, 32))
        Image.new("RGB", size).save(tmp / "images" / img["file_name"])
    ann = tmp / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann


def _ann(i: int, image_id: int, cat: int, bbox: list[float], **extra) -> dict:
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3], **extra}


@pytest.fixture
def basic(tmp_path: Path) -> Path:
    images = [{"id": 10, "file_name": "a.png"}, {"id": 20, "file_name": "b.png"}, {"id": 30, "file_name": "empty.png"}]
    cats = [{"id": 7, "name": "square"}, {"id": 3, "name": "circle"}, {"id": 12, "name": "star"}]
    anns = [
        _ann(1, 10, 3, [1, 1, 4, 4]),
        _ann(2, 10, 12, [5, 5, 6, 6]),
        _ann(3, 10, 7, [0, 0, 10, 10], iscrowd=1),
        _ann(4, 20, 7, [2, 2, 3, 3], ignore=1),
        _ann(5, 20, 7, [3, 3, 8, 8], iscrowd=0),
    ]
    return write_coco(tmp_path, images, anns, cats)


def test_categories_map_to_contiguous_labels_in_id_order(basic: Path) -> None:
    ds = CocoDetection(basic, basic.parent / "images", resolution=32)
    assert ds.label_to_cat_id == [None, 3, 7, 12]
    assert ds.label_names == ["__background__", "circle", "square", "star"]
    assert ds.categories == [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}, {"id": 12, "name": "star"}]
    _, t = ds[0]
    assert t["labels"].tolist() == [1, 3]  # cat 3 -> 1, cat 12 -> 3
    assert t["image_id"] == 10


def test_crowd_and_ignore_excluded_and_empty_images_kept(basic: Path) -> None:
    ds = CocoDetection(basic, basic.parent / "images", resolution=32)
    assert len(ds) == 3
    assert len(ds[0][1]["boxes"]) == 2  # crowd annotation left out
    _, t = ds[1]
    assert t["labels"].tolist() == [2] and t["boxes"].tolist() == [[3, 3, 11, 11]]  # ignore=1 left out
    img, t = ds[2]
    assert img.shape == (3, 32, 32)
    assert t["boxes"].shape == (0, 4) and t["boxes"].dtype == torch.float32
    assert t["labels"].shape == (0,) and t["labels"].dtype == torch.int64


def _tall_case(tmp_path: Path) -> Path:
    # 20 wide x 40 high, red rectangle at x 2..8, y 4..14 (xywh [2, 4, 6, 10]).
    (tmp_path / "images").mkdir()
    im = Image.new("RGB", (20, 40))
    im.paste((255, 0, 0), (2, 4, 8, 14))
    im.save(tmp_path / "images" / "tall.png")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "tall.png", "width": 20, "height": 40}],
        "annotations": [_ann(1, 1, 1, [2, 4, 6, 10])],
        "categories": [{"id": 1, "name": "box"}],
    }))
    return ann


@pytest.mark.parametrize("flip", [False, True])
def test_resize_pad_flip_geometry(tmp_path: Path, flip: bool) -> None:
    ann = _tall_case(tmp_path)
    ds = CocoDetection(ann, tmp_path / "images", resolution=80, hflip=1.0 if flip else 0.0, train=True)
    img, t = ds[0]
    assert img.shape == (3, 80, 80)
    assert t["scale"] == 2.0 and t["orig_size"] == (40, 20)
    # resized content is 40 wide x 80 high; padding is the right half
    expected = [24.0, 8.0, 36.0, 28.0] if flip else [4.0, 8.0, 16.0, 28.0]
    assert t["boxes"].tolist() == [expected]
    assert img[:, :, 40:].abs().sum() == 0
    x1, y1, x2, y2 = (int(v) for v in expected)
    assert img[0, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].min() > 0.99  # red inside the box
    assert img[1:, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].max() < 0.01
    assert img[0, :, :40].sum() < img[0, y1:y2, x1:x2].sum() + 40  # almost nothing red outside


def test_val_split_never_flips(tmp_path: Path) -> None:
    ann = _tall_case(tmp_path)
    ds = CocoDetection(ann, tmp_path / "images", resolution=80, hflip=1.0, train=False)
    assert ds[0][1]["boxes"].tolist() == [[4.0, 8.0, 16.0, 28.0]]


def test_predictions_map_back_to_original_coordinates(tmp_path: Path) -> None:
    boxes = [[1.5, 2.25, 10.0, 7.0], [0, 0, 30, 45], [12.3, 30.1, 5.5, 9.9]]
    images = [{"id": 5, "file_name": "odd.png"}]
    anns = [_ann(i, 5, 1, b) for i, b in enumerate(boxes)]
    ann = write_coco(tmp_path, images, anns, [{"id": 1, "name": "x"}], sizes={"odd.png": (30, 45)})
    ds = CocoDetection(ann, tmp_path / "images", resolution=64)
    _, t = ds[0]
    assert t["scale"] == pytest.approx(64 / 45)
    back = to_original_coords(t["boxes"], t["scale"], t["orig_size"])
    xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float64)
    torch.testing.assert_close(back, xyxy, atol=1e-5, rtol=0)
    # a prediction reaching into the padding is clipped to the original image (30 x 45)
    out = to_original_coords(torch.tensor([[-3.0, 10.0, 64.0, 64.0]]), t["scale"], t["orig_size"])
    assert out.tolist() == [[0.0, 10 * 45 / 64, 30.0, 45.0]]


def test_zero_size_boxes_dropped_and_counted_with_one_warning(tmp_path: Path) -> None:
    anns = [_ann(1, 1, 1, [1, 1, 0, 5]), _ann(2, 1, 1, [1, 1, 5, -2]), _ann(3, 1, 1, [1, 1, 5, 5])]
    ann = write_coco(tmp_path, [{"id": 1, "file_name": "a.png"}], anns, [{"id": 1, "name": "x"}])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(ann, tmp_path / "images", resolution=32)
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "dropped 2" in msgs[0] and str(ann) in msgs[0]
    assert ds.num_dropped == 2 and len(ds[0][1]["boxes"]) == 1


def test_collate_and_seeded_order(tmp_path: Path) -> None:
    images = [{"id": i, "file_name": f"{i}.png"} for i in range(8)]
    ann = write_coco(tmp_path, images, [], [{"id": 1, "name": "x"}], sizes={f"{i}.png": (16, 16) for i in range(8)})
    ds = CocoDetection(ann, tmp_path / "images", resolution=16)

    def order(seed: int, epoch: int) -> list[int]:
        loader = make_loader(ds, batch_size=3, shuffle=True, seed=seed)
        set_loader_epoch(loader, seed=seed, epoch=epoch)
        batches = list(loader)
        assert all(isinstance(imgs, list) and len(imgs) == len(tg) for imgs, tg in batches)
        return [t["image_id"] for _, tg in batches for t in tg]

    assert order(0, 1) == order(0, 1)
    assert sorted(order(0, 1)) == list(range(8))
    assert order(0, 1) != order(0, 2)
    assert order(0, 1) != order(1, 1)
    imgs, tgts = collate_fn([ds[0], ds[1]])
    assert len(imgs) == 2 and tgts[1]["image_id"] == 1


def test_max_images_and_category_mismatch(basic: Path, tmp_path: Path) -> None:
    ds = CocoDetection(basic, basic.parent / "images", resolution=32, max_images=2)
    assert len(ds) == 2
    other = tmp_path / "other"
    other.mkdir()
    ann2 = write_coco(other, [{"id": 1, "file_name": "a.png"}], [], [{"id": 3, "name": "circle"}])
    with pytest.raises(DatasetError, match="categories"):
        ds.check_categories(CocoDetection(ann2, other / "images", resolution=32))


# ------------------------------------------------------------------ bad input
def _edit(basic: Path, **changes) -> Path:
    data = json.loads(basic.read_text())
    data.update(changes)
    basic.write_text(json.dumps(data))
    return basic


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda p: p.unlink(), r"ann\.json: annotation file not found"),
        (lambda p: p.write_text('{"images": [,]}'), r"ann\.json: not valid JSON \(line 1, column 13"),
        (lambda p: p.write_text('{"annotations": [], "categories": []}'), r"ann\.json: missing top-level key 'images'"),
        (lambda p: p.write_text('{"images": [], "categories": []}'), r"ann\.json: missing top-level key 'annotations'"),
        (lambda p: _edit(p, annotations=[_ann(9, 10, 99, [1, 1, 2, 2])]),
         r"ann\.json: annotations\[0\] \(id 9\): category_id 99 is not in 'categories'"),
        (lambda p: _edit(p, annotations=[_ann(9, 77, 3, [1, 1, 2, 2])]),
         r"ann\.json: annotations\[0\] \(id 9\): image_id 77 is not in 'images'"),
        (lambda p: _edit(p, annotations=[{"id": 9, "image_id": 10, "category_id": 3}]),
         r"ann\.json: annotations\[0\] \(id 9\) has no 'bbox' field"),
        (lambda p: _edit(p, annotations=[{**_ann(9, 10, 3, [1, 1, 2, 2]), "bbox": [1, 1, 2]}]), r"annotations\[0\] \(id 9\): 'bbox' must be 4"),
        (lambda p: (p.parent / "images" / "b.png").unlink(), r"b\.png: image file not found"),
        # the checks evaluation makes too (one validator): COCOeval would fail on these later
        (lambda p: _edit(p, annotations=[_ann(9, 10, 3, [1, 1, 2, 2]) | {"area": "4"}]),
         r"ann\.json: annotations\[0\] \(id 9\): area must be a number, not NaN or infinite, got '4'"),
        (lambda p: _edit(p, categories=[{"id": 3, "name": "a"}, {"id": 7, "name": "a"}, {"id": 12, "name": "b"}]),
         r"ann\.json: categories\[1\]\.name 'a' is used twice"),
    ],
)
def test_bad_input_names_file_and_field(basic: Path, mutate, pattern: str) -> None:
    mutate(basic)
    with pytest.raises(DatasetError, match=pattern):
        CocoDetection(basic, basic.parent / "images", resolution=32)


def test_parsed_gt_is_used_as_given(basic: Path) -> None:
    """A trial parses its val file once and hands the dict to the dataset and the evaluator."""
    from sweeper.tasks.detection.coco_eval import load_coco_gt

    from_path = CocoDetection(basic, basic.parent / "images", resolution=32)
    gt = load_coco_gt(basic)
    before = json.dumps(gt)
    basic.unlink()  # only the dict is read; the path still names it in messages
    ds = CocoDetection(basic, basic.parent / "images", resolution=32, gt=gt)
    assert json.dumps(gt) == before  # not modified: the evaluator reads the same dict
    assert (ds.categories, ds.images) == (from_path.categories, from_path.images)
    gt["annotations"][0]["area"] = float("nan")
    with pytest.raises(DatasetError, match=r"ann\.json: annotations\[0\] \(id 1\): area must be a number"):
        CocoDetection(basic, basic.parent / "images", resolution=32, gt=gt)


def test_one_error_type_for_coco_input() -> None:
    from sweeper.tasks.detection.coco_eval import CocoFormatError

    assert DatasetError is CocoFormatError and issubclass(DatasetError, ValueError)


def test_unreadable_image_names_the_file(basic: Path) -> None:
    (basic.parent / "images" / "b.png").write_bytes(b"this is not a png")
    ds = CocoDetection(basic, basic.parent / "images", resolution=32)
    with pytest.raises(DatasetError, match=r"b\.png: cannot read image"):
        ds[1]
