"""sweeper.stats against scipy's own results and hand-computed values."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as st

from sweeper.stats import Comparison, Summary, ablation_table, compare, holm, pareto_front, summarize

VALUES = [0.71, 0.74, 0.69, 0.73, 0.70]


def _t_ci(x, confidence=0.95):
    x = np.asarray(x, dtype=float)
    return st.t.interval(confidence, x.size - 1, loc=x.mean(), scale=st.sem(x))


# --- summarize ---------------------------------------------------------------------------

def test_summarize_matches_scipy_t_interval():
    s = summarize(VALUES)
    assert isinstance(s, Summary)
    assert s.n == 5
    assert s.mean == pytest.approx(0.714)
    assert s.std == pytest.approx(np.std(VALUES, ddof=1))
    assert s.std == pytest.approx(0.02073644135332772)
    low, high = _t_ci(VALUES)
    assert (s.ci_low, s.ci_high) == (pytest.approx(low), pytest.approx(high))
    # t(0.975, 4) = 2.7764451051977987
    half = 2.7764451051977987 * 0.02073644135332772 / math.sqrt(5)
    assert s.ci_low == pytest.approx(0.714 - half)
    assert s.ci_high == pytest.approx(0.714 + half)


def test_summarize_other_confidence_is_narrower():
    s90 = summarize(VALUES, confidence=0.90)
    low, high = _t_ci(VALUES, 0.90)
    assert (s90.ci_low, s90.ci_high) == (pytest.approx(low), pytest.approx(high))
    s95 = summarize(VALUES)
    assert s95.ci_low < s90.ci_low < s90.mean < s90.ci_high < s95.ci_high


def test_summarize_small_n_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = summarize([0.5])
        none = summarize([])
    assert one.n == 1 and one.mean == 0.5
    assert math.isnan(one.std) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    assert none.n == 0
    assert all(math.isnan(v) for v in (none.mean, none.std, none.ci_low, none.ci_high))


def test_summarize_zero_spread_gives_zero_width_interval():
    s = summarize([0.3, 0.3, 0.3])
    assert (s.n, s.mean, s.std, s.ci_low, s.ci_high) == (3, pytest.approx(0.3), 0.0,
                                                         pytest.approx(0.3), pytest.approx(0.3))


def test_summarize_rejects_bad_confidence():
    with pytest.raises(ValueError, match="confidence"):
        summarize(VALUES, confidence=95)


# --- compare ------------------------------------------------------------------------------

def test_compare_disjoint_seeds_is_welch():
    variant = {0: 0.80, 1: 0.78, 2: 0.83, 3: 0.79}
    baseline = {10: 0.75, 11: 0.77, 12: 0.74}
    c = compare(variant, baseline)
    assert isinstance(c, Comparison)
    v, b = list(variant.values()), list(baseline.values())
    ref = st.ttest_ind(v, b, equal_var=False)
    assert not c.paired and c.paired_t is None and c.paired_p is None
    assert c.diff == pytest.approx(np.mean(v) - np.mean(b))
    assert c.diff == pytest.approx(0.8 - 0.7533333333333333)
    assert c.welch_t == pytest.approx(ref.statistic)
    assert c.welch_p == pytest.approx(ref.pvalue)
    assert c.p == c.welch_p
    # Welch CI by hand: Welch-Satterthwaite degrees of freedom.
    va, vb = np.var(v, ddof=1) / len(v), np.var(b, ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(v) - 1) + vb ** 2 / (len(b) - 1))
    low, high = st.t.interval(0.95, df, loc=c.diff, scale=math.sqrt(va + vb))
    assert (c.ci_low, c.ci_high) == (pytest.approx(low), pytest.approx(high))
    assert c.ci_low > 0  # clearly better


def test_compare_same_seeds_is_paired():
    baseline = {0: 0.70, 1: 0.75, 2: 0.68, 3: 0.72, 4: 0.66}
    variant = {0: 0.72, 1: 0.76, 2: 0.71, 3: 0.73, 4: 0.69}
    c = compare(variant, baseline)
    v = [variant[s] for s in range(5)]
    b = [baseline[s] for s in range(5)]
    ref = st.ttest_rel(v, b)
    assert c.paired
    assert c.paired_t == pytest.approx(ref.statistic)
    assert c.paired_p == pytest.approx(ref.pvalue)
    assert c.p == c.paired_p
    assert c.diff == pytest.approx(0.02)
    low, high = _t_ci(np.subtract(v, b))
    assert (c.ci_low, c.ci_high) == (pytest.approx(low), pytest.approx(high))
    # Welch is still reported, on all values, and is far less sensitive than the paired test.
    welch = st.ttest_ind(v, b, equal_var=False)
    assert c.welch_t == pytest.approx(welch.statistic)
    assert c.welch_p == pytest.approx(welch.pvalue)
    assert c.paired_p < 0.05 < c.welch_p


def test_compare_partial_overlap_pairs_only_common_seeds():
    # Seeds 1 and 2 and 3 are common; 0 only in baseline, 9 only in variant. Insertion order
    # deliberately scrambled: the pairing must follow seeds, not positions.
    baseline = {3: 0.71, 0: 0.50, 1: 0.70, 2: 0.74}
    variant = {9: 0.99, 2: 0.77, 1: 0.72, 3: 0.72}
    c = compare(variant, baseline)
    ref = st.ttest_rel([0.72, 0.77, 0.72], [0.70, 0.74, 0.71])
    assert c.paired
    assert c.paired_t == pytest.approx(ref.statistic)
    assert c.paired_p == pytest.approx(ref.pvalue)
    low, high = _t_ci([0.02, 0.03, 0.01])
    assert (c.ci_low, c.ci_high) == (pytest.approx(low), pytest.approx(high))
    welch = st.ttest_ind([0.99, 0.77, 0.72, 0.72], [0.71, 0.50, 0.70, 0.74], equal_var=False)
    assert c.welch_t == pytest.approx(welch.statistic)
    assert c.welch_p == pytest.approx(welch.pvalue)
    assert c.diff == pytest.approx(0.80 - 0.6625)


def test_compare_one_common_seed_is_unpaired():
    c = compare({0: 0.8, 1: 0.82, 2: 0.81}, {0: 0.7, 5: 0.72, 6: 0.71})
    ref = st.ttest_ind([0.8, 0.82, 0.81], [0.7, 0.72, 0.71], equal_var=False)
    assert not c.paired and c.paired_p is None
    assert c.p == pytest.approx(ref.pvalue)
    assert c.diff == pytest.approx(0.1)


def test_compare_too_few_values_gives_nan_without_raising():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = compare({0: 0.8}, {0: 0.7, 1: 0.72, 2: 0.71})
        empty = compare({}, {0: 0.7, 1: 0.72})
    assert c.diff == pytest.approx(0.09)
    assert not c.paired and c.paired_t is None
    assert all(math.isnan(x) for x in (c.welch_t, c.welch_p, c.p, c.ci_low, c.ci_high))
    assert math.isnan(empty.diff) and math.isnan(empty.p)


def test_compare_zero_variance_follows_scipy():
    baseline = {0: 0.7, 1: 0.8, 2: 0.9}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = compare(dict(baseline), baseline)
        flat = compare({0: 0.5, 1: 0.5}, {2: 0.5, 3: 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = st.ttest_rel([0.7, 0.8, 0.9], [0.7, 0.8, 0.9])
        ref_flat = st.ttest_ind([0.5, 0.5], [0.5, 0.5], equal_var=False)
    assert math.isnan(ref.pvalue) and math.isnan(ref_flat.pvalue)
    assert same.paired and same.diff == 0.0
    assert math.isnan(same.paired_t) and math.isnan(same.paired_p) and math.isnan(same.p)
    assert (same.ci_low, same.ci_high) == (0.0, 0.0)
    assert not flat.paired and flat.diff == 0.0
    assert math.isnan(flat.welch_t) and math.isnan(flat.welch_p) and math.isnan(flat.p)


# --- holm ---------------------------------------------------------------------------------

def test_holm_hand_example():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one():
    # sorted: 0.01*3=0.03, 0.5*2=1.0, 0.6*1=0.6 -> max(1.0, 0.6) = 1.0
    assert holm([0.5, 0.6, 0.01]) == pytest.approx([1.0, 1.0, 0.03])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_holm_nan_stays_nan_and_does_not_count():
    # m = 3: 0.01*3=0.03, 0.02*2=0.04, 0.04*1=0.04
    out = holm([0.02, float("nan"), 0.04, 0.01])
    assert math.isnan(out[1])
    assert [out[0], out[2], out[3]] == pytest.approx([0.04, 0.04, 0.03])
    assert all(math.isnan(x) for x in holm([float("nan"), float("nan")]))


def test_holm_trivial_cases():
    assert holm([]) == []
    assert holm([0.2]) == pytest.approx([0.2])
    assert holm([0.01, 0.01]) == pytest.approx([0.02, 0.02])


# --- ablation_table -----------------------------------------------------------------------

BASE = {0: 0.70, 1: 0.71, 2: 0.69, 3: 0.72, 4: 0.70}
GROUPS = {
    "base": BASE,
    "aug": {s: v + d for (s, v), d in zip(BASE.items(), [0.05, 0.06, 0.04, 0.05, 0.055])},
    "noise": {s: v + d for (s, v), d in zip(BASE.items(), [0.01, -0.02, 0.03, -0.01, 0.0])},
    "worse": {10: 0.60, 11: 0.62, 12: 0.61},
    "single": {0: 0.90},
}


def _row(rows, name):
    return next(r for r in rows if r["variant"] == name)


def test_ablation_table_max_mode():
    rows = ablation_table(GROUPS, baseline="base", mode="max")
    assert [r["variant"] for r in rows] == ["base", "single", "aug", "noise", "worse"]
    assert set(rows[0]) == {"variant", "n", "mean", "std", "ci_low", "ci_high", "diff",
                            "diff_ci_low", "diff_ci_high", "p", "p_holm", "test",
                            "significant", "better"}

    base = rows[0]
    assert base["n"] == 5 and base["mean"] == pytest.approx(0.704)
    assert base["diff"] == 0.0 and base["p"] is None and base["p_holm"] is None
    assert base["test"] == "" and base["significant"] is False

    b = list(BASE.values())
    p_aug = st.ttest_rel(list(GROUPS["aug"].values()), b).pvalue
    p_noise = st.ttest_rel(list(GROUPS["noise"].values()), b).pvalue
    p_worse = st.ttest_ind([0.60, 0.62, 0.61], b, equal_var=False).pvalue
    # Holm over 3 non-nan p values (single has none): p_worse < p_aug < p_noise.
    assert p_worse < p_aug < p_noise
    h_worse = 3 * p_worse
    h_aug = max(h_worse, 2 * p_aug)
    h_noise = max(h_aug, p_noise)

    aug, noise, worse, single = (_row(rows, n) for n in ("aug", "noise", "worse", "single"))
    assert aug["test"] == "paired t" and noise["test"] == "paired t"
    assert worse["test"] == "Welch t" and single["test"] == ""
    assert aug["p"] == pytest.approx(p_aug) and aug["p_holm"] == pytest.approx(h_aug)
    assert noise["p"] == pytest.approx(p_noise) and noise["p_holm"] == pytest.approx(h_noise)
    assert worse["p"] == pytest.approx(p_worse) and worse["p_holm"] == pytest.approx(h_worse)
    assert math.isnan(single["p"]) and math.isnan(single["p_holm"])

    assert aug["diff"] == pytest.approx(0.051) and aug["mean"] == pytest.approx(0.755)
    assert worse["diff"] == pytest.approx(-0.094)
    assert aug["diff_ci_low"] == pytest.approx(_t_ci([0.05, 0.06, 0.04, 0.05, 0.055])[0])
    assert [aug["significant"], noise["significant"], worse["significant"],
            single["significant"]] == [True, False, True, False]
    assert [aug["better"], noise["better"], worse["better"], single["better"]] == \
        [True, True, False, True]


def test_ablation_table_min_mode_reverses_order_and_direction():
    rows = ablation_table(GROUPS, baseline="base", mode="min")
    assert [r["variant"] for r in rows] == ["base", "worse", "noise", "aug", "single"]
    worse, aug = _row(rows, "worse"), _row(rows, "aug")
    assert worse["better"] is True and worse["significant"] is True
    assert aug["better"] is False and aug["significant"] is True
    assert _row(rows, "noise")["better"] is False


def test_ablation_table_alpha_controls_significance():
    rows = ablation_table(GROUPS, baseline="base", alpha=1e-4)
    # p_holm for aug and worse are both 3 * p_worse ~ 2.4e-4 > 1e-4.
    assert _row(rows, "worse")["p_holm"] == pytest.approx(0.0002363436668280338, rel=1e-6)
    assert not any(r["significant"] for r in rows)


def test_ablation_table_missing_baseline_raises():
    with pytest.raises(ValueError, match="'nope'"):
        ablation_table(GROUPS, baseline="nope")
    with pytest.raises(ValueError, match="mode"):
        ablation_table(GROUPS, baseline="base", mode="maximize")


def test_ablation_table_baseline_only():
    rows = ablation_table({"base": BASE}, baseline="base")
    assert len(rows) == 1 and rows[0]["variant"] == "base" and rows[0]["n"] == 5


# --- pareto_front -------------------------------------------------------------------------

def test_pareto_front_max_max():
    pts = [(1, 5), (2, 4), (2, 2), (3, 1), (0, 5), (3, 1)]
    # (2,2) dominated by (2,4); (0,5) by (1,5); the duplicate (3,1)s do not dominate each other.
    assert pareto_front(pts, ["max", "max"]) == [0, 1, 3, 5]


def test_pareto_front_accuracy_vs_latency():
    # (accuracy: max, latency ms: min)
    pts = [(0.70, 10.0), (0.75, 20.0), (0.72, 25.0), (0.80, 40.0), (0.69, 9.0), (0.80, 45.0)]
    assert pareto_front(pts, ["max", "min"]) == [0, 1, 3, 4]
    # (0.75, 20) is dominated by (0.72, 25); (0.80, 40) by (0.80, 45).
    assert pareto_front(pts, ["min", "max"]) == [0, 2, 4, 5]


def test_pareto_front_nan_never_on_front():
    pts = [(1.0, 1.0), (float("nan"), 9.0), (0.5, 2.0), (9.0, float("nan"))]
    assert pareto_front(pts, ["max", "max"]) == [0, 2]
    assert pareto_front([], ["max"]) == []
    with pytest.raises(ValueError):
        pareto_front([(1.0, 2.0)], ["max"])
