"""evaluate_coco must give pycocotools' numbers with either backend: the official fake-results
fixture, the edge cases in ../shared/fixtures/coco_edge_cases, per-class AP, custom area ranges
(fixtures/README.md, section 1), and the same clean errors."""
from __future__ import annotations

import contextlib
import copy
import gc
import io
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from sweeper.tasks.detection import coco_eval
from sweeper.tasks.detection.coco_eval import (
    BACKENDS,
    STAT_NAMES,
    CocoFormatError,
    evaluate_coco,
    load_coco_gt,
    load_detections,
    resolve_backend,
)

TOL = 1e-12
FAKE100_BBOX = [
    0.5045806987249628, 0.6969727247299577, 0.5729816669904824, 0.5856257209410443,
    0.5193996948036719, 0.5013978986347466, 0.38681277964578054, 0.5936795762842003,
    0.595352982877607, 0.6398109626113442, 0.5664205978994309, 0.5642905982905982,
]
# fixture key -> our metric name
FIXTURE_KEYS = dict(zip(
    ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
     "AR_1", "AR_10", "AR_100", "AR_small", "AR_medium", "AR_large"],
    STAT_NAMES,
))
EDGE_CASES = [
    "A_torchmetrics_inputs_4imgs", "B_missing_pred", "C_missing_gt_fp_on_empty_image",
    "D_iscrowd_ignore", "E_area_boundaries_32sq_96sq", "F_gt_area_field_not_bbox",
    "G_maxdets_rank11", "H_empty_predictions",
]


@pytest.fixture(scope="module")
def fake100(shared_fixtures: Path) -> tuple[dict, list[dict]]:
    folder = shared_fixtures / "coco_fake100"
    return (load_coco_gt(folder / "instances_val2014_100.json"),
            load_detections(folder / "instances_val2014_fakebbox100_results.json"))


