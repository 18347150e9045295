"""The early-stopping diagnosis (sweeper.diagnosis) on fabricated curves with a known rank
structure: rank-stable curves settle at epoch 1, curves whose ranks flip at a known epoch settle
there, independent noise never settles; truncated (ASHA-stopped) curves and too few trials."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy.stats import spearmanr

from sweeper import diagnosis as dg
from sweeper.diagnosis import Candidate, DiagnosisError, EpochRank


def stable(n: int = 8, epochs: int = 6) -> dict[str, dict[int, float]]:
    """Saturating curves whose order never changes: rho = 1 at every epoch."""
    return {f"t{i}": {e: q * (1 - math.exp(-e / 2)) for e in range(1, epochs + 1)}
            for i, q in enumerate(np.linspace(0.2, 0.9, n))}


def flipping(n: int = 10, epochs: int = 8, flip: int = 4) -> dict[str, dict[int, float]]:
    """Before epoch `flip` the order is the reverse of the final one (fast starters finish worst:
    late bloomers win); from `flip` on it is the final order."""
    out = {}
    for i, q in enumerate(np.linspace(0.1, 0.9, n)):
        out[f"t{i}"] = {e: (0.05 * (1 - q) if e < flip else 0.5 + 0.01 * e + 0.4 * q) for e in range(1, epochs + 1)}
    return out


def noise(n: int = 12, epochs: int = 6, seed: int = 3) -> dict[str, dict[int, float]]:
    """Values drawn independently at every epoch: nothing predicts the end."""
    rng = np.random.default_rng(seed)
    return {f"t{i}": {e: float(rng.random()) for e in range(1, epochs + 1)} for i in range(n)}


# ------------------------------------------------------------------ pieces


def test_spearman_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.integers(0, 5, 9).astype(float), rng.random(9)
        if len(set(x)) < 2:
            continue
        assert dg.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert dg.spearman([1, 1, 1, 1], [1, 2, 3, 4]) is None  # constant: undefined, not 0 or nan


def test_bootstrap_ci_is_seeded_and_brackets_rho() -> None:
    rng = np.random.default_rng(1)
    x = rng.random(15)
    y = x + 0.3 * rng.random(15)
    rho = dg.spearman(x, y)
    low, high = dg.bootstrap_ci(x, y, seed=7)
    assert low <= rho <= high and low < high <= 1.0
    assert dg.bootstrap_ci(x, y, seed=7) == (low, high)
    assert dg.bootstrap_ci(x, y, seed=8) != (low, high)
    wider = dg.bootstrap_ci(x[:6], y[:6], seed=7)  # fewer trials: less certainty
    assert wider[1] - wider[0] > high - low


@pytest.mark.parametrize("ci_lows, expected", [
    ([0.9, 0.95, 0.99], 1),
    ([0.1, 0.5, 0.85, 0.9], 3),
    ([0.85, 0.5, 0.9, 0.95], 3),  # a dip after settling: it settles only where it stays
    ([0.9, 0.95, 0.7], None),     # falls below just before the reference epoch
    ([0.2, None, 0.9], 3),        # an undefined CI counts as below
    ([None, None], None),
    ([], None),
])
def test_settle_epoch_is_the_first_that_stays_above(ci_lows: list, expected: int | None) -> None:
    ranks = [EpochRank(e, 8, lo, lo, lo) for e, lo in enumerate(ci_lows, 1)]
    assert dg.settle_epoch(ranks) == expected


def test_curve_from_history_sorts_and_stops_at_a_diverged_epoch() -> None:
    assert dg.curve_from_history([[3, 0.3], [1, 0.1], [2, 0.2]]) == {1: 0.1, 2: 0.2, 3: 0.3}
    assert dg.curve_from_history([[1, 0.1], [2, float("nan")], [3, 0.3]]) == {1: 0.1}
    assert dg.curve_from_history([]) == {}


def test_reference_epoch_is_the_last_that_enough_trials_reached() -> None:
    curves = {"a": {1: 0, 2: 0, 3: 0, 4: 0}, "b": {1: 0, 2: 0, 3: 0}, "c": {1: 0, 2: 0, 3: 0},
              "d": {1: 0, 2: 0}, "e": {1: 0}, "gap": {1: 0, 3: 0, 4: 0}}
    assert dg.reference_epoch(curves, 4) == 2  # a, b, c, d reach 2; only 3 reach 3 (the gap ends at 1)
    assert dg.reference_epoch(curves, 3) == 3
    assert dg.reference_epoch(curves, 7) == 0


@pytest.mark.parametrize("candidates, expected, met", [
    ([Candidate(2, 2, 0.5, 0.0, 0.0, 20, 2), Candidate(2, 3, 0.3, 0.005, 0.02, 20, 2),
      Candidate(3, 4, 0.25, 0.03, 0.05, 20, 2)], (2, 3), True),   # least compute within 1% regret
    ([Candidate(2, 2, 0.5, 0.02, 0.04, 20, 2), Candidate(3, 3, 0.4, 0.05, 0.08, 20, 2)], (2, 2), False),
    ([Candidate(2, 3, 0.3, 0.0, 0.01, 20, 2), Candidate(3, 3, 0.3, 0.0, 0.0, 20, 2)], (3, 3), True),
    ([], None, False),
])
def test_choose_least_compute_meeting_the_regret_target(candidates: list, expected: tuple | None,
                                                        met: bool) -> None:
    chosen, ok = dg.choose(candidates)
    assert (None if chosen is None else (chosen.grace_period, chosen.reduction_factor)) == expected
    assert ok is met


# ------------------------------------------------------------------ whole diagnosis, no replay


def test_rank_stable_curves_settle_at_epoch_1() -> None:
    d = dg.diagnose(stable(), "acc", "max", replay=False)
    assert (d.trials, d.reference_epoch, d.reference_trials, d.truncated) == (8, 6, 8, 0)
    assert [r.epoch for r in d.ranks] == [1, 2, 3, 4, 5]
    assert all(r.rho == pytest.approx(1.0) and r.ci_low == pytest.approx(1.0) for r in d.ranks)
    assert d.settle_epoch == 1 and d.recommended == {"grace_period": 1}
    assert d.candidates == [] and "grace_period: 1" in dg.verdict(d)


def test_late_bloomers_settle_where_the_ranks_flip() -> None:
    d = dg.diagnose(flipping(flip=4), "map50", "max", replay=False)
    assert [round(r.rho, 6) for r in d.ranks] == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
    assert d.settle_epoch == 4 and d.recommended == {"grace_period": 4}
    assert dg.rank_rows(d)[3] == ["4", "10", "1.00", "[1.00, 1.00]", "settled"]
    assert dg.rank_rows(d)[2][-1] == ""


def test_noise_never_settles_and_recommends_fifo() -> None:
    d = dg.diagnose(noise(), "acc", "max", replay=False)
    assert d.settle_epoch is None and d.recommended is None
    assert all(r.ci_low < dg.SETTLE_RHO for r in d.ranks)
    assert "fifo" in dg.verdict(d) and any("noise" in n for n in d.notes)


def test_min_mode_gives_the_same_ranks() -> None:
    """rho is about order: a loss (min) curve set is diagnosed as its negation (max)."""
    curves = flipping()
    negated = {k: {e: -v for e, v in c.items()} for k, c in curves.items()}
    assert dg.diagnose(curves, mode="max", replay=False).ranks == dg.diagnose(negated, mode="min", replay=False).ranks


def test_truncated_curves_count_to_the_reference_epoch_and_are_left_out_of_rho() -> None:
    """A partial ASHA sweep: 5 trials to epoch 6, 4 stopped at epoch 2, 3 at epoch 1."""
    full = stable(n=5)
    curves = dict(full)
    for i in range(4):
        curves[f"s2_{i}"] = {1: 0.01 * i, 2: 0.02 * i}
    for i in range(3):
        curves[f"s1_{i}"] = {1: 0.001 * i}
    d = dg.diagnose(curves, "acc", "max", max_t=8, replay=False)
    assert (d.trials, d.reference_epoch, d.reference_trials, d.truncated) == (12, 6, 5, 7)
    assert all(r.n == 5 for r in d.ranks)
    assert any("7 trial(s) stopped before epoch 6" in n and "survivors" in n for n in d.notes)
    assert any("before the planned last epoch 8" in n for n in d.notes)


def test_when_few_reach_the_end_the_reference_is_earlier() -> None:
    curves = {**{f"a{i}": {1: 0.1 * i, 2: 0.2 * i, 3: 0.3 * i} for i in range(4)},
              **{f"b{i}": {e: 0.5 + i for e in range(1, 7)} for i in range(3)}}
    d = dg.diagnose(curves, replay=False)
    assert d.max_epoch == 6 and d.reference_epoch == 3 and d.reference_trials == 7


@pytest.mark.parametrize("curves, message", [
    ({f"t{i}": {1: 0.1, 2: 0.2} for i in range(3)},
     "3 trial(s) reported acc per epoch; a rank correlation needs at least 4"),
    ({**{f"t{i}": {1: 0.1, 2: 0.2} for i in range(3)}, "empty": {}}, "3 trial(s)"),
    ({f"t{i}": {50: 0.1 * i, 100: 0.2 * i} for i in range(6)},
     "0 trial(s) reported acc per epoch (6 more logged it at steps other than epochs 1, 2, ..., e.g. 50, 100"),
    ({f"t{i}": {1: 0.1 * i} for i in range(6)}, "every trial reported acc for 1 epoch only"),
    ({**{f"t{i}": {1: 0.1 * i} for i in range(6)}, **{f"u{i}": {1: 0.1, 2: 0.2} for i in range(3)}},
     "only 3 of 9 trials reached epoch 2"),
])
def test_too_few_trials_or_epochs_is_a_clear_error(curves: dict, message: str) -> None:
    with pytest.raises(DiagnosisError, match=re.escape(message)):
        dg.diagnose(curves, "acc", replay=False)


def test_diagnosis_is_deterministic_and_json_ready() -> None:
    import json

    a, b = dg.diagnose(noise(), replay=False), dg.diagnose(noise(), replay=False)
    assert a == b
    again = json.loads(json.dumps(a.to_dict()))
    assert again["reference_epoch"] == 6 and len(again["ranks"]) == 5 and again["settings"]["resamples"] == 1000


# ------------------------------------------------------------------ with the replay (sweeper.replay, Ray's ASHA)


def test_replay_recommends_a_grace_period_that_keeps_the_late_bloomer() -> None:
    pytest.importorskip("sweeper.replay")
    d = dg.diagnose(flipping(n=9, epochs=8, flip=3), "map50", "max", orders=5)
    assert d.settle_epoch == 3
    graces = sorted({c.grace_period for c in d.candidates})
    assert graces == [3, 4, 5, 6] and {c.reduction_factor for c in d.candidates} == {2, 3, 4}
    assert d.chosen is not None and d.chosen.regret <= dg.MAX_REGRET
    assert d.recommended == {"grace_period": d.chosen.grace_period, "reduction_factor": d.chosen.reduction_factor}
    assert d.chosen.compute_fraction < 1.0  # it saves compute: the ranks are right from epoch 3
    assert d.chosen.compute_fraction == min(c.compute_fraction for c in d.candidates if c.regret <= dg.MAX_REGRET)
    assert "recommended" in [row[-1] for row in dg.candidate_rows(d)]
    ray_asha = next(b for b in d.baselines if b["scheduler"] == "ray-asha")  # grace 1: cuts the late bloomers
    assert ray_asha["regret"] > d.chosen.regret
    assert [row[0] for row in dg.candidate_rows(d)][-2:] == ["ray-asha", "default"]


def test_replay_of_a_grace_before_the_flip_loses_the_late_bloomer() -> None:
    """The replay is what says a too-early grace period costs: ASHA at grace 1 cuts the late
    bloomers these curves hide until epoch 3."""
    pytest.importorskip("sweeper.replay")
    early = dg.replay_candidates(flipping(n=9, epochs=8, flip=3), "max", 8, [1], [3], orders=5)
    assert early[0].regret > dg.MAX_REGRET


def test_without_the_replay_no_ray_is_loaded() -> None:
    """`sweeper report` draws the section without `--replay`: the diagnosis must not pull in Ray."""
    import json
    import subprocess
    import sys

    code = ("import json, sys\nfrom sweeper import diagnosis\n"
            "curves = {f't{i}': {e: i * e for e in range(1, 5)} for i in range(6)}\n"
            "d = diagnosis.diagnose(curves, replay=False)\n"
            "print(json.dumps([d.settle_epoch, sorted({m.split('.')[0] for m in sys.modules})]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    settle, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert settle == 1 and "scipy" in loaded and not {"ray", "mlflow", "torch"} & set(loaded)


def test_a_cheaper_baseline_that_met_the_target_is_named() -> None:
    """The best trial leads from epoch 1 but the others' order is shuffled until epoch 3: ranks
    settle at 3, yet Ray's ASHA (grace 1) keeps the best for less compute. The notes say so
    rather than hide it, and the recommendation stays at the settle epoch."""
    pytest.importorskip("sweeper.replay")
    shuffled = np.random.default_rng(5).permutation(11)
    curves = {f"t{i}": {e: (1.0 if i == 11 else 0.5 * shuffled[i] / 11) if e < 3 else i / 12 + 0.01 * e
                        for e in range(1, 9)} for i in range(12)}
    d = dg.diagnose(curves, "acc", "max", orders=3)
    assert d.settle_epoch == 3 and d.recommended["grace_period"] >= 3
    ray_asha = next(b for b in d.baselines if b["scheduler"] == "ray-asha")
    assert ray_asha["regret"] == 0.0 and ray_asha["compute_fraction"] < d.chosen.compute_fraction
    assert any(n.startswith("On these curves ray-asha (") and "settle epoch 3" in n for n in d.notes)
