"""CLEval (official det level) and the Upstage per-image flavour against reference numbers.

The fixture numbers (``../shared/fixtures/cleval_receipts_kr``, README section 4) come from the
official clovaai/CLEval CLI and from the Upstage baseline's vendored copy; the small cases below
are worked out by hand from the rules in :mod:`sweeper.tasks.dbnet.cleval`.
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest

from sweeper.tasks.dbnet.cleval import cleval, cleval_per_image
from sweeper.tasks.dbnet.hmean import TextSample, load_text_eval_pairs

TOL = 1e-9


def box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Axis-aligned quad in the usual order: left-top, right-top, right-bottom, left-bottom."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def sample(gt: list, texts: list[str], det: list, ignore: list[bool] | None = None, name: str = "img") -> TextSample:
    return TextSample(name=name, gt=gt, gt_texts=texts, gt_ignore=ignore or [t == "###" for t in texts], det=det)


# ----------------------------------------------------------------------------- receipts fixture
@pytest.fixture(scope="module")
def receipts(shared_fixtures: Path) -> Path:
    return shared_fixtures / "cleval_receipts_kr"


@pytest.fixture(scope="module")
def receipt_samples(receipts: Path) -> list[TextSample]:
    return load_text_eval_pairs(receipts / "gt_eval_doc_v1_kr.zip", receipts / "res_eval_doc_v1_kr.zip")


@pytest.fixture(scope="module")
def official(receipt_samples: list[TextSample]) -> dict:
    return cleval(receipt_samples)


@pytest.fixture(scope="module")
def upstage(receipt_samples: list[TextSample]) -> dict:
    return cleval_per_image(receipt_samples)


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["sample_key"]: row for row in csv.DictReader(fh)}


def test_official_receipts_totals(official: dict) -> None:
    assert official["recall"] == pytest.approx(0.9853074043798132, abs=TOL)
    assert official["precision"] == pytest.approx(0.9707792207792207, abs=TOL)
    assert official["hmean"] == pytest.approx(0.977989360950786, abs=TOL)
    counts = {k: official[k] for k in ("num_char_gt", "num_char_det", "tp", "gran_score_recall",
                                        "gran_score_precision", "num_char_fp", "num_splitted", "num_merged",
                                        "num_char_overlapped")}
    assert counts == dict(num_char_gt=46486, num_char_det=46816, tp=46218, gran_score_recall=415,
                          gran_score_precision=770, num_char_fp=150, num_splitted=377, num_merged=470,
                          num_char_overlapped=448)


def test_official_receipts_per_image(official: dict, receipts: Path) -> None:
    expected = read_csv(receipts / "expected" / "cleval_official_per_sample.csv")
    got = {img["name"]: img for img in official["per_image"]}
    assert set(got) == set(expected) and len(got) == 100
    for name, row in expected.items():
        img = got[name]
        assert (img["num_char_gt"], img["num_char_det"], img["tp"], img["num_char_fp"]) == (
            int(row["det_num_char_gt"]), int(row["det_num_char_det"]), int(row["det_num_char_tp"]),
            int(row["det_num_char_fp"])), name
        assert img["gran_score_recall"] == float(row["det_gran_score_recall"]), name
        assert img["gran_score_precision"] == float(row["det_gran_score_precision"]), name
        for ours, theirs in (("recall", "det_recall"), ("precision", "det_precision"), ("hmean", "det_hmean")):
            assert img[ours] == pytest.approx(float(row[theirs]), abs=TOL), (name, ours)
    macro = np.mean([img["hmean"] for img in official["per_image"]])
    assert macro == pytest.approx(0.9783700339244636, abs=TOL)  # README: not what CLEval reports


def test_official_single_file(receipts: Path) -> None:
    samples = load_text_eval_pairs(receipts / "gt_eval_doc_v1_kr_single.zip",
                                   receipts / "res_eval_doc_v1_kr_single.zip")
    assert [s.name for s in samples] == ["kr_doc_KR03088"]
    result = cleval(samples)
    assert result["recall"] == pytest.approx(0.9948914431673053, abs=TOL)
    assert result["precision"] == pytest.approx(0.9719745222929936, abs=TOL)
    assert result["hmean"] == pytest.approx(0.9832994745827764, abs=TOL)


def test_upstage_receipts_macro_and_micro(upstage: dict) -> None:
    assert upstage["recall"] == pytest.approx(0.969959301391378, abs=TOL)
    assert upstage["precision"] == pytest.approx(0.9636756371626641, abs=TOL)
    assert upstage["hmean"] == pytest.approx(0.965508315610499, abs=TOL)
    assert upstage["micro_recall"] == pytest.approx(0.9709239715701056, abs=TOL)
    assert upstage["micro_precision"] == pytest.approx(0.9611998169040631, abs=TOL)
    assert upstage["micro_hmean"] == pytest.approx(0.9660374239664595, abs=TOL)
    assert (upstage["num_char_gt"], upstage["num_char_det"], upstage["tp"], upstage["gran_score_recall"],
            upstage["gran_score_precision"]) == (37144, 37139, 36475, 411, 777)


def test_upstage_receipts_per_image(upstage: dict, receipts: Path) -> None:
    expected = read_csv(receipts / "expected" / "upstage_baseline_style_per_sample.csv")
    got = {img["name"]: img for img in upstage["per_image"]}
    assert set(got) == set(expected) and len(got) == 100
    for name, row in expected.items():
        img = got[name]
        assert (img["num_char_gt"], img["num_char_det"], img["tp"]) == (
            int(row["num_char_gt_pseudo"]), int(row["num_char_det_pseudo"]), int(row["num_char_tp"])), name
        assert (img["gran_score_recall"], img["gran_score_precision"]) == (
            float(row["gran_score_recall"]), float(row["gran_score_precision"])), name
        for key in ("recall", "precision", "hmean"):
            assert img[key] == pytest.approx(float(row[key]), abs=TOL), (name, key)


# ----------------------------------------------------------------------------- hand-made cases
def test_perfect_quad() -> None:
    result = cleval([sample([box(0, 0, 100, 20)], ["abcd"], [box(0, 0, 100, 20)])])
    assert (result["recall"], result["precision"], result["hmean"]) == (1.0, 1.0, 1.0)
    assert (result["num_char_gt"], result["num_char_det"], result["tp"]) == (4, 4, 4)
    assert cleval_per_image([sample([box(0, 0, 100, 20)], [""], [box(0, 0, 100, 20)])])["hmean"] == 1.0


def test_split_gt_pays_recall_penalty() -> None:
    # PCCs at x = 12.5, 37.5, 62.5, 87.5; each half-box holds two of them -> one-to-many match
    result = cleval([sample([box(0, 0, 100, 20)], ["abcd"], [box(0, 0, 50, 20), box(50, 0, 100, 20)])])
    assert (result["tp"], result["gran_score_recall"], result["gran_score_precision"]) == (4, 1, 0)
    assert result["num_splitted"] == 1
    assert result["recall"] == 0.75 and result["precision"] == 1.0
    assert result["hmean"] == pytest.approx(2 * 0.75 / 1.75, abs=TOL)


def test_merged_gts_pay_precision_penalty() -> None:
    # one detection over two words: ap sums to (800 + 800) / 2000 >= 0.3 -> many-to-one match
    result = cleval([sample([box(0, 0, 40, 20), box(60, 0, 100, 20)], ["ab", "cd"], [box(0, 0, 100, 20)])])
    assert (result["tp"], result["gran_score_precision"], result["num_merged"]) == (4, 1, 1)
    assert result["recall"] == 1.0 and result["precision"] == 0.75


def test_empty_images_and_false_positive_chars() -> None:
    empty = cleval([sample([], [], [])])
    assert {k: empty[k] for k in ("recall", "precision", "hmean", "num_char_gt", "num_char_det")} == dict(
        recall=0.0, precision=0.0, hmean=0.0, num_char_gt=0, num_char_det=0)
    assert empty["per_image"][0]["name"] == "img"
    missed = cleval([sample([box(0, 0, 100, 20)], ["abcd"], [])])
    assert (missed["recall"], missed["precision"], missed["num_char_gt"]) == (0.0, 0.0, 4)
    # an unmatched 100 x 20 detection counts round(0.5 + 1 / 5) = 1 character
    stray = cleval([sample([], [], [box(0, 0, 100, 20)])])
    assert (stray["num_char_det"], stray["num_char_fp"], stray["precision"]) == (1, 1, 0.0)
    assert cleval([])["hmean"] == 0.0 and cleval_per_image([])["hmean"] == 0.0


def test_dont_care_gt_and_detection_are_not_scored() -> None:
    result = cleval([sample([box(0, 0, 100, 20), box(0, 50, 100, 70)], ["###", "ab"],
                            [box(0, 0, 100, 20), box(0, 50, 100, 70)])])
    assert (result["num_char_gt"], result["num_char_det"], result["num_char_fp"]) == (2, 2, 0)
    assert result["hmean"] == 1.0


def test_vertical_word_pccs_run_top_to_bottom() -> None:
    # aspect 10/100 < 0.5: the corners are rotated and the 3 PCCs sit at x = 5, y = 83.3, 50, 16.7
    result = cleval([sample([box(0, 0, 10, 100)], ["abc"], [box(0, 0, 10, 33)])])
    assert (result["tp"], result["num_char_gt"]) == (1, 3)
    assert result["recall"] == pytest.approx(1 / 3, abs=TOL)


def test_case_insensitive_counts_uppercased_length() -> None:
    text = "stra\u00dfe"  # upper() turns the sharp s into "SS"
    assert cleval([sample([box(0, 0, 70, 10)], [text], [])])["num_char_gt"] == 6
    assert cleval([sample([box(0, 0, 70, 10)], [text], [])], case_sensitive=False)["num_char_gt"] == 7


def test_cleval_warns_without_transcriptions() -> None:
    with pytest.warns(UserWarning, match="cleval_per_image"):
        result = cleval([sample([box(0, 0, 100, 20)], [""], [box(0, 0, 100, 20)])])
    assert result["num_char_gt"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cleval([sample([box(0, 0, 100, 20)], ["###"], [])])  # only don't-care GT: nothing to warn about


def test_upstage_pseudo_length_follows_qhull_edge_order() -> None:
    # 30 x 10: the baseline's first minimum-area edge is horizontal for the usual corner order
    # (aspect 1/3 -> round(0.5 + 2.9999988) = 3) but vertical when the left side is listed first
    # (aspect 3.0 -> round(3.5) = 4), as scipy's qhull orders the hull.
    usual = cleval_per_image([sample([box(0, 0, 30, 10)], [""], [])])
    left_first = cleval_per_image([sample([box(0, 0, 30, 10)[[3, 0, 1, 2]]], [""], [])])
    assert (usual["num_char_gt"], left_first["num_char_gt"]) == (3, 4)


def test_upstage_ignores_dont_care_and_caps_detections() -> None:
    gt = sample([box(0, 0, 100, 20)], ["###"], [box(0, 0, 100, 20)], ignore=[True])
    assert cleval_per_image([gt])["hmean"] == 1.0  # "###" is an ordinary word here
    far = [box(1000 + 20 * i, 1000, 1010 + 20 * i, 1010) for i in range(600)]  # square: 1 fp char each
    capped = cleval_per_image([sample([box(0, 0, 100, 20)], [""], [box(0, 0, 100, 20), *far])])
    assert capped["num_char_fp"] == 499
    assert cleval_per_image([sample([], [], far)], max_detections=1000)["num_char_fp"] == 600