def _pycocotools_eval(gt: dict, dets: list[dict], **params):
    """Plain pycocotools, as the fixture README describes, for cross-checks."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        for key, value in params.items():
            setattr(ev.params, key, value)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


# ---------------------------------------------------------------------------------- references
@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def test_fake100_bbox_stats(fake100, backend):
    gt, dets = fake100
    metrics = evaluate_coco(gt, dets, backend=backend)
    assert [metrics[name] for name in STAT_NAMES] == pytest.approx(FAKE100_BBOX, abs=TOL, rel=0)


def test_fake100_from_paths_and_inputs_untouched(shared_fixtures, fake100, backend):
    gt, dets = fake100
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    from_dict = evaluate_coco(gt, dets, backend=backend)
    assert gt == gt_before and dets == dets_before  # the eval grid reuses both
    path = shared_fixtures / "coco_fake100" / "instances_val2014_100.json"
    assert evaluate_coco(path, dets, backend=backend) == from_dict
    assert evaluate_coco(str(path), dets, backend=backend) == from_dict


@pytest.mark.parametrize("case", EDGE_CASES)
def test_edge_cases(shared_fixtures, case, backend):
    data = json.loads((shared_fixtures / "coco_edge_cases" / f"{case}.json").read_text())
    expected = data["expected_pycocotools_2_0_11"]
    if isinstance(expected, str):
        # H: pycocotools' loadRes([]) crashes; the README asks for faster-coco-eval's answer
        # (0 where there is GT, -1 where there is none), which pycocotools itself gives
        # when handed an empty result index.
        assert not data["dt"] and "IndexError" in expected
        expected = data["expected_faster_coco_eval_1_8_0"]
    metrics = evaluate_coco(data["gt"], data["dt"], backend=backend)
    for key, value in expected.items():
        assert metrics[FIXTURE_KEYS[key]] == pytest.approx(value, abs=TOL, rel=0), key


def test_custom_area_ranges(fake100, backend):
    """fixtures/README.md section 1, custom area ranges (pycocotools 2.0.11 and faster_coco_eval's
    own tests/test_ranges.py)."""
    gt, dets = fake100
    ranges = {"nano": [0, 8], "micro": [8, 16], "small16": [16, 32]}
    metrics = evaluate_coco(gt, dets, area_ranges=ranges, backend=backend)
    expected = {
        "map_nano": 0.5113353643056613, "map_micro": 0.6140617632744609, "map_small16": 0.5922324594181128,
        "ar_nano": 0.5275641025641026, "ar_micro": 0.6357804552804553, "ar_small16": 0.6244558281224948,
    }
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=TOL, rel=0), key
    # the standard 12 stats do not move when ranges are added
    assert [metrics[name] for name in STAT_NAMES] == pytest.approx(FAKE100_BBOX, abs=TOL, rel=0)


def test_custom_range_equal_to_standard_matches_it(fake100, backend):
    gt, dets = fake100
    metrics = evaluate_coco(gt, dets, area_ranges={"mid": [32, 96], "big": [96, None]}, backend=backend)
    assert metrics["map_mid"] == metrics["map_medium"] and metrics["ar_mid"] == metrics["ar_medium"]
    assert metrics["map_big"] == metrics["map_large"] and metrics["ar_big"] == metrics["ar_large"]


# ---------------------------------------------------------------------------------- per class
def test_per_class_ap_matches_pycocotools(fake100, backend):
    gt, dets = fake100
    metrics = evaluate_coco(gt, dets, backend=backend)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    assert {k for k in metrics if k.startswith("ap/")} == {f"ap/{n}" for n in names.values()}

    ev = _pycocotools_eval(gt, dets)
    for k, cat_id in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k, 0, -1]
        expected = float(np.mean(p[p > -1])) if (p > -1).any() else -1.0
        assert metrics[f"ap/{names[cat_id]}"] == pytest.approx(expected, abs=TOL, rel=0)

    # independent route: pycocotools restricted to one category reports that AP as stats[0]
    one = _pycocotools_eval(gt, dets, catIds=[1])
    assert metrics[f"ap/{names[1]}"] == pytest.approx(one.stats[0], abs=TOL, rel=0)

    # -1 exactly where the category has no (non-crowd) GT
    with_gt = {a["category_id"] for a in gt["annotations"] if not a.get("iscrowd")}
    for cat_id, name in names.items():
        assert (metrics[f"ap/{name}"] == -1.0) == (cat_id not in with_gt), name


# ---------------------------------------------------------------------------------- behaviour
def test_empty_detections_on_real_gt(fake100, backend):
    gt, _ = fake100
    metrics = evaluate_coco(gt, [], backend=backend)
    assert all(metrics[name] == 0.0 for name in STAT_NAMES)
    with_gt = {c["name"] for c in gt["categories"]
               if any(a["category_id"] == c["id"] and not a["iscrowd"] for a in gt["annotations"])}
    for cat in gt["categories"]:
        assert metrics[f"ap/{cat['name']}"] == (0.0 if cat["name"] in with_gt else -1.0)


def test_no_stdout_or_log_noise(fake100, backend, capsys, caplog):
    gt, dets = fake100
    with caplog.at_level(logging.INFO):
        evaluate_coco(gt, dets[:20], backend=backend)
        evaluate_coco(gt, [], backend=backend)
    assert capsys.readouterr().out == ""
    assert caplog.records == []


def test_missing_iscrowd_means_not_crowd(shared_fixtures, backend):
    data = json.loads((shared_fixtures / "coco_edge_cases" / "B_missing_pred.json").read_text())
    stripped = copy.deepcopy(data["gt"])
    for ann in stripped["annotations"]:
        ann.pop("iscrowd", None)
    assert evaluate_coco(stripped, data["dt"], backend=backend) == evaluate_coco(data["gt"], data["dt"], backend=backend)


def test_numpy_scalars_accepted(backend):
    gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "area": 1600}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [np.float32(0), 0.0, 40.0, 40.0], "score": np.float32(0.9)}]
    assert evaluate_coco(gt, dets, backend=backend)["map"] == pytest.approx(1.0, abs=1e-12)


def _random_case(seed: int, images: int = 40, cats: int = 3) -> tuple[dict, list[dict]]:
    """GT boxes of many sizes (some crowd, some images empty) and jittered, relabelled and
    spurious detections: enough variety that every branch of the matcher runs."""
    rng = np.random.default_rng(seed)
    gt = {"images": [{"id": i} for i in range(1, images + 1)],
          "categories": [{"id": c, "name": f"c{c}"} for c in range(1, cats + 1)], "annotations": []}
    dets = []
    for img in range(1, images + 1):
        for _ in range(int(rng.integers(0, 6))):
            side = float(np.exp(rng.uniform(np.log(4), np.log(200))))
            w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
            x, y = rng.uniform(0, 400, size=2)
            cat = int(rng.integers(1, cats + 1))
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": img, "category_id": cat,
                                      "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.05)})
            for _ in range(int(rng.integers(0, 3))):
                jit = rng.normal(0, 0.15 * side, size=4)
                dets.append({"image_id": img, "category_id": cat if rng.random() < 0.8 else int(rng.integers(1, cats + 1)),
                             "bbox": [x + jit[0], y + jit[1], max(1.0, w + jit[2]), max(1.0, h + jit[3])],
                             "score": float(rng.random())})
        for _ in range(int(rng.integers(0, 3))):
            dets.append({"image_id": img, "category_id": int(rng.integers(1, cats + 1)),
                         "bbox": [*rng.uniform(0, 400, size=2), *rng.uniform(2, 60, size=2)], "score": float(rng.random())})
    return gt, dets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_backends_agree_on_random_cases(seed):
    gt, dets = _random_case(seed)
    ranges = {"tiny": [0, 12], "mid": [12, 64], "huge": [150, None]}
    fast = evaluate_coco(gt, dets, area_ranges=ranges, backend="faster_coco_eval")
    ref = evaluate_coco(gt, dets, area_ranges=ranges, backend="pycocotools")
    assert fast.keys() == ref.keys()
    assert [fast[k] for k in ref] == pytest.approx([ref[k] for k in ref], abs=TOL, rel=0)
    # and pycocotools' own summarize() gives the same 12 stats, bit for bit
    assert [ref[name] for name in STAT_NAMES] == list(_pycocotools_eval(gt, dets).stats)


def test_gt_annotation_id_zero_is_not_a_miss(backend):
    """Both libraries mark a detection matched by storing the GT id: id 0 would read as
    'unmatched' and score a perfect detection 0. We renumber, so it scores 1."""
    gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 0, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "area": 1600,
                           "iscrowd": 0}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "score": 0.9}]
    assert _pycocotools_eval(gt, dets).stats[0] == 0.0  # the library bug this guards against
    assert evaluate_coco(gt, dets, backend=backend)["map"] == pytest.approx(1.0, abs=TOL)


def test_string_ids_same_as_int_ids(backend):
    gt, dets = _random_case(3, images=12)
    as_str = copy.deepcopy(gt)
    for img in as_str["images"]:
        img["id"] = f"img{img['id']:03d}"  # zero-padded: string order = numeric order
    for ann in as_str["annotations"]:
        ann["image_id"] = f"img{ann['image_id']:03d}"
    str_dets = [{**d, "image_id": f"img{d['image_id']:03d}"} for d in dets]
    assert evaluate_coco(as_str, str_dets, backend=backend) == evaluate_coco(gt, dets, backend=backend)


def test_detections_of_unknown_category_are_ignored(backend):
    gt, dets = _random_case(4, images=10)
    extra = [{**d, "category_id": 99} for d in dets[:5]]
    assert evaluate_coco(gt, dets + extra, backend=backend) == evaluate_coco(gt, dets, backend=backend)
    assert evaluate_coco(gt, extra, backend=backend) == evaluate_coco(gt, [], backend=backend)


def test_ignore_field_follows_iscrowd_in_both_backends(shared_fixtures):
    """faster-coco-eval can honour a GT 'ignore' flag, pycocotools overwrites it with iscrowd:
    we drop it, so both give pycocotools' numbers."""
    data = json.loads((shared_fixtures / "coco_edge_cases" / "A_torchmetrics_inputs_4imgs.json").read_text())
    flagged = copy.deepcopy(data["gt"])
    for ann in flagged["annotations"][::2]:
        ann["ignore"] = 1
    plain = evaluate_coco(data["gt"], data["dt"], backend="pycocotools")
    for backend in BACKENDS:
        assert evaluate_coco(flagged, data["dt"], backend=backend) == pytest.approx(plain, abs=TOL, rel=0)


