"""Confusion matrix on constructed cases whose matrices are counted by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sweeper.tasks.detection.confusion import box_iou, confusion_from_coco, confusion_matrix, write_confusion

CAT, DOG, BIRD, BG = 0, 1, 2, 3
NAMES = ["cat", "dog", "bird"]


def gt(boxes, labels, iscrowd=None):
    out = {"boxes": np.array(boxes, float).reshape(-1, 4), "labels": np.array(labels, int)}
    if iscrowd is not None:
        out["iscrowd"] = np.array(iscrowd, bool)
    return out


def dt(boxes, labels, scores):
    return {"boxes": np.array(boxes, float).reshape(-1, 4), "labels": np.array(labels, int),
            "scores": np.array(scores, float)}


# Four images covering each rule once; the expected matrix is counted by hand below.
GT = {
    1: gt([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [100, 100, 120, 120]], [CAT, DOG, BIRD, DOG]),
    3: gt([[0, 0, 8, 8]], [BIRD]),                                     # no detections: a miss
    4: gt([[0, 0, 100, 100]], [CAT], iscrowd=[True]),                  # a crowd region
}
DETS = {
    1: dt([[0, 0, 10, 10],        # cat on the cat                     -> [cat, cat]
           [20, 20, 30, 31],      # cat on the dog (IoU 0.91)          -> [dog, cat]
           [70, 70, 80, 80],      # dog on nothing                     -> [bg, dog]
           [50, 50, 60, 60],      # bird on the bird, score 0.2 < 0.3  -> left out: the bird is a miss
           [100, 100, 120, 120],  # dog on the dog                     -> [dog, dog]
           [101, 101, 121, 121]], # second dog on the same dog         -> [bg, dog]
          [CAT, CAT, DOG, BIRD, DOG, DOG], [0.9, 0.8, 0.7, 0.2, 0.95, 0.6]),
    2: dt([[5, 5, 15, 15]], [CAT], [0.5]),                             # image without GT -> [bg, cat]
    4: dt([[10, 10, 20, 20],      # inside the crowd region: dropped, not a false positive
           [200, 200, 210, 210]], # far from it                        -> [bg, dog]
          [DOG, DOG], [0.9, 0.9]),
}
EXPECTED = np.array([
    #  cat dog bird bg     <- predicted
    [1, 0, 0, 0],   # cat
    [1, 1, 0, 0],   # dog
    [0, 0, 0, 2],   # bird: missed in images 1 and 3
    [1, 3, 0, 0],   # background: false positives
])


def test_hand_counted_case():
    m = confusion_matrix(GT, DETS, num_classes=3, iou=0.5, score=0.3)
    assert m.dtype == np.int64
    np.testing.assert_array_equal(m, EXPECTED)
    # every non-crowd GT is in exactly one cell of its row
    assert m[:BG].sum() == 5  # the non-crowd GT boxes


def test_score_threshold_is_inclusive_and_moves_cells():
    at = confusion_matrix(GT, DETS, 3, iou=0.5, score=0.2)  # the bird detection (0.2) now counts
    assert at[BIRD, BIRD] == 1 and at[BIRD, BG] == 1
    strict = confusion_matrix(GT, DETS, 3, iou=0.5, score=0.85)  # keeps 0.9, 0.95 only
    np.testing.assert_array_equal(strict, np.array([
        [1, 0, 0, 0],
        [0, 1, 0, 1],   # the dog found as a cat (0.8) is now a miss
        [0, 0, 0, 2],
        [0, 1, 0, 0],   # only the far dog in image 4 (0.9)
    ]))


def test_highest_iou_wins_not_gt_order():
    # The detection overlaps GT 0 (IoU 0.67) and GT 1 (IoU 1): it goes to GT 1, GT 0 is a miss.
    g = {1: gt([[0, 0, 10, 10], [2, 0, 12, 10]], [CAT, DOG])}
    d = {1: dt([[2, 0, 12, 10]], [DOG], [0.9])}
    np.testing.assert_array_equal(confusion_matrix(g, d, 2), [[0, 0, 1], [0, 1, 0], [0, 0, 0]])


def test_equal_iou_goes_to_the_higher_score():
    g = {1: gt([[0, 0, 10, 10]], [CAT])}
    d = {1: dt([[0, 0, 10, 10], [0, 0, 10, 10]], [DOG, CAT], [0.4, 0.8])}
    np.testing.assert_array_equal(confusion_matrix(g, d, 2), [[1, 0, 0], [0, 0, 0], [0, 1, 0]])


def test_iou_threshold_is_inclusive():
    g = {1: gt([[0, 0, 10, 10]], [CAT])}
    d = {1: dt([[0, 0, 10, 5]], [CAT], [0.9])}  # IoU exactly 0.5
    assert confusion_matrix(g, d, 1, iou=0.5)[0, 0] == 1
    np.testing.assert_array_equal(confusion_matrix(g, d, 1, iou=0.51), [[0, 1], [1, 0]])


def test_no_boxes_anywhere():
    m = confusion_matrix({1: gt([], [])}, {}, 2)
    np.testing.assert_array_equal(m, np.zeros((3, 3), int))


def test_box_iou():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], float)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], float)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0], [0, 0]])


def test_coco_inputs_give_the_same_matrix():
    """The same case as COCO dicts (xywh, non-contiguous category ids sorted into rows)."""
    cat_ids = {CAT: 3, DOG: 7, BIRD: 11}
    coco = {"images": [{"id": i} for i in (1, 2, 3, 4)],
            "categories": [{"id": 11, "name": "bird"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
            "annotations": []}
    for image_id, g in GT.items():
        crowd = g.get("iscrowd", np.zeros(len(g["labels"]), bool))
        for box, label, c in zip(g["boxes"], g["labels"], crowd):
            x1, y1, x2, y2 = box.tolist()
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                        "category_id": cat_ids[int(label)], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                        "area": (x2 - x1) * (y2 - y1), "iscrowd": int(c)})
    results = []
    for image_id, d in DETS.items():
        for box, label, s in zip(d["boxes"], d["labels"], d["scores"]):
            x1, y1, x2, y2 = box.tolist()
            results.append({"image_id": image_id, "category_id": cat_ids[int(label)],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)})
    results.append({"image_id": 1, "category_id": 99, "bbox": [0, 0, 5, 5], "score": 0.9})  # unknown class
    m, names = confusion_from_coco(coco, results, iou=0.5, score=0.3)
    assert names == NAMES
    np.testing.assert_array_equal(m, EXPECTED)


def test_write_confusion(tmp_path):
    paths = write_confusion(EXPECTED, NAMES, tmp_path / "artifacts", iou=0.5, score=0.3)
    assert [p.name for p in paths] == ["confusion_matrix.json", "confusion_matrix.png"]
    data = json.loads(paths[0].read_text())
    assert data["names"] == ["cat", "dog", "bird", "background"]
    assert data["matrix"] == EXPECTED.tolist()
    assert (data["iou"], data["score"]) == (0.5, 0.3)
    with Image.open(paths[1]) as im:
        assert im.format == "PNG" and im.width > 200 and im.height > 200


@pytest.mark.parametrize("call, message", [
    (lambda: confusion_matrix({1: gt([[0, 0, 1, 1]], [3])}, {}, 3), r"image 1 ground truth.labels: class indices must be in 0..2"),
    (lambda: confusion_matrix({}, {1: dt([[0, 0, 1, 1]], [0], [0.5, 0.6])}, 3), "image 1 detections: boxes, labels and scores differ"),
    (lambda: confusion_matrix({1: {"labels": [0]}}, {}, 3), "image 1 ground truth: missing 'boxes'"),
    (lambda: confusion_matrix({1: {"boxes": [[0, 0, 1]], "labels": [0]}}, {}, 3), r"image 1 ground truth.boxes: expected shape \(N, 4\)"),
    (lambda: confusion_matrix({}, {}, 0), "num_classes: need at least 1"),
    (lambda: confusion_matrix({}, {}, 2, iou=0), "iou: need 0 < iou <= 1"),
    (lambda: write_confusion(np.zeros((3, 3)), NAMES, "unused", iou=0.5, score=0.3), r"expected shape \(4, 4\)"),
])
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
