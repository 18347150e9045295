"""Can early stopping be trusted on this task? The grace-period diagnosis of a sweep's own curves.

ASHA judges a trial by its objective at a rung; that is only sound from the epoch on where a
trial's rank among the others already says its rank at the end. This module measures that on
curves a sweep recorded (a finished FIFO sweep, a pilot, or a partial sweep) and recommends the
scheduler settings that follow:

1. the **reference epoch**: the last epoch that at least `MIN_TRIALS` trials reached (the planned
   last epoch when the sweep trained everything to the end);
2. per epoch e before it, **Spearman's rho** between the trials' objective at e and at the
   reference epoch, over the trials that reached the reference epoch, with a **seeded
   percentile bootstrap CI** (`RESAMPLES` resamples of those trials, `CONFIDENCE`);
3. the **settle epoch**: the first epoch whose CI lower bound is >= `SETTLE_RHO` and stays so at
   every later epoch before the reference. None when no epoch settles: early stopping would
   decide on noise;
4. the **recommendation**: grace period = the settle epoch; the reduction factor (and possibly a
   later grace period) from replaying this sweep's curves through the sweeps' own ASHA
   (`sweeper.replay`): among grace periods from the settle epoch on and factors 2, 3, 4, the one
   with the least compute whose median regret over arrival orders is <= `MAX_REGRET`.

Partial sweeps: a trial ASHA stopped has a truncated curve. It counts towards the reference epoch
only as far as it got, and it enters the correlations only if it reached the reference epoch;
stopped trials were mostly the weak ones, so on a partial sweep rho is measured among survivors
(a narrower range of quality, which usually lowers it). The replay uses the curves that reach the
reference epoch, cut there (a truncated curve cannot be continued). `Diagnosis.notes` says which
of these applied, in words the CLI and the report print.

    d = diagnose({"t1": {1: 0.1, 2: 0.3, 3: 0.4}, ...}, mode="max")
    d.settle_epoch, d.recommended, [r.rho for r in d.ranks]

Pure logic (numpy, scipy): no MLflow here; Ray only inside `sweeper.replay`, imported when the
replay runs.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: fewer trials than this give no meaningful rank correlation (rho on 3 points is 1, 0.5, ...)
MIN_TRIALS = 4
#: fewer epochs than this leave nothing to stop early
MIN_EPOCHS = 2
#: the rank correlation (CI lower bound) from which a rung's ranking is trusted
SETTLE_RHO = 0.8
RESAMPLES = 1000
CONFIDENCE = 0.95
#: the regret (relative to the best of training everything to the reference epoch) a
#: recommendation may cost: 1%
MAX_REGRET = 0.01
REDUCTION_FACTORS = (2, 3, 4)
#: grace periods tried from the settle epoch on
GRACE_CANDIDATES = 4
#: arrival orders replayed per candidate
ORDERS = 20

Curves = Mapping[str, Mapping[int, float]]


class DiagnosisError(ValueError):
    """The sweep's curves cannot be diagnosed (too few trials or epochs); the message says why."""


@dataclass(frozen=True)
class EpochRank:
    """Spearman's rho of the objective at `epoch` with the objective at the reference epoch,
    over `n` trials, with its bootstrap CI (None where undefined: constant values)."""

    epoch: int
    n: int
    rho: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class Candidate:
    """ASHA with (grace_period, reduction_factor) replayed on the sweep's curves: medians over
    `orders` arrival orders with `workers` trials at a time. compute_fraction: trial-epochs as a
    fraction of training every trial to the reference epoch; regret: relative shortfall of the
    configuration it returns, by objective at the reference epoch."""

    grace_period: int
    reduction_factor: int
    compute_fraction: float
    regret: float
    regret_p90: float
    orders: int
    workers: int