def test_garbage_collector_state_is_restored(backend):
    """evaluate_coco pauses the cyclic GC for speed; it must hand back the state it found,
    also when the evaluation raises."""
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.5}]
    assert gc.isenabled()
    evaluate_coco(GOOD_GT, dets, backend=backend)
    assert gc.isenabled()
    gc.disable()
    try:
        evaluate_coco(GOOD_GT, dets, backend=backend)
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(CocoFormatError):
        evaluate_coco({**GOOD_GT, "images": [{"id": 1}, {"id": "x"}]}, dets, backend=backend)
    assert gc.isenabled()


# ---------------------------------------------------------------------------------- backends
def test_resolve_backend():
    assert resolve_backend("pycocotools") == "pycocotools"
    assert resolve_backend("faster_coco_eval") == "faster_coco_eval"  # installed in this environment
    with pytest.raises(ValueError, match="eval.backend: unknown COCO evaluation backend 'coco'"):
        resolve_backend("coco")
    with pytest.raises(ValueError, match="unknown COCO evaluation backend"):
        evaluate_coco(GOOD_GT, [], backend="fast")


def test_missing_faster_coco_eval_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # makes `import faster_coco_eval` fail
    monkeypatch.setattr(coco_eval, "_fallback_warned", False)
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.5}]
    with pytest.warns(RuntimeWarning, match="faster-coco-eval is not installed; evaluating with pycocotools"):
        metrics = evaluate_coco(GOOD_GT, dets)
    assert metrics == evaluate_coco(GOOD_GT, dets, backend="pycocotools")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call stays quiet
        assert resolve_backend("faster_coco_eval") == "pycocotools"


