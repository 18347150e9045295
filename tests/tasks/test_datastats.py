"""Dataset size statistics on a hand-made COCO file whose buckets and histogram are counted by hand."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sweeper.tasks.detection.coco_eval import CocoFormatError
from sweeper.tasks.detection.datastats import (
    bucket_names,
    dataset_stats,
    parse_thresholds,
    plot_histogram,
    render_stats,
)


def ann(i, image, cat, w, h, area=None, crowd=0):
    out = {"id": i, "image_id": image, "category_id": cat, "bbox": [0, 0, w, h], "iscrowd": crowd}
    if area is not None:
        out["area"] = area
    return out


#  box                                   sqrt-area   bucket (32, 96)
HAND = {
    "images": [{"id": i} for i in (1, 2, 3, 4)],
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    "annotations": [
        ann(1, 1, 1, 10, 10, area=100),     # 10         small
        ann(2, 1, 1, 40, 40),               # 40 (w*h)   medium: no area field, the box decides
        ann(3, 2, 2, 32, 32, area=1024),    # 32         medium: lo <= size < hi
        ann(4, 2, 2, 96, 96, area=9216),    # 96         large
        ann(5, 2, 2, 100, 100, area=400),   # 20         small: the area field wins over the box
        ann(6, 3, 1, 100, 100, area=10000, crowd=1),  # left out; image 3 then has no boxes
    ],                                      # image 4: no annotations at all
}


@pytest.fixture()
def hand_file(tmp_path: Path) -> Path:
    path = tmp_path / "hand.json"
    path.write_text(json.dumps(HAND))
    return path


def test_hand_counted_stats(hand_file):
    s = dataset_stats(hand_file, bins=(0, 16, 32, 64))
    assert (s["images"], s["boxes"], s["crowd_boxes"], s["images_without_boxes"]) == (4, 5, 1, 2)
    assert s["buckets"] == ["small", "medium", "large"]
    assert s["per_class"] == {"cat": {"small": 1, "medium": 1, "large": 0, "total": 2},
                              "dog": {"small": 1, "medium": 1, "large": 1, "total": 3}}
    assert s["totals"] == {"small": 2, "medium": 2, "large": 1}
    # sides 10, 20 | 32, 40 | 96 -> [0,16) [16,32) [32,64) [64,inf)
    assert s["histogram"] == {"edges": [0.0, 16.0, 32.0, 64.0, None], "counts": [1, 1, 2, 1]}
    assert (s["min"], s["max"], s["mean"], s["percentiles"]["p50"]) == (10.0, 96.0, 39.6, 32.0)
    assert s["boxes_per_image"] == {"mean": 1.25, "max": 3}
    json.dumps(s)  # JSON-ready as returned


def test_custom_thresholds(hand_file):
    s = dataset_stats(hand_file, thresholds=(16, 32, 96))
    assert s["buckets"] == ["0-16", "16-32", "32-96", ">=96"]
    assert s["totals"] == {"0-16": 1, "16-32": 1, "32-96": 2, ">=96": 1}
    assert s["per_class"]["dog"] == {"0-16": 0, "16-32": 1, "32-96": 1, ">=96": 1, "total": 3}


def test_default_bins_cover_every_box(shared_fixtures):
    s = dataset_stats(shared_fixtures / "coco_fake100" / "instances_val2014_100.json")
    # fixtures/README.md: 839 annotations, 9 of them crowd
    assert (s["boxes"], s["crowd_boxes"]) == (830, 9)
    assert sum(s["histogram"]["counts"]) == sum(s["totals"].values()) == 830
    assert sum(row["total"] for row in s["per_class"].values()) == 830
    assert len(s["per_class"]) == 80


def test_empty_dataset(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}], "annotations": []}))
    s = dataset_stats(path)
    assert s["boxes"] == 0 and s["images_without_boxes"] == 1 and s["percentiles"] == {} and s["min"] is None
    assert s["per_class"] == {"a": {"small": 0, "medium": 0, "large": 0, "total": 0}}
    assert "0 boxes" in render_stats(s)


def test_render_and_plot(hand_file, tmp_path):
    s = dataset_stats(hand_file)
    text = render_stats(s)
    assert "4 images, 5 boxes (1 crowd boxes left out), 2 images without boxes" in text
    assert "small" in text and "32-96" in text and "2 (40%)" in text
    assert "histogram of sqrt(area)" in text
    path = plot_histogram(s, tmp_path / "plots" / "sizes.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 300


@pytest.mark.parametrize("thresholds, expected", [
    ([32, 96], ["small", "medium", "large"]),
    ([16], ["0-16", ">=16"]),
    ([8, 16.5, 32], ["0-8", "8-16.5", "16.5-32", ">=32"]),
])
def test_bucket_names(thresholds, expected):
    assert bucket_names(thresholds) == expected


def test_parse_thresholds():
    assert parse_thresholds("32,96") == (32.0, 96.0)
    assert parse_thresholds(" 8, 16 ,32") == (8.0, 16.0, 32.0)
    for bad in ("a,b", "96,32", "0,32", "", "32,32"):
        with pytest.raises(ValueError, match="--thresholds"):
            parse_thresholds(bad)


@pytest.mark.parametrize("text, message", [
    ("{", "not valid JSON"),
    ("[]", "must be a JSON object"),
    ('{"images": [], "categories": []}', "missing top-level key 'annotations'"),
    (json.dumps({**HAND, "annotations": [{"id": 1, "image_id": 1, "category_id": 1}]}), "annotations[0] is missing 'bbox'"),
    (json.dumps({**HAND, "annotations": [ann(1, 1, 1, 4, 4) | {"bbox": [0, 0, 4]}]}), "annotations[0].bbox must be 4 numbers"),
    (json.dumps({**HAND, "annotations": [ann(1, 1, 1, 4, 4, area="big")]}), "annotations[0].area must be a number"),
    (json.dumps({**HAND, "annotations": [ann(1, 1, 7, 4, 4)]}), "annotations[0].category_id 7 is not in 'categories'"),
    (json.dumps({**HAND, "annotations": [ann(1, 9, 1, 4, 4)]}), "annotations[0].image_id 9 is not in 'images'"),
])
def test_bad_files_name_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(CocoFormatError) as err:
        dataset_stats(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(CocoFormatError, match="nope.json: COCO annotation file not found"):
        dataset_stats(tmp_path / "nope.json")
