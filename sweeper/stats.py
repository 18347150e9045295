"""Statistics of controlled ablation studies: is a variant really better than the baseline?

An ablation runs each variant (baseline, "no augmentation", "frozen backbone", ...) with a few
seeds. One run per variant proves nothing: seed noise in detection metrics is often as large as
the effect being measured. This module turns ``{variant: {seed: final objective}}`` into numbers
a reader can trust::

    rows = ablation_table({"base": {0: .71, 1: .72, 2: .70}, "no_aug": {0: .66, 1: .68, 2: .67}},
                          baseline="base", mode="max")

- `summarize`: mean, sample std and Student-t confidence interval of one variant.
- `compare`: variant vs baseline. When both ran the same seeds, the comparison is paired (same
  seed means same data order and init, so per-seed differences cancel much of the noise);
  otherwise Welch's t-test, which does not assume equal variances.
- `holm`: Holm-Bonferroni correction, because comparing many variants against one baseline
  will find "significant" noise by chance.
- `ablation_table`: all of the above as rows for the CLI, reports and MLflow.
- `pareto_front`: non-dominated trials when several objectives trade off (accuracy vs latency).

Pure functions on plain numbers, numpy and scipy only (no torch, Ray or MLflow), so reports and
tests stay fast. Degenerate inputs (too few seeds, zero variance) give nan, never an exception.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

_NAN = float("nan")
_MODES = ("max", "min")


@dataclass(frozen=True)
class Summary:
    """One variant's seeds in a nutshell. `std` is the sample std (ddof=1); CI is Student-t."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Comparison:
    """Variant minus baseline, with the test that decides whether the difference is real.

    `diff` is always mean(variant) - mean(baseline) over all values. When paired, the CI and the
    paired test use only the common seeds, so the CI is centred on the mean per-seed difference,
    which equals `diff` when both sides ran exactly the same seeds.
    """

    diff: float
    ci_low: float
    ci_high: float
    welch_t: float
    welch_p: float
    paired_t: float | None
    paired_p: float | None
    p: float
    paired: bool


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence!r}")


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sample std and t confidence interval of the mean; nan where n is too small.

    n == 0 gives all nan; n == 1 gives the value as mean and nan spread (one seed has no
    measurable noise). Zero spread gives a zero-width interval.
    """
    _check_confidence(confidence)
    x = np.asarray(values, dtype=float).ravel()
    n = int(x.size)
    if n == 0:
        return Summary(0, _NAN, _NAN, _NAN, _NAN)
    mean = float(x.mean())
    if n == 1:
        return Summary(1, mean, _NAN, _NAN, _NAN)
    std = float(x.std(ddof=1))
    half = float(_st.t.ppf((1.0 + confidence) / 2.0, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def compare(variant: Mapping[int, float], baseline: Mapping[int, float],
            confidence: float = 0.95) -> Comparison:
    """Compare seed -> value results of a variant against the baseline.

    Paired (scipy `ttest_rel` on the sorted common seeds) when at least 2 seeds are common,
    because same-seed runs share noise; Welch (`ttest_ind`, equal_var=False, all values) is
    always reported too. Fewer than 2 values on a side gives nan; never raises. Degenerate
    variances follow scipy (e.g. nan for all-equal values).
    """
    _check_confidence(confidence)
    v = np.array([variant[s] for s in sorted(variant)], dtype=float)
    b = np.array([baseline[s] for s in sorted(baseline)], dtype=float)
    diff = float(v.mean() - b.mean()) if v.size and b.size else _NAN

    # scipy warns (precision loss, division by zero) on constant data; the nan/inf it
    # returns is the answer, so keep the warnings from turning into errors under -W error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        welch_t = welch_p = ci_low = ci_high = _NAN
        if v.size >= 2 and b.size >= 2:
            res = _st.ttest_ind(v, b, equal_var=False)
            welch_t, welch_p = float(res.statistic), float(res.pvalue)
            ci = res.confidence_interval(confidence_level=confidence)
            ci_low, ci_high = float(ci.low), float(ci.high)

        common = sorted(set(variant) & set(baseline))
        paired = len(common) >= 2
        paired_t = paired_p = None
        if paired:
            pv = np.array([variant[s] for s in common], dtype=float)
            pb = np.array([baseline[s] for s in common], dtype=float)
            res = _st.ttest_rel(pv, pb)
            paired_t, paired_p = float(res.statistic), float(res.pvalue)
            d = summarize(pv - pb, confidence)
            ci_low, ci_high = d.ci_low, d.ci_high

    return Comparison(diff=diff, ci_low=ci_low, ci_high=ci_high, welch_t=welch_t,
                      welch_p=welch_p, paired_t=paired_t, paired_p=paired_p,
                      p=paired_p if paired else welch_p, paired=paired)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in input order (as statsmodels' method="holm").

    Controls the family-wise error over many variant-vs-baseline tests while being uniformly
    more powerful than plain Bonferroni. nan p-values stay nan and do not count in m.
    """
    p = np.asarray(pvalues, dtype=float).ravel()
    out = np.full(p.shape, _NAN)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m:
        order = ok[np.argsort(p[ok], kind="stable")]
        scaled = (m - np.arange(m)) * p[order]
        out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return [float(x) for x in out]


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else x