# ---------------------------------------------------------------------------------- errors
GOOD_GT = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16}]}


@pytest.mark.parametrize("text, message", [
    ('{"images": [', "not valid JSON (line 1"),
    ("[]", "must be a JSON object"),
    ('{"images": [], "categories": []}', "missing top-level key 'annotations'"),
    ('{"images": {}, "categories": [], "annotations": []}', "'images' must be a list"),
    (json.dumps({**GOOD_GT, "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]}]}),
     "annotations[0] is missing 'area'"),
    (json.dumps({**GOOD_GT, "categories": [{"id": 1}]}), "categories[0] is missing 'name'"),
    (json.dumps({**GOOD_GT, "annotations": [{**GOOD_GT["annotations"][0], "bbox": [0, 0, 4]}]}),
     "annotations[0].bbox must be 4 numbers"),
    (json.dumps({**GOOD_GT, "annotations": [{**GOOD_GT["annotations"][0], "image_id": 9}]}),
     "annotations[0].image_id 9 is not in 'images'"),
    (json.dumps({**GOOD_GT, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}]}), "used twice"),
    (json.dumps({**GOOD_GT, "images": [{"id": 1}, {"id": 1}]}), "images[1]: duplicate image id 1"),
    # a string or non-finite area used to pass here and fail inside COCOeval
    (json.dumps({**GOOD_GT, "annotations": [{**GOOD_GT["annotations"][0], "area": "16"}]}),
     "annotations[0].area must be a number"),
    (json.dumps({**GOOD_GT, "annotations": [{**GOOD_GT["annotations"][0], "area": float("nan")}]}),
     "annotations[0].area must be a number, not NaN or infinite, got nan"),
    (json.dumps({**GOOD_GT, "annotations": [{**GOOD_GT["annotations"][0], "area": float("inf")}]}),
     "annotations[0].area must be a number, not NaN or infinite, got inf"),
    (json.dumps({**GOOD_GT, "annotations": [{**GOOD_GT["annotations"][0], "bbox": [0, 0, float("nan"), 4]}]}),
     "annotations[0].bbox must be 4 numbers"),
])
def test_bad_gt_file(tmp_path, text, message, backend):
    path = tmp_path / "gt.json"
    path.write_text(text)
    with pytest.raises(CocoFormatError) as err:
        load_coco_gt(path)
    assert str(path) in str(err.value) and message in str(err.value)
    with pytest.raises(CocoFormatError, match="gt.json"):
        evaluate_coco(path, [], backend=backend)


@pytest.mark.parametrize("area", ["16", None, float("nan"), float("-inf")])
def test_bad_area_in_a_gt_dict_is_refused_before_cocoeval(area, backend):
    gt = {**GOOD_GT, "annotations": [{**GOOD_GT["annotations"][0], "area": area}]}
    with pytest.raises(CocoFormatError, match=r"<ground truth>: annotations\[0\]\.area must be a number"):
        evaluate_coco(gt, [], backend=backend)


@pytest.mark.parametrize("payload, message", [
    ({"image_id": 1}, "must be a JSON list"),
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}], "detection [0] is missing 'score'"),
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}], "detection [0].bbox must be 4 numbers"),
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": "high"}], "score must be a finite number"),
    ([7], "detection [0] must be an object"),
])
def test_bad_detections_file(tmp_path, payload, message):
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(CocoFormatError) as err:
        load_detections(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_files_name_the_path(tmp_path):
    for loader in (load_coco_gt, load_detections):
        with pytest.raises(CocoFormatError, match="nope.json: .*not found"):
            loader(tmp_path / "nope.json")
    assert issubclass(CocoFormatError, ValueError)


def test_detection_on_unknown_image(backend):
    dets = [{"image_id": 5, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.5}]
    with pytest.raises(CocoFormatError, match=r"detection \[0\].image_id 5 is not a ground-truth image"):
        evaluate_coco(GOOD_GT, dets, backend=backend)


def test_unsortable_ids(backend):
    gt = {**GOOD_GT, "images": [{"id": 1}, {"id": "two"}]}
    with pytest.raises(CocoFormatError, match="must be all numbers or all strings"):
        evaluate_coco(gt, [], backend=backend)


@pytest.mark.parametrize("ranges, message", [
    ({"small": [0, 16]}, "standard COCO range"),
    ({"x": [16, 8]}, "0 <= lo < hi"),
    ({"x": [1, 2, 3]}, r"expected \[lo, hi\]"),
])
def test_bad_area_ranges(ranges, message, backend):
    with pytest.raises(ValueError, match=message):
        evaluate_coco(GOOD_GT, [], area_ranges=ranges, backend=backend)
