"""ICDAR-2015 IoU Hmean and mmocr HmeanIOU must give the reference numbers: the official RRC
script on the CLEval Korean receipts (../shared/fixtures/cleval_receipts_kr), mmocr's unit cases
(../shared/fixtures/mmocr_hmean_unit), hand-computed edge cases, and loader errors that name the
file and line."""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sweeper.tasks.dbnet.hmean import (
    TextEvalFormatError,
    TextSample,
    _augmenting_matches,
    greedy_matches,
    icdar15_hmean,
    load_text_eval_pairs,
    max_matches,
    mmocr_hmean,
)

TOL = 1e-9
RECEIPTS_PRH = (0.9288396916386638, 0.8984703632887189, 0.9134026630381961)


def box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Axis-aligned quad, clockwise in image coordinates (y down)."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def flat(coords: list[float]) -> np.ndarray:
    return np.asarray(coords, dtype=np.float64).reshape(-1, 2)


def sample(gt=(), ignore=None, det=(), scores=None, name="img") -> TextSample:
    gt = list(gt)
    ignore = [False] * len(gt) if ignore is None else list(ignore)
    return TextSample(name, gt, ["###" if i else "" for i in ignore], ignore, list(det), det_scores=scores)


def prh(result: dict) -> tuple[float, float, float]:
    return result["precision"], result["recall"], result["hmean"]


# ----------------------------------------------------------------------------- receipts (official script)
@pytest.fixture(scope="module")
def receipts(shared_fixtures: Path) -> Path:
    return shared_fixtures / "cleval_receipts_kr"


@pytest.mark.parametrize("res_zip", ["derived_res_eval_doc_v1_kr_quad_only.zip", "res_eval_doc_v1_kr.zip"])
def test_receipts_match_official_script(receipts: Path, res_zip: str) -> None:
    samples = load_text_eval_pairs(receipts / "gt_eval_doc_v1_kr.zip", receipts / res_zip)
    assert len(samples) == 100
    assert sum(len(s.gt) for s in samples) == 10532 and sum(sum(s.gt_ignore) for s in samples) == 72
    result = icdar15_hmean(samples)
    assert prh(result) == pytest.approx(RECEIPTS_PRH, abs=TOL)
    assert result["invalid_polygons"] == 0

    expected = json.loads((receipts / "expected" / "icdar15_iou_per_sample.json").read_text())
    got = {re.search(r"KR(\d+)$", name).group(1): v for name, v in result["per_image"].items()}
    assert got.keys() == expected.keys()
    for key, exp in expected.items():
        ours = got[key]
        assert (ours["matched"], ours["gt_care"], ours["det_care"]) == (
            exp["detMatched"], exp["gtCare"], exp["detCare"]), key
        assert prh(ours) == pytest.approx((exp["precision"], exp["recall"], exp["hmean"]), abs=TOL), key


def test_receipts_transcriptions_are_loaded(receipts: Path) -> None:
    samples = load_text_eval_pairs(receipts / "gt_eval_doc_v1_kr.zip", receipts / "res_eval_doc_v1_kr.zip")
    first = samples[0]
    assert first.name == "kr_doc_KR03088"
    assert first.gt_texts[0] == "교환/환불/결제변경은" and first.det_texts[0] == "Home plus"
    assert first.det_scores is None and first.gt[0].shape == (4, 2)


def test_receipts_single_file(receipts: Path) -> None:
    samples = load_text_eval_pairs(receipts / "gt_eval_doc_v1_kr_single.zip",
                                   receipts / "res_eval_doc_v1_kr_single.zip")
    expected = json.loads((receipts / "expected" / "icdar15_iou_per_sample.json").read_text())["03088"]
    assert prh(icdar15_hmean(samples)) == pytest.approx(
        (expected["precision"], expected["recall"], expected["hmean"]), abs=TOL)


# ----------------------------------------------------------------------------- mmocr unit cases
@pytest.fixture(scope="module")
def mmocr_cases(shared_fixtures: Path) -> dict:
    return json.loads((shared_fixtures / "mmocr_hmean_unit" / "hmean_iou_cases.json").read_text())


@pytest.mark.parametrize("strategy", ["vanilla", "max_matching"])
def test_mmocr_two_images(mmocr_cases: dict, strategy: str) -> None:
    case = mmocr_cases["case_1_two_images"]
    samples = [
        TextSample(f"img{i}", [flat(p) for p in im["gt_polygons"]], [""] * len(im["gt_polygons"]),
                   im["gt_ignored"], [flat(p) for p in im["pred_polygons"]], det_scores=im["pred_scores"])
        for i, im in enumerate(case["images"])
    ]
    exp = case["expected"]
    assert prh(mmocr_hmean(samples, strategy=strategy)) == pytest.approx(
        (exp["precision"], exp["recall"], exp["hmean"]), abs=1e-15)


