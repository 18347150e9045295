"""What `sweeper confirm` measured, read back from MLflow: mean ± 95% CI per confirmed
configuration, each compared with the winner, for the confirm command and the leaderboard.

A confirm launch (`sweeper.confirm`) re-runs a search's K best configurations with N seeds as an
ablation of its own (experiment `NAME-confirm`): the search's best is the ablation's `baseline`,
the others are named variants `rank2`, `rank3`, ... The search's parent run carries the mapping
in its `sweeper.confirmed_by` tag::

    {"sweep": "demo-confirm", "seeds": 3,
     "configs": [{"rank": 1, "variant": "baseline", "trial": "a1b2", "run_id": "...", "value": 0.71}, ...]}

so `sweeper leaderboard demo` can put the confirmed configurations first without a search over
every experiment. `confirm_table` is the statistics, on plain numbers: the winner is the
configuration with the best confirmed mean (not necessarily the search's rank 1), every other
one is compared with it (`stats.ablation_table`: paired t by seed, Holm-adjusted over the K - 1
comparisons), and the winner is *distinguishable* when every comparison is significant. MLflow
only; nothing here imports Ray.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

#: on a search's parent run: the confirm launch that re-ran its best configurations (JSON, above)
CONFIRMED_BY = "sweeper.confirmed_by"
#: on a confirm launch's parent run: the search it confirms, and that search's parent run id
CONFIRM_OF = "sweeper.confirm_of"
CONFIRM_SOURCE_RUN = "sweeper.confirm_source_run"
#: on a confirm launch's trial runs: the rank (in the search) of the configuration it re-runs,
#: and the search's trial (id and run id) that found it
CONFIRM_RANK = "sweeper.confirm_rank"
CONFIRM_TRIAL = "sweeper.confirm_trial"
CONFIRM_TRIAL_RUN = "sweeper.confirm_trial_run"
#: the family-wise error rate of "the winner is distinguishable"
ALPHA = 0.05
#: the leaderboard columns a confirmed configuration fills
COLUMNS = ("confirmed", "confirmed ± 95% CI", "seeds")


def seed_groups(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, float]]:
    """{variant: {seed: objective at the last epoch}} over a confirm launch's finished trials
    (leaderboard rows): what the statistics compare. Stopped, failed or running trials are left
    out: a confirmation is of full-length runs only."""
    groups: dict[str, dict[int, float]] = {}
    for r in rows:
        if r.get("status") != "finished" or r.get("final") is None or r.get("variant") is None:
            continue
        groups.setdefault(str(r["variant"]), {})[int(r["seed"])] = float(r["final"])
    return groups


def confirm_table(groups: Mapping[str, Mapping[int, float]], configs: Sequence[Mapping[str, Any]], mode: str,
                  alpha: float = ALPHA) -> list[dict[str, Any]]:
    """One row per configuration in `configs` (rank, variant, trial), the winner first, then the
    others best-first; a configuration with no finished seed yet comes last with n = 0.

    Each row: rank, trial, variant, n, mean, ci_low, ci_high (95% Student-t), and for all but
    the winner diff (mean - winner's), diff_ci_low/high, p (paired t when the seeds match, else
    Welch), p_holm, test, significant (p_holm < alpha), better (whether it points the good way)."""
    from sweeper import stats

    measured = {v: seeds for v, seeds in groups.items() if seeds}
    by_variant = {str(c["variant"]): c for c in configs}
    rows: list[dict[str, Any]] = []
    if measured:
        sign = 1.0 if mode == "max" else -1.0
        means = {v: sum(s.values()) / len(s) for v, s in measured.items()}
        winner = max(means, key=lambda v: (sign * means[v], -by_variant.get(v, {}).get("rank", math.inf)))
        rows = stats.ablation_table(measured, winner, mode, alpha=alpha)
    seen = {r["variant"] for r in rows}
    for c in configs:  # not measured yet
        if str(c["variant"]) not in seen:
            rows.append({"variant": str(c["variant"]), "n": 0, "mean": math.nan, "std": math.nan,
                         "ci_low": math.nan, "ci_high": math.nan, "diff": math.nan, "diff_ci_low": None,
                         "diff_ci_high": None, "p": None, "p_holm": None, "test": "", "significant": False,
                         "better": False})
    for i, r in enumerate(rows):
        c = by_variant.get(r["variant"], {})
        r.update(rank=c.get("rank"), trial=c.get("trial"), run_id=c.get("run_id"), winner=i == 0 and r["n"] > 0)
    return rows


def distinguishable(rows: Sequence[Mapping[str, Any]]) -> bool | None:
    """Whether the winner (rows[0]) beats every other configuration significantly after Holm's
    correction; None when that cannot be tested (fewer than two configurations with results)."""
    others = [r for r in rows[1:] if r["n"] > 0]
    if not rows or rows[0]["n"] == 0 or not others:
        return None
    return all(r["significant"] and not r["better"] for r in others)


def half_width(row: Mapping[str, Any]) -> float | None:
    """The 95% CI's half-width of a row's mean; None with fewer than two seeds."""
    low, high = row.get("ci_low"), row.get("ci_high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return None
    return (high - low) / 2


def confirmed_first(uri: str, tag: str, rows: list[dict[str, Any]], mode: str) -> tuple[list[dict[str, Any]],
                                                                                         list[dict[str, Any]] | None]:
    """A search's leaderboard rows with its confirmed configurations first (best confirmed mean
    first, each with `confirmed`, `confirmed ± 95% CI` and `seeds`), then the others as they
    were; and the confirm table (None, rows unchanged, if the confirm launch cannot be read)."""
    from sweeper import store

    try:
        info = json.loads(tag)
        board = store.leaderboard(uri, info["sweep"])
    except (LookupError, ValueError, KeyError, TypeError):
        return rows, None
    table = confirm_table(seed_groups(board["rows"]), info["configs"], mode)
    by_run = {r["run_id"]: r for r in table if r["n"] > 0}
    first: list[dict[str, Any]] = []
    for t in table:
        row = next((r for r in rows if t["n"] > 0 and r["run_id"] == t["run_id"]), None)
        if row is not None:
            first.append({**row, "confirmed": t["mean"], "confirmed ± 95% CI": half_width(t), "seeds": t["n"]})
    rest = [r for r in rows if r["run_id"] not in by_run]
    for r in table:
        r["sweep"] = info["sweep"]
    return first + rest, table