def ablation_table(groups: Mapping[str, Mapping[int, float]], baseline: str, mode: str = "max",
                   alpha: float = 0.05, confidence: float = 0.95) -> list[dict]:
    """One row per variant: summary, difference to the baseline, Holm-corrected significance.

    Baseline first, then the other variants best-first by mean (variants with no mean last).
    `significant` is p_holm < alpha; `better` says whether the difference points the good way
    for `mode`, so "significant and not better" flags a real regression.
    """
    _check_mode(mode)
    if baseline not in groups:
        raise ValueError(f"baseline variant {baseline!r} is not among the variants: "
                         f"{sorted(groups)}")

    base = summarize(list(groups[baseline].values()), confidence)
    rows = [{"variant": baseline, "n": base.n, "mean": base.mean, "std": base.std,
             "ci_low": base.ci_low, "ci_high": base.ci_high, "diff": 0.0,
             "diff_ci_low": None, "diff_ci_high": None, "p": None, "p_holm": None,
             "test": "", "significant": False, "better": False}]

    others = []
    for name, seeds in groups.items():
        if name == baseline:
            continue
        s = summarize(list(seeds.values()), confidence)
        c = compare(seeds, groups[baseline], confidence)
        if c.paired:
            test = "paired t"
        elif s.n >= 2 and base.n >= 2:
            test = "Welch t"
        else:
            test = ""
        better = c.diff > 0 if mode == "max" else c.diff < 0
        others.append({"variant": name, "n": s.n, "mean": s.mean, "std": s.std,
                       "ci_low": s.ci_low, "ci_high": s.ci_high, "diff": c.diff,
                       "diff_ci_low": c.ci_low, "diff_ci_high": c.ci_high, "p": c.p,
                       "p_holm": _NAN, "test": test, "significant": False,
                       "better": bool(better)})

    for row, p_adj in zip(others, holm([r["p"] for r in others])):
        row["p_holm"] = p_adj
        row["significant"] = bool(p_adj < alpha)  # nan compares False

    sign = -1.0 if mode == "max" else 1.0
    others.sort(key=lambda r: (math.isnan(r["mean"]),
                               0.0 if math.isnan(r["mean"]) else sign * r["mean"]))
    return rows + others


def pareto_front(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices (input order) of points no other point dominates, e.g. accuracy vs latency.

    `modes[k]` says whether coordinate k is maximised or minimised. Equal points do not
    dominate each other, so duplicates are all kept. Points with nan are never on the front
    and dominate nothing, since a failed measurement cannot be compared.
    """
    for mode in modes:
        _check_mode(mode)
    if len(points) == 0:
        return []
    x = np.asarray(points, dtype=float)
    if x.ndim != 2 or x.shape[1] != len(modes):
        raise ValueError(f"every point needs {len(modes)} coordinates (one per mode), "
                         f"got array of shape {x.shape}")
    # Orient every coordinate so that larger is better.
    x = x * np.array([1.0 if m == "max" else -1.0 for m in modes])
    valid = ~np.isnan(x).any(axis=1)
    front = []
    for i in np.flatnonzero(valid):
        others = x[valid]
        dominated = np.any(np.all(others >= x[i], axis=1) & np.any(others > x[i], axis=1))
        if not dominated:
            front.append(int(i))
    return front