def test_mmocr_strategy_on_iou_matrix(mmocr_cases: dict) -> None:
    case = mmocr_cases["case_2_strategy"]
    rows, cols = np.nonzero(np.asarray(case["iou_matrix_gt_by_pred"]) > 0.5)
    assert greedy_matches(rows, cols) == 1
    assert max_matches(rows, cols, 2, 2) == 2
    assert _augmenting_matches(rows, cols, 2) == 2


def test_mmocr_strategy_on_polygons(mmocr_cases: dict) -> None:
    # x-intervals chosen so that IoU > 0.5 exactly where the fixture's matrix has a 1:
    # gt0 [2,12] vs pred0 [4,14], pred1 [0,10] -> 8/12; gt1 [6,16] vs pred0 -> 8/12, vs pred1 -> 4/16
    s = sample(gt=[box(2, 0, 12, 1), box(6, 0, 16, 1)], det=[box(4, 0, 14, 1), box(0, 0, 10, 1)],
               scores=mmocr_cases["case_2_strategy"]["pred_scores"])
    exp_v = mmocr_cases["case_2_strategy"]["expected_vanilla"]
    exp_m = mmocr_cases["case_2_strategy"]["expected_max_matching"]
    assert prh(mmocr_hmean([s])) == (exp_v["precision"], exp_v["recall"], exp_v["hmean"])
    assert prh(mmocr_hmean([s], strategy="max_matching")) == (exp_m["precision"], exp_m["recall"], exp_m["hmean"])
    assert prh(icdar15_hmean([s])) == (0.5, 0.5, 0.5)  # the official protocol is greedy too


def test_db_iou_toy(mmocr_cases: dict) -> None:
    case = mmocr_cases["case_3_db_iou_py_main"]
    s = sample(gt=[np.asarray(g["points"], float) for g in case["gt"]], ignore=[g["ignore"] for g in case["gt"]],
               det=[np.asarray(p["points"], float) for p in case["pred"]])
    exp = (case["expected"]["precision"], case["expected"]["recall"], case["expected"]["hmean"])
    assert prh(icdar15_hmean([s])) == pytest.approx(exp, abs=1e-15)
    assert prh(mmocr_hmean([s])) == pytest.approx(exp, abs=1e-15)


def test_mmocr_score_thresholds() -> None:
    # a low-scoring false positive: dropping it at thr 0.5 gives the best hmean
    s = sample(gt=[box(0, 0, 10, 10)], det=[box(0, 0, 10, 10), box(50, 50, 60, 60)], scores=[0.9, 0.4])
    result = mmocr_hmean([s])
    assert result["score_thr"] == pytest.approx(0.5) and prh(result) == (1.0, 1.0, 1.0)
    # mmocr's np.arange(0.3, 0.9, 0.1) also yields 0.9000000000000001 (float rounding)
    assert [round(r["score_thr"], 6) for r in result["per_thr"]] == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert result["per_thr"][0]["precision"] == 0.5
    with pytest.raises(ValueError, match="strategy"):
        mmocr_hmean([s], strategy="hungarian")


# ----------------------------------------------------------------------------- hand-computed edge cases
def test_empty_image() -> None:
    empty = sample(name="empty")
    alone = icdar15_hmean([empty])
    assert prh(alone["per_image"]["empty"]) == (1.0, 1.0, 1.0)
    assert prh(alone) == (0.0, 0.0, 0.0)  # official: no care GT and no care det anywhere -> 0
    both = icdar15_hmean([empty, sample(gt=[box(0, 0, 10, 10)], det=[box(0, 0, 10, 10)])])
    assert prh(both) == (1.0, 1.0, 1.0)


def test_only_dont_care_gt() -> None:
    dc = box(0, 0, 10, 10)
    covered = icdar15_hmean([sample(gt=[dc], ignore=[True], det=[box(1, 1, 10, 10)], name="a")])
    assert (covered["gt_care"], covered["det_care"]) == (0, 0)
    assert prh(covered["per_image"]["a"]) == (1.0, 1.0, 1.0)
    stray = icdar15_hmean([sample(gt=[dc], ignore=[True], det=[box(50, 50, 60, 60)], name="b")])
    assert prh(stray["per_image"]["b"]) == (0.0, 1.0, 0.0)
    assert prh(stray) == (0.0, 0.0, 0.0)