@dataclass(frozen=True)
class Diagnosis:
    metric: str
    mode: str
    trials: int  # trials with at least one reported epoch
    max_epoch: int  # the furthest epoch any trial reached
    reference_epoch: int
    reference_trials: int  # trials that reached the reference epoch: the correlations' n
    truncated: int  # trials whose curve ends before the reference epoch
    ranks: list[EpochRank]
    settle_epoch: int | None
    recommended: dict[str, int] | None  # {"grace_period": g, "reduction_factor": rf} (rf when replayed); None: FIFO
    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None  # the replayed candidate behind the recommendation
    #: for comparison, replayed the same way: {"scheduler": "ray-asha" | "default", "compute_fraction",
    #: "regret", "regret_p90"}
    baselines: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (`sweeper diagnose --format json`)."""
        return asdict(self)


# ---------------------------------------------------------------- curves


def curve_from_history(points: Sequence[Sequence[float]]) -> dict[int, float]:
    """MLflow's metric history ([[step, value], ...]) as {epoch: value}: finite values only (a
    diverged epoch ends the curve there), the last value logged for a repeated step."""
    curve: dict[int, float] = {}
    for step, value in sorted(points, key=lambda p: p[0]):
        value = float(value)
        if not math.isfinite(value):
            break
        curve[int(step)] = value
    return curve


def _reach(curve: Mapping[int, float]) -> int:
    """The last epoch up to which a curve has a value at every epoch from 1 (0 if none)."""
    e = 0
    while (e + 1) in curve:
        e += 1
    return e


def reference_epoch(curves: Curves, min_trials: int = MIN_TRIALS) -> int:
    """The last epoch that at least `min_trials` curves reach (without gaps); 0 if none does."""
    reach = sorted((_reach(c) for c in curves.values()), reverse=True)
    return reach[min_trials - 1] if len(reach) >= min_trials else 0


# ---------------------------------------------------------------- correlations


def _rank_rows(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank, as Spearman's rho wants)."""
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation row by row; nan where a row is constant."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (a * b).sum(axis=-1) / den
    return np.where(den > 0, out, np.nan)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho of paired values; None when either side is constant (undefined)."""
    rho = float(_pearson_rows(_rank_rows(np.asarray(x, float)), _rank_rows(np.asarray(y, float))))
    return None if math.isnan(rho) else rho


def bootstrap_ci(x: Sequence[float], y: Sequence[float], *, resamples: int = RESAMPLES,
                 confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of Spearman's rho: the pairs resampled with replacement
    `resamples` times (numpy Generator seeded with `seed`, so a report is reproducible).
    Resamples where rho is undefined (all values equal) are left out; (None, None) if more than
    half are."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    rhos = _pearson_rows(_rank_rows(x[idx]), _rank_rows(y[idx]))
    rhos = rhos[~np.isnan(rhos)]
    if len(rhos) * 2 < resamples:
        return None, None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(rhos, [tail, 100 - tail])
    return float(low), float(high)


def rank_correlations(curves: Curves, reference: int, *, resamples: int = RESAMPLES,
                      confidence: float = CONFIDENCE, seed: int = 0) -> list[EpochRank]:
    """rho (with CI) of each epoch 1..reference-1 with the reference epoch, over the curves that
    reach the reference epoch. The bootstrap at each epoch is seeded with `seed + epoch`."""
    full = [c for c in curves.values() if _reach(c) >= reference]
    final = [c[reference] for c in full]
    out = []
    for epoch in range(1, reference):
        values = [c[epoch] for c in full]
        rho = spearman(values, final) if len(full) >= 2 else None
        low, high = (bootstrap_ci(values, final, resamples=resamples, confidence=confidence, seed=seed + epoch)
                     if rho is not None else (None, None))
        out.append(EpochRank(epoch, len(full), rho, low, high))
    return out


def settle_epoch(ranks: Sequence[EpochRank], threshold: float = SETTLE_RHO) -> int | None:
    """The first epoch whose CI lower bound is >= `threshold` and stays >= it at every later
    epoch in `ranks` (an undefined rho or CI counts as below); None if no epoch does."""
    settled = None
    for r in ranks:
        if r.ci_low is not None and r.ci_low >= threshold:
            settled = settled or r.epoch
        else:
            settled = None
    return settled


# ---------------------------------------------------------------- recommendation


def _median(values: Sequence[float]) -> float:
    return float(np.median(values))


def replay_candidates(curves: Curves, mode: str, reference: int, graces: Sequence[int],
                      factors: Sequence[int] = REDUCTION_FACTORS, *, workers: int = 2, orders: int = ORDERS,
                      seed: int = 0, make_asha: Callable[[int, int, int, str], Any] | None = None) -> list[Candidate]:
    """Each (grace, factor) replayed with `sweeper.replay` on the curves that reach `reference`,
    cut there, over `orders` arrival orders (seeds `seed`..). `make_asha(grace, factor, max_t,
    mode)` builds the scheduler (default: the sweeps' own ASHA, `sweeper.replay.asha`)."""
    from sweeper import replay as rp

    full = {k: c for k, c in curves.items() if _reach(c) >= reference}
    replay_curves = [rp.Curve(tuple(c[e] for e in range(1, reference + 1)), key=k) for k, c in sorted(full.items())]
    build = make_asha or _default_asha
    out = []
    for grace in graces:
        for rf in factors:
            results = [rp.replay(replay_curves, lambda: build(grace, rf, reference, mode), mode=mode,
                                 max_t=reference, workers=workers, seed=seed + i) for i in range(orders)]
            regrets = [r.regret for r in results]
            out.append(Candidate(grace, rf, round(_median([r.compute_fraction for r in results]), 4),
                                 round(_median(regrets), 4), round(float(np.percentile(regrets, 90)), 4),
                                 orders, workers))
    return out


def replay_baselines(curves: Curves, mode: str, reference: int, names: Sequence[str] = ("ray-asha", "default"), *,
                     workers: int = 2, orders: int = ORDERS, seed: int = 0) -> list[dict[str, Any]]:
    """Named schedulers of `sweeper.replay.SCHEDULERS` (Ray's ASHA defaults, our default) replayed
    on the same curves and orders as the candidates, so the recommendation can be compared."""
    from sweeper import replay as rp

    full = {k: c for k, c in curves.items() if _reach(c) >= reference}
    replay_curves = [rp.Curve(tuple(c[e] for e in range(1, reference + 1)), key=k) for k, c in sorted(full.items())]
    out = []
    for name in names:
        results = [rp.replay_named(name, replay_curves, mode=mode, max_t=reference, workers=workers, seed=seed + i)
                   for i in range(orders)]
        regrets = [r.regret for r in results]
        out.append({"scheduler": name, "compute_fraction": round(_median([r.compute_fraction for r in results]), 4),
                    "regret": round(_median(regrets), 4), "regret_p90": round(float(np.percentile(regrets, 90)), 4)})
    return out


def _default_asha(grace: int, rf: int, max_t: int, mode: str) -> Any:
    """The stop-based ASHA the sweeps run (`sweeper.scheduler.PersistentASHA`, no state file), on
    epochs; the replay sets its metric and mode."""
    from sweeper.replay import TIME_ATTR
    from sweeper.scheduler import PersistentASHA

    return PersistentASHA(time_attr=TIME_ATTR, max_t=max_t, grace_period=grace, reduction_factor=rf,
                          state_path=None)


def choose(candidates: Sequence[Candidate], max_regret: float = MAX_REGRET) -> tuple[Candidate | None, bool]:
    """The candidate with the least compute among those with median regret <= `max_regret` (ties:
    lower p90 regret, then the later grace period), and True; if none meets it, the one with the
    least regret (then least compute) and False. (None, False) for no candidates."""
    if not candidates:
        return None, False
    ok = [c for c in candidates if c.regret <= max_regret]
    if ok:
        return min(ok, key=lambda c: (c.compute_fraction, c.regret_p90, -c.grace_period)), True
    return min(candidates, key=lambda c: (c.regret, c.compute_fraction)), False


def diagnose(curves: Curves, metric: str = "objective", mode: str = "max", *, max_t: int | None = None,
             replay: bool = True, workers: int = 2, orders: int = ORDERS, seed: int = 0,
             resamples: int = RESAMPLES, make_asha: Callable[[int, int, int, str], Any] | None = None) -> Diagnosis:
    """The whole diagnosis of one sweep's curves ({trial: {epoch: objective}}); `max_t` is the
    sweep's planned last epoch when known. `replay=False` skips `sweeper.replay` (no Ray): only the
    grace period is recommended then, with no compute/regret.

    Raises DiagnosisError for fewer than MIN_TRIALS trials or when fewer than MIN_TRIALS trials
    reached epoch MIN_EPOCHS."""
    off_grid = [sorted(c)[:2] for c in curves.values() if c and _reach(c) == 0]
    curves = {k: dict(c) for k, c in curves.items() if _reach(c) >= 1}
    if len(curves) < MIN_TRIALS:
        steps = (f" ({len(off_grid)} more logged it at steps other than epochs 1, 2, ..., e.g. "
                 f"{', '.join(map(str, off_grid[0]))}: the diagnosis counts epochs)") if off_grid else ""
        raise DiagnosisError(f"{len(curves)} trial(s) reported {metric} per epoch{steps}; a rank correlation "
                             f"needs at least {MIN_TRIALS}: run a pilot with more trials")
    max_epoch = max(_reach(c) for c in curves.values())
    reference = reference_epoch(curves)
    if reference < MIN_EPOCHS:
        if max_epoch < MIN_EPOCHS:
            why = f"every trial reported {metric} for 1 epoch only"
        else:
            reached = sum(_reach(c) >= MIN_EPOCHS for c in curves.values())
            why = f"only {reached} of {len(curves)} trials reached epoch {MIN_EPOCHS}"
        raise DiagnosisError(f"{why}; diagnosing early stopping needs at least {MIN_TRIALS} trials with "
                             f">= {MIN_EPOCHS} epochs: run a pilot with FIFO (scheduler: {{name: fifo}})")
    full = sum(_reach(c) >= reference for c in curves.values())
    truncated = len(curves) - full
    ranks = rank_correlations(curves, reference, resamples=resamples, seed=seed)
    settled = settle_epoch(ranks)
    notes = [f"Correlations at each epoch e are over the {full} trial(s) that reached the reference epoch "
             f"{reference} (the last epoch at least {MIN_TRIALS} trials reached); rho compares each "
             f"trial's {metric} at e with its {metric} at epoch {reference}."]
    if truncated:
        notes.append(f"{truncated} trial(s) stopped before epoch {reference} (truncated curves, e.g. stopped by "
                     "ASHA) count towards the reference epoch only as far as they got and are left out of the "
                     "correlations and the replay: rho is measured among survivors, usually lower than over "
                     "all trials. Diagnose a FIFO pilot for a definitive answer.")
    if max_t and reference < max_t:
        notes.append(f"The reference epoch {reference} is before the planned last epoch {max_t}: this says how "
                     f"well early epochs predict epoch {reference}, not the end.")
    notes.append(f"Settle epoch: the first epoch whose {CONFIDENCE:.0%} bootstrap CI lower bound of rho "
                 f"({resamples} resamples, seeded) is >= {SETTLE_RHO} and stays >= {SETTLE_RHO} at every later "
                 f"epoch before {reference}.")
    candidates: list[Candidate] = []
    baselines: list[dict[str, Any]] = []
    chosen, met = None, False
    if settled is None:
        recommended = None
        notes.append(f"No epoch before {reference} ranks trials reliably: early stopping would decide on noise. "
                     f"Train to the end (scheduler: {{name: fifo}}) or run a longer pilot.")
    elif not replay:
        recommended = {"grace_period": settled}
        notes.append("Not replayed here: `sweeper diagnose` (or `sweeper report --replay`) replays these curves "
                     "through ASHA to choose the reduction factor and give its compute and regret.")
    else:
        graces = list(range(settled, min(reference, settled + GRACE_CANDIDATES)))
        candidates = replay_candidates(curves, mode, reference, graces, workers=workers, orders=orders,
                                       seed=seed, make_asha=make_asha)
        chosen, met = choose(candidates)
        baselines = replay_baselines(curves, mode, reference, workers=workers, orders=orders, seed=seed)
        recommended = {"grace_period": chosen.grace_period, "reduction_factor": chosen.reduction_factor}
        if met:
            notes.append(f"Recommended: the least compute among grace periods {graces[0]}..{graces[-1]} and "
                         f"reduction factors {', '.join(map(str, REDUCTION_FACTORS))} with median regret <= "
                         f"{MAX_REGRET:.0%}, replaying these curves with the sweeps' ASHA ({orders} arrival "
                         f"orders, {workers} trials at a time).")
        else:
            notes.append(f"No candidate reached median regret <= {MAX_REGRET:.0%} on these curves; recommended: "
                         f"the least regret ({chosen.regret:.1%}). Consider FIFO or a later grace period.")
        cheaper = [b for b in baselines
                   if b["regret"] <= MAX_REGRET and b["compute_fraction"] < chosen.compute_fraction]
        if met and cheaper:
            names = ", ".join(f"{b['scheduler']} ({b['compute_fraction']:.1%})" for b in cheaper)
            notes.append(f"On these curves {names} also met the regret target, with less compute; a scheduler "
                         f"that judges before the settle epoch {settled} relies on ranks rho says are unreliable "
                         "(it held on these trials, not necessarily on the next ones), so the recommended grace "
                         "period stays at or after it.")
    return Diagnosis(metric, mode, len(curves), max_epoch, reference, full, truncated, ranks, settled,
                     recommended, candidates, chosen, baselines, notes,
                     {"min_trials": MIN_TRIALS, "settle_rho": SETTLE_RHO, "resamples": resamples,
                      "confidence": CONFIDENCE, "max_regret": MAX_REGRET, "seed": seed})


# ---------------------------------------------------------------- text


def _f(value: float | None, digits: int = 2) -> str:
    return "\u2014" if value is None else f"{value:.{digits}f}"


def rank_rows(d: Diagnosis) -> list[list[str]]:
    """Rows of the per-epoch table: epoch, n, rho, CI, settled mark."""
    return [[str(r.epoch), str(r.n), _f(r.rho), f"[{_f(r.ci_low)}, {_f(r.ci_high)}]",
             "settled" if d.settle_epoch is not None and r.epoch >= d.settle_epoch else ""] for r in d.ranks]


def candidate_rows(d: Diagnosis) -> list[list[str]]:
    """Rows of the replay table: grace, factor, compute, median and p90 regret, chosen mark; then
    the baselines (Ray's ASHA defaults, our default) on the same curves."""
    return [[str(c.grace_period), str(c.reduction_factor), f"{c.compute_fraction:.1%}", f"{c.regret:.2%}",
             f"{c.regret_p90:.2%}", "recommended" if c == d.chosen else ""] for c in d.candidates] + \
        [[b["scheduler"], "", f"{b['compute_fraction']:.1%}", f"{b['regret']:.2%}", f"{b['regret_p90']:.2%}",
          "for comparison"] for b in d.baselines]


def verdict(d: Diagnosis) -> str:
    """One sentence: what to set."""
    if d.recommended is None:
        return (f"Early stopping cannot be trusted on these curves: no epoch before {d.reference_epoch} "
                f"ranks trials with rho >= {SETTLE_RHO} (CI lower bound). Use scheduler: {{name: fifo}}.")
    g, rf = d.recommended["grace_period"], d.recommended.get("reduction_factor")
    text = (f"Ranks settle at epoch {d.settle_epoch}. Recommended: scheduler: {{name: asha, grace_period: {g}"
            + (f", reduction_factor: {rf}}}" if rf else "}"))
    if d.chosen is not None:
        text += (f"; replayed on this sweep's curves it trains {d.chosen.compute_fraction:.1%} of the trial-epochs "
                 f"of training all to epoch {d.reference_epoch}, median regret {d.chosen.regret:.2%} "
                 f"(p90 {d.chosen.regret_p90:.2%})")
    return text + "."