def test_dont_care_detection_threshold_is_strict() -> None:
    dc = box(0, 0, 10, 10)
    half = icdar15_hmean([sample(gt=[dc], ignore=[True], det=[box(5, 0, 15, 10)])])  # inter/area = 0.5
    assert half["det_care"] == 1
    more = icdar15_hmean([sample(gt=[dc], ignore=[True], det=[box(4, 0, 14, 10)])])  # 0.6
    assert more["det_care"] == 0


def test_many_to_one_counts_one_match() -> None:
    # one det overlapping two (overlapping) GTs with IoU 9/11 each: one-to-one -> one match
    result = icdar15_hmean([sample(gt=[box(0, 0, 10, 1), box(2, 0, 12, 1)], det=[box(1, 0, 11, 1)])])
    assert result["matched"] == 1 and prh(result) == (1.0, 0.5, pytest.approx(2 / 3, abs=1e-15))


def test_iou_threshold_is_strict() -> None:
    # one det over two side-by-side GTs: IoU exactly 0.5 with each -> no match
    result = icdar15_hmean([sample(gt=[box(0, 0, 10, 10), box(10, 0, 20, 10)], det=[box(0, 0, 20, 10)])])
    assert result["matched"] == 0 and prh(result) == (0.0, 0.0, 0.0)


def test_orientation_does_not_matter() -> None:
    gt, det = box(0, 0, 10, 10), box(1, 0, 11, 10)
    cw = icdar15_hmean([sample(gt=[gt], det=[det])])
    ccw = icdar15_hmean([sample(gt=[gt[::-1]], det=[det[::-1]])])
    assert prh(cw) == prh(ccw) == (1.0, 1.0, 1.0)
    assert ccw["invalid_polygons"] == 0


def test_invalid_polygons_are_repaired_and_counted() -> None:
    bow_tie = np.array([[0, 0], [10, 10], [10, 0], [0, 10]], dtype=float)  # two triangles, area 50
    line = np.array([[0, 0], [1, 1], [2, 2], [3, 3]], dtype=float)
    result = icdar15_hmean([sample(gt=[box(0, 0, 10, 10)], det=[bow_tie, line])])
    assert result["invalid_polygons"] == 2
    assert result["det_care"] == 2 and result["matched"] == 0  # IoU of the bow tie = 50/100


def test_sample_length_mismatch() -> None:
    with pytest.raises(ValueError, match="gt_ignore"):
        icdar15_hmean([TextSample("x", [box(0, 0, 1, 1)], [""], [], [])])


# ----------------------------------------------------------------------------- loading
def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def test_folder_pairing_and_line_format(tmp_path: Path) -> None:
    write(tmp_path / "gt" / "gt_img_1.txt",
          '0,0,10,0,10,10,0,10,"a, \\"quoted\\" word"\r\n\r\n20,0,30,0,30,10,20,10,###\r\n', "utf-8-sig")
    write(tmp_path / "gt" / "gt_img_2.txt", "0,0,10,0,10,10,0,10,x,y\n")
    write(tmp_path / "gt" / "readme.md", "not a GT file")
    write(tmp_path / "res" / "res_img_1.txt", "0.5,0,10,0,10,10,0,10\n")
    samples = load_text_eval_pairs(tmp_path / "gt", tmp_path / "res")
    assert [s.name for s in samples] == ["img_1", "img_2"]
    one, two = samples
    assert one.gt_texts == ['a, "quoted" word', "###"] and one.gt_ignore == [False, True]
    assert one.det[0][0].tolist() == [0.5, 0.0] and one.det_texts == [""]
    assert two.gt_texts == ["x,y"] and two.det == []  # missing prediction file = no detections
    assert prh(icdar15_hmean(samples)) == pytest.approx((1.0, 0.5, 2 / 3))


def test_ufo_on_either_side(tmp_path: Path) -> None:
    ufo = {"images": {"img_1.jpg": {"words": {
        "1": {"points": [[0, 0], [10, 0], [10, 10], [0, 10]], "transcription": "hi"},
        "2": {"points": [[20, 0], [30, 0], [30, 10], [20, 10]], "illegibility": True},
        "3": {"points": [[40, 0], [50, 0], [50, 10], [40, 10]], "transcription": "###"}}}}}
    gt_json = write(tmp_path / "val.json", json.dumps(ufo))
    write(tmp_path / "res" / "img_1.txt", "0,0,10,0,10,10,0,10\n")
    (s,) = load_text_eval_pairs(gt_json, tmp_path / "res")
    assert s.name == "img_1" and s.gt_ignore == [False, True, True]
    pred = {"images": {"img_1.png": {"words": {"a": {"points": [[0, 0], [10, 0], [10, 10], [0, 10]], "score": 0.7}}}}}
    (s,) = load_text_eval_pairs(gt_json, write(tmp_path / "pred.json", json.dumps(pred)))
    assert s.det_scores == [0.7] and len(s.det) == 1


@pytest.mark.parametrize("line, message", [
    ("hello world", r"gt_a\.txt:2: field 1 'hello world' is not a number"),
    ("0,0,10,0,10,10", r"gt_a\.txt:2: expected 8 coordinates x1,y1,\.\.\.,x4,y4, found 6"),
    ("0,0,10,0,10,10,0,word", r"gt_a\.txt:2: field 8 'word' is not a number.*found 7"),
    ("0,0,10,0,10,10,0,nan", r"gt_a\.txt:2: coordinates must be finite"),
])
def test_bad_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    write(tmp_path / "gt" / "gt_a.txt", f"0,0,1,0,1,1,0,1,ok\n{line}\n")
    write(tmp_path / "res" / "a.txt", "")
    with pytest.raises(TextEvalFormatError, match=message):
        load_text_eval_pairs(tmp_path / "gt", tmp_path / "res")


def test_bad_line_inside_zip_names_member(tmp_path: Path) -> None:
    zpath = tmp_path / "res.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("res_a.txt", "0,0,1,0,1,1,0,1\n1,2,3\n")
    write(tmp_path / "gt" / "gt_a.txt", "0,0,1,0,1,1,0,1,x\n")
    with pytest.raises(TextEvalFormatError, match=r"res\.zip!res_a\.txt:2: expected 8 coordinates"):
        load_text_eval_pairs(tmp_path / "gt", zpath)


def test_unreadable_and_missing_inputs(tmp_path: Path) -> None:
    gt = write(tmp_path / "gt" / "gt_a.txt", "0,0,1,0,1,1,0,1,x\n").parent
    broken = write(tmp_path / "res.zip", "this is not a zip")
    with pytest.raises(TextEvalFormatError, match=r"res\.zip: not a readable zip"):
        load_text_eval_pairs(gt, broken)
    with pytest.raises(TextEvalFormatError, match=r"nowhere: no such file"):
        load_text_eval_pairs(gt, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextEvalFormatError, match="no .txt files"):
        load_text_eval_pairs(gt, tmp_path / "empty")
    write(tmp_path / "res" / "b.txt", "0,0,1,0,1,1,0,1\n")
    with pytest.raises(TextEvalFormatError, match=r"no GT in .*b\.txt"):
        load_text_eval_pairs(gt, tmp_path / "res")


def test_ufo_errors_name_field(tmp_path: Path) -> None:
    res = write(tmp_path / "res" / "a.txt", "").parent
    bad_pts = write(tmp_path / "a.json", json.dumps({"images": {"a.jpg": {"words": {"7": {"points": [[0, 0], [1, 1]]}}}}}))
    with pytest.raises(TextEvalFormatError, match=r"a\.json: images\.a\.jpg\.words\.7\.points"):
        load_text_eval_pairs(bad_pts, res)
    bad_json = write(tmp_path / "b.json", '{"images": {\n  "a.jpg": ,\n}}')
    with pytest.raises(TextEvalFormatError, match=r"b\.json:2: invalid JSON"):
        load_text_eval_pairs(bad_json, res)
    with pytest.raises(TextEvalFormatError, match="'images'"):
        load_text_eval_pairs(write(tmp_path / "c.json", "[]"), res)


def test_one_reader_for_training_and_evaluation(tmp_path: Path) -> None:
    """Evaluation reads UFO and ICDAR files with the training loader's reader: the same checks
    (a key given twice, malformed scores) and the same error type."""
    from sweeper.tasks.dbnet.data import TextDataError

    assert TextEvalFormatError is TextDataError
    res = write(tmp_path / "res" / "a.txt", "").parent
    twice = write(tmp_path / "twice.json", '{"images": {"a.jpg": {}, "a.jpg": {}}}')
    with pytest.raises(TextEvalFormatError, match=r"twice\.json: key 'a\.jpg' appears twice"):
        load_text_eval_pairs(twice, res)
    quad = [[0, 0], [10, 0], [10, 10], [0, 10]]
    bad_score = write(tmp_path / "s.json", json.dumps({"images": {"a.jpg": {"words": {"1": {"points": quad,
                                                                                           "score": "high"}}}}}))
    with pytest.raises(TextEvalFormatError, match=r"s\.json: images\['a\.jpg'\]\.words\['1'\]\.score must be"):
        load_text_eval_pairs(write(tmp_path / "gt.json", json.dumps({"images": {"a.jpg": {}}})), bad_score)
