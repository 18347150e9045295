"""Sweep reports: one Markdown file and one self-contained HTML file per sweep.

Why two formats: teams paste the Markdown tables straight into their wiki (figures are referenced
relatively, ``figures/*.png``), while the HTML is a single file to mail around: inline CSS, every
figure embedded as a base64 PNG, no external URLs or scripts. Both are rendered from the same
list of blocks, so they always hold the same information.

The sweep's results arrive already fetched (``data``, a JSON-like dict built by the caller from
MLflow / Ray), so this module imports neither and its tests stay fast. Statistics come from
`sweeper.stats`; the numbers in the ablation table are exactly `stats.ablation_table`'s. The
early-stopping section is `sweeper.diagnosis`'s; only `write_report(..., replay=True)` replays
the curves through Ray's ASHA (`sweeper.replay`).
Output is deterministic for the same input, except the "Generated" line of the header.

    paths = write_report(data, Path("runs/demo/report"), progress=print)
    paths["markdown"], paths["html"], paths["figures"]
"""
from __future__ import annotations

import base64
import html
import math
import re
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sweeper import stats
from sweeper.spaces import FOLD_KEY, without_factor

ALPHA = 0.05
TOP_N = 10
ERROR_CHARS = 120
DASH = "\u2014"
STATUS_ORDER = ("finished", "stopped", "running", "diverged", "failed")
BASELINE_COLOUR = "#7f7f7f"
HIGHLIGHT_COLOUR = "#d62728"
ABLATION_COLUMNS = ["variant", "n", "mean \u00b1 95% CI", "\u0394 vs baseline [95% CI]", "p",
                    "p (Holm)", "test", "significant"]

# A block is one of: ("h1" | "h2" | "h3", text), ("p", text), ("list", items),
# ("table", headers, rows), ("figure", path, caption). Cells are str; a `_Bold` cell renders
# bold in both formats.
Block = tuple


class _Bold(str):
    """A table cell rendered bold (``**x**`` / ``<strong>``)."""


# ---------------------------------------------------------------- small helpers


def _plt() -> Any:
    """pyplot on the headless Agg backend, imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _num(value: Any) -> float | None:
    """A finite float, or None for missing / non-numeric / nan / inf values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _f4(value: Any) -> str:
    value = _num(value)
    return DASH if value is None else f"{value:.4f}"


def _fp(value: Any) -> str:
    """p-values with 3 significant digits: 0.0123, 1.2e-05."""
    value = _num(value)
    return DASH if value is None else f"{value:.3g}"


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _fmt_params(params: dict, keys: Sequence[str] | None = None) -> str:
    keys = sorted(params) if keys is None else [k for k in keys if k in params]
    return ", ".join(f"{k}={_fmt_value(params[k])}" for k in keys)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _objectives(data: dict) -> list[dict]:
    return [{"metric": o["metric"], "mode": o.get("mode", "max")}
            for o in data.get("objectives") or []]


def _trials(data: dict) -> list[dict]:
    return list(data.get("trials") or [])


def _final(trial: dict, metric: str) -> float | None:
    return _num((trial.get("final") or {}).get(metric))


def _epoch(trial: dict) -> int | None:
    epoch = _num((trial.get("final") or {}).get("epoch"))
    if epoch is None:
        points = _history(trial, None)
        epoch = points[-1][0] if points else _num(trial.get("stopped_at"))
    return None if epoch is None else int(epoch)


def _history(trial: dict, metric: str | None) -> list[tuple[float, float]]:
    """(epoch, value) points of one metric (None: the first metric in the history), sorted."""
    hist = trial.get("history") or {}
    if metric is None:
        metric = next(iter(hist), None)
    points = []
    for point in hist.get(metric) or []:
        epoch, value = _num(point[0]), _num(point[1])
        if epoch is not None and value is not None:
            points.append((epoch, value))
    return sorted(points)


def _best_first(trials: list[dict], mode: str) -> list[dict]:
    sign = -1.0 if mode == "max" else 1.0
    return sorted(trials, key=lambda t: (sign * _num(t.get("best")), str(t.get("trial"))))


def _param_kind(values: list) -> str:
    """"int", "float" or "categorical" for the values one searched key took."""
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "int"
    if values and all(_num(v) is not None for v in values):
        return "float"
    return "categorical"


def _is_log(values: list) -> bool:
    nums = [float(v) for v in values]
    return bool(nums) and min(nums) > 0 and max(nums) / min(nums) >= 100


def _categories(values: list) -> list:
    return sorted(set(values), key=lambda v: (type(v).__name__, str(v)))


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    return path


# ---------------------------------------------------------------- header


def _header(data: dict) -> list[Block]:
    trials = _trials(data)
    counts: dict[str, int] = {}
    for trial in trials:
        status = str(trial.get("status") or "unknown")
        counts[status] = counts.get(status, 0) + 1
    order = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts) - set(STATUS_ORDER))
    by_status = ", ".join(f"{counts[s]} {s}" for s in order) or "none"
    objectives = ", ".join(f"{o['metric']} ({o['mode']})" for o in _objectives(data)) or DASH
    lines = [f"Kind: {data.get('kind', DASH)}",
             f"Objective{'s' if len(_objectives(data)) > 1 else ''}: {objectives}",
             f"Trials: {len(trials)} ({by_status})"]
    if data.get("kind") == "ablation" and data.get("baseline"):
        lines.append(f"Baseline: {data['baseline']}")
    if data.get("searched"):
        lines.append(f"Searched: {', '.join(data['searched'])}")
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [("h1", f"Sweep report: {data.get('name', 'sweep')}"), ("list", lines),
            ("p", f"Generated {generated}")]


# ---------------------------------------------------------------- ablation


def _ablation_groups(data: dict, metric: str) -> dict[str, dict]:
    """{variant: {seed: final metric}} over finished trials; seedless trials get unique keys."""
    groups: dict[str, dict] = {}
    for i, trial in enumerate(_trials(data)):
        value = _final(trial, metric)
        if trial.get("status") != "finished" or value is None or trial.get("variant") is None:
            continue
        seed = trial.get("seed")
        groups.setdefault(str(trial["variant"]), {})[-(i + 1) if seed is None else seed] = value
    return groups


def _ablation_row(row: dict) -> list[str]:
    half = (_num(row["ci_high"]) - row["mean"]) if _num(row["ci_high"]) is not None else None
    mean = _f4(row["mean"]) + (f" \u00b1 {half:.4f}" if half is not None else "")
    if row.get("p") is None:  # the baseline
        return [str(row["variant"]), str(row["n"]), mean, DASH, DASH, DASH, DASH, DASH]
    diff = f"{row['diff']:+.4f}" if _num(row["diff"]) is not None else DASH
    if _num(row["diff_ci_low"]) is not None and _num(row["diff_ci_high"]) is not None:
        diff += f" [{row['diff_ci_low']:.4f}, {row['diff_ci_high']:.4f}]"
    significant = _Bold("yes") if row["significant"] else "no"
    return [str(row["variant"]), str(row["n"]), mean, diff, _fp(row["p"]), _fp(row["p_holm"]),
            row["test"] or DASH, significant]


def _ablation_note(baseline: str) -> str:
    return (f"Values are each finished trial's metric at its last epoch. mean \u00b1 half-width of "
            f"the 95% Student-t CI; \u0394 = variant \u2212 baseline ({baseline}) with its 95% CI; "
            f"p is a paired t-test when the seeds match the baseline's, else Welch's t-test; "
            f"Holm-corrected across variants; significant when p (Holm) < alpha {ALPHA:g}.")


def _ablation_figure(rows: list[dict], metric: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows) + 2), 4))
    x = list(range(len(rows)))
    means = [r["mean"] if _num(r["mean"]) is not None else 0.0 for r in rows]
    lows = [m - r["ci_low"] if _num(r["ci_low"]) is not None else 0.0
            for m, r in zip(means, rows)]
    highs = [r["ci_high"] - m if _num(r["ci_high"]) is not None else 0.0
             for m, r in zip(means, rows)]
    colours = [BASELINE_COLOUR if i == 0 else "#1f77b4" for i in x]
    ax.bar(x, means, yerr=[lows, highs], color=colours, capsize=4)
    ax.axhline(means[0], color=BASELINE_COLOUR, linestyle="--", linewidth=1)
    for i, row in enumerate(rows):
        if row["significant"]:
            ax.annotate("*", (i, means[i] + highs[i]), ha="center", va="bottom", fontsize=16)
    ax.set_xticks(x)
    ax.set_xticklabels([str(r["variant"]) for r in rows], rotation=30, ha="right")
    spread = [m + h for m, h in zip(means, highs)] + [m - lo for m, lo in zip(means, lows)]
    pad = 0.15 * (max(spread) - min(spread) or abs(max(spread)) or 1.0)
    ax.set_ylim(min(spread) - pad, max(spread) + pad)
    ax.set_ylabel(f"{metric} (mean, 95% CI)")
    ax.set_title(f"{metric}: variants vs baseline (grey); * significant")
    return _save(fig, path)


def _ablation_section(data: dict, fig_dir: Path) -> list[Block]:
    baseline = str(data.get("baseline") or "baseline")
    blocks: list[Block] = [("h2", "Ablation")]
    for obj in _objectives(data):
        metric = obj["metric"]
        blocks.append(("h3", f"{metric} ({obj['mode']})"))
        groups = _ablation_groups(data, metric)
        if baseline not in groups:
            blocks.append(("p", f"No finished {baseline} trial reports {metric}; no table."))
            continue
        rows = stats.ablation_table(groups, baseline, obj["mode"], alpha=ALPHA)
        blocks.append(("table", ABLATION_COLUMNS, [_ablation_row(r) for r in rows]))
        blocks.append(("p", _ablation_note(baseline)))
        path = _ablation_figure(rows, metric, fig_dir / f"ablation_{_slug(metric)}.png")
        blocks.append(("figure", path, f"{metric}: mean per variant with 95% CI"))
    return blocks


# ---------------------------------------------------------------- learning curves


def _curve_colours(data: dict, trials: list[dict]) -> dict[str, Any]:
    """Colour per trial id: by variant for ablations, per trial otherwise."""
    plt = _plt()
    if data.get("kind") == "ablation":
        baseline = data.get("baseline")
        variants = sorted({str(t.get("variant")) for t in trials}, key=lambda v: (v != baseline, v))
        cmap = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")
        colour = {v: cmap(i % cmap.N) for i, v in enumerate(variants)}
        return {t["trial"]: colour[str(t.get("variant"))] for t in trials}
    cmap = plt.get_cmap("tab10" if len(trials) <= 10 else "viridis")
    n = max(len(trials) - 1, 1)
    return {t["trial"]: cmap(i if len(trials) <= 10 else i / n) for i, t in enumerate(trials)}


def _curves_figure(data: dict, trials: list[dict], metric: str, path: Path) -> Path:
    plt = _plt()
    from matplotlib.lines import Line2D

    colours = _curve_colours(data, trials)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    handles, labels = [], []
    for trial in trials:
        epochs, values = zip(*_history(trial, metric))
        label = str(trial.get("variant")) if data.get("kind") == "ablation" else str(trial["trial"])
        line, = ax.plot(epochs, values, color=colours[trial["trial"]], alpha=0.8, linewidth=1.3)
        if trial.get("status") == "stopped":
            ax.plot(epochs[-1], values[-1], marker="x", color="black", markersize=8, linestyle="")
        if label not in labels and len(trials) <= 20:
            handles.append(line)
            labels.append(label)
    if any(t.get("status") == "stopped" for t in trials):
        handles.append(Line2D([], [], marker="x", color="black", linestyle=""))
        labels.append("stopped early (ASHA)")
    max_t = _num(data.get("max_t"))
    if max_t:
        ax.set_xlim(right=max(max_t, ax.get_xlim()[1]))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch, one line per trial")
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="best")
    return _save(fig, path)


def _curves_section(data: dict, fig_dir: Path) -> list[Block]:
    blocks: list[Block] = [("h2", "Learning curves")]
    objectives = _objectives(data)
    metric = objectives[0]["metric"] if objectives else None
    trials = [t for t in _trials(data) if metric and _history(t, metric)]
    if not trials:
        return blocks + [("p", f"No trial reported {metric or 'an objective'} per epoch.")]
    path = _curves_figure(data, trials, metric, fig_dir / "learning_curves.png")
    note = f"{metric} per epoch for {len(trials)} trial(s)"
    note += "; x marks where ASHA stopped a trial." if any(
        t.get("status") == "stopped" for t in trials) else "."
    return blocks + [("figure", path, note)]


# ---------------------------------------------------------------- early-stopping diagnosis


def _rank_figure(d: Any, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ranks = [r for r in d.ranks if r.rho is not None]
    epochs = [r.epoch for r in ranks]
    rhos = [r.rho for r in ranks]
    low = [r.rho - r.ci_low if r.ci_low is not None else 0.0 for r in ranks]
    high = [r.ci_high - r.rho if r.ci_high is not None else 0.0 for r in ranks]
    ax.errorbar(epochs, rhos, yerr=[low, high], marker="o", capsize=4)
    ax.axhline(d.settings["settle_rho"], color=BASELINE_COLOUR, linestyle="--", linewidth=1)
    if d.settle_epoch is not None:
        ax.axvline(d.settle_epoch, color=HIGHLIGHT_COLOUR, linestyle=":", linewidth=1)
    ax.set_ylim(-1.05, 1.05)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"Spearman rho with epoch {d.reference_epoch}")
    ax.set_title("rank correlation with the reference epoch (95% CI)")
    return _save(fig, path)


def _diagnosis_section(data: dict, fig_dir: Path, replay: bool) -> list[Block]:
    """`sweeper diagnose` as a report section: per-epoch rho with its CI, the settle epoch and the
    recommended ASHA settings (replayed through ASHA only with `replay`, which loads Ray)."""
    from sweeper import diagnosis

    blocks: list[Block] = [("h2", "Can early stopping be trusted?")]
    objectives = _objectives(data)
    if not objectives:
        return blocks + [("p", "No objective recorded; nothing to diagnose.")]
    metric, mode = objectives[0]["metric"], objectives[0]["mode"]
    curves = {str(t.get("trial")): diagnosis.curve_from_history((t.get("history") or {}).get(metric) or [])
              for t in _trials(data)}
    try:
        d = diagnosis.diagnose(curves, metric, mode, max_t=_num(data.get("max_t")) and int(data["max_t"]),
                               replay=replay)
    except diagnosis.DiagnosisError as exc:
        return blocks + [("p", f"Not diagnosed: {exc}.")]
    blocks.append(("p", diagnosis.verdict(d)))
    blocks.append(("table", ["epoch", "n", "rho", "95% CI", ""], diagnosis.rank_rows(d)))
    if any(r.rho is not None for r in d.ranks):
        path = _rank_figure(d, fig_dir / "rank_correlation.png")
        blocks.append(("figure", path, f"Spearman rho of {metric} at each epoch with epoch {d.reference_epoch}"))
    if d.candidates:
        blocks.append(("table", ["grace", "factor", "compute", "regret", "regret p90", ""],
                       diagnosis.candidate_rows(d)))
    return blocks + [("list", d.notes)]


# ---------------------------------------------------------------- search


def _search_trials(data: dict) -> list[dict]:
    """Trials with a best objective and a value for every searched key."""
    keys = data.get("searched") or []
    return [t for t in _trials(data) if _num(t.get("best")) is not None
            and all((t.get("params") or {}).get(k) is not None for k in keys)]


def _top_table(data: dict, mode: str) -> list[Block]:
    ranked = _best_first([t for t in _trials(data) if _num(t.get("best")) is not None], mode)
    rows = [[str(t.get("trial")), str(t.get("status")),
             DASH if _epoch(t) is None else str(_epoch(t)), _f4(t.get("best")),
             _fmt_params(t.get("params") or {}, data.get("searched"))] for t in ranked[:TOP_N]]
    title = f"Top {min(TOP_N, len(ranked))} trials by best {_objectives(data)[0]['metric']}"
    return [("h3", title), ("table", ["trial", "status", "epoch", "best", "params"], rows)]


def _axis_positions(values: list) -> tuple[list[float], list[float], list[str]]:
    """Values mapped to [0, 1] plus tick positions and labels for one axis."""
    kind = _param_kind(values)
    if kind == "categorical":
        cats = _categories(values)
        pos = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
        return [pos[v] for v in values], list(pos.values()), [_fmt_value(c) for c in cats]
    log = _is_log(values)
    nums = [math.log10(float(v)) if log else float(v) for v in values]
    lo, hi = min(nums), max(nums)
    scaled = [(v - lo) / (hi - lo) if hi > lo else 0.5 for v in nums]
    ticks = [0.0, 1.0] if hi > lo else [0.5]
    labels = [_fmt_value(min(map(float, values))), _fmt_value(max(map(float, values)))]
    return scaled, ticks, labels[:len(ticks)]


def _parallel_figure(data: dict, trials: list[dict], path: Path) -> Path:
    plt = _plt()
    keys = list(data["searched"])
    metric = _objectives(data)[0]["metric"]
    best = [float(t["best"]) for t in trials]
    columns = [_axis_positions([t["params"][k] for t in trials]) for k in keys]
    columns.append(_axis_positions(best))
    fig, ax = plt.subplots(figsize=(max(5.0, 2.2 * len(columns)), 4.5))
    cmap = plt.get_cmap("viridis")
    lo, hi = min(best), max(best)
    for i, value in enumerate(best):
        colour = cmap((value - lo) / (hi - lo) if hi > lo else 0.5)
        ax.plot(range(len(columns)), [c[0][i] for c in columns], color=colour, alpha=0.8)
    for x, (_, ticks, labels) in enumerate(columns):
        ax.axvline(x, color="black", linewidth=0.8)
        for tick, label in zip(ticks, labels):
            ax.annotate(label, (x, tick), xytext=(4, 0), textcoords="offset points",
                        fontsize=7, va="center")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(keys + [f"best {metric}"], rotation=15)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
    fig.colorbar(sm, ax=ax, label=f"best {metric}")
    ax.set_title("Parallel coordinates (each axis scaled to [0, 1])")
    return _save(fig, path)


def _scatter_figure(trials: list[dict], key: str, metric: str, path: Path) -> Path:
    plt = _plt()
    values = [t["params"][key] for t in trials]
    kind = _param_kind(values)
    if kind == "categorical":
        cats = _categories(values)
        xs = [cats.index(v) for v in values]
    else:
        xs = [float(v) for v in values]
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for stopped, marker, label in ((False, "o", "ran to the end"), (True, "x", "stopped early")):
        pts = [(x, float(t["best"])) for x, t in zip(xs, trials)
               if (t.get("status") == "stopped") == stopped]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, label=label)
    if kind == "categorical":
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels([_fmt_value(c) for c in cats])
    elif _is_log(values):
        ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel(f"best {metric}")
    ax.set_title(f"best {metric} vs {key}")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _distribution(values: list) -> Any:
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)

    kind = _param_kind(values)
    if kind == "int":
        return IntDistribution(min(values), max(values))
    if kind == "float":
        nums = [float(v) for v in values]
        return FloatDistribution(min(nums), max(nums), log=_is_log(nums))
    return CategoricalDistribution(_categories(values))


def _importances(data: dict, trials: list[dict], mode: str) -> dict[str, float]:
    """Optuna fANOVA importances of a study rebuilt from the trials; raises when it cannot."""
    import optuna
    from optuna.distributions import FloatDistribution

    keys = list(data["searched"])
    if all(len(_categories([t["params"][k] for t in trials])) < 2 for k in keys):
        raise ValueError("every searched parameter took a single value")
    dists = {k: _distribution([t["params"][k] for t in trials]) for k in keys}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
            for t in trials:
                params = {k: float(t["params"][k]) if isinstance(dists[k], FloatDistribution)
                          else t["params"][k] for k in keys}
                study.add_trial(optuna.trial.create_trial(
                    params=params, distributions=dists, value=float(t["best"])))
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            found = optuna.importance.get_param_importances(study, evaluator=evaluator)
            return {k: float(v) for k, v in found.items()}
    finally:
        optuna.logging.set_verbosity(verbosity)


def _importance_figure(importances: dict[str, float], path: Path) -> Path:
    plt = _plt()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(5, 0.5 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names], color="#1f77b4")
    ax.set_xlabel("importance (fANOVA, normalised)")
    ax.set_title("Parameter importances")
    return _save(fig, path)


def _importance_section(data: dict, trials: list[dict], mode: str, fig_dir: Path) -> list[Block]:
    blocks: list[Block] = [("h3", "Parameter importances")]
    try:
        importances = _importances(data, trials, mode)
    except Exception as exc:  # noqa: BLE001 - a report must not die on too few trials
        detail = str(exc).splitlines()[0] if str(exc) else ""
        return blocks + [("p", f"Importances unavailable ({type(exc).__name__}: {detail})")]
    rows = [[k, f"{v:.4f}"] for k, v in importances.items()]
    path = _importance_figure(importances, fig_dir / "importances.png")
    note = (f"Optuna fANOVA (seed 0) on {len(trials)} trials' best objective; "
            "importances sum to 1.")
    return blocks + [("table", ["parameter", "importance"], rows), ("p", note),
                     ("figure", path, "Parameter importances")]


def _search_section(data: dict, fig_dir: Path, progress: Callable[[str], None]) -> list[Block]:
    blocks: list[Block] = [("h2", "Search")]
    trials = _search_trials(data)
    if not data.get("searched") or len(trials) < 2:
        return blocks + [("p", "Needs searched parameters and at least 2 trials with a best "
                               "objective; nothing to analyse.")]
    obj = _objectives(data)[0]
    progress("top trials")
    blocks += _top_table(data, obj["mode"])
    progress("parallel coordinates")
    path = _parallel_figure(data, trials, fig_dir / "parallel_coordinates.png")
    blocks += [("h3", "Parallel coordinates"),
               ("figure", path, "searched values and best objective")]
    progress("parameter scatter")
    blocks.append(("h3", "Objective vs parameter"))
    for key in data["searched"]:
        path = _scatter_figure(trials, key, obj["metric"], fig_dir / f"scatter_{_slug(key)}.png")
        blocks.append(("figure", path, f"best {obj['metric']} vs {key}"))
    progress("parameter importances")
    return blocks + _importance_section(data, trials, obj["mode"], fig_dir)


# ---------------------------------------------------------------- pareto


def _trial_label(trial: dict) -> str:
    if trial.get("variant") is not None:
        seed = trial.get("seed")
        return str(trial["variant"]) + ("" if seed is None else f" (seed {seed})")
    return _fmt_params(trial.get("params") or {}) or DASH


def _pareto_figure(points: list[list[float]], front: list[int], names: Sequence[str],
                   modes: Sequence[str], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(*zip(*points), color="#9e9e9e", label="trials")
    line = sorted(points[i] for i in front)
    ax.plot(*zip(*line), color=HIGHLIGHT_COLOUR, marker="o", label="Pareto front")
    ax.set_xlabel(f"{names[0]} ({modes[0]})")
    ax.set_ylabel(f"{names[1]} ({modes[1]})")
    ax.set_title(f"Pareto front: {names[0]} vs {names[1]}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _pareto_section(data: dict, fig_dir: Path) -> list[Block]:
    (m1, mode1), (m2, mode2) = [(o["metric"], o["mode"]) for o in _objectives(data)[:2]]
    blocks: list[Block] = [("h2", f"Pareto front: {m1} ({mode1}) vs {m2} ({mode2})")]
    trials = [t for t in _trials(data) if t.get("status") in ("finished", "stopped")
              and _final(t, m1) is not None and _final(t, m2) is not None]
    if not trials:
        return blocks + [("p", f"No finished or stopped trial reports both {m1} and {m2}.")]
    points = [[_final(t, m1), _final(t, m2)] for t in trials]
    front = stats.pareto_front(points, [mode1, mode2])
    sign = -1.0 if mode1 == "max" else 1.0
    front = sorted(front, key=lambda i: (sign * points[i][0], str(trials[i].get("trial"))))
    rows = [[str(trials[i].get("trial")), _trial_label(trials[i]), _f4(points[i][0]),
             _f4(points[i][1])] for i in front]
    path = _pareto_figure(points, front, (m1, m2), (mode1, mode2), fig_dir / "pareto.png")
    note = (f"{len(front)} of {len(trials)} finished/stopped trials are non-dominated "
            "(values at each trial's last epoch).")
    return blocks + [("table", ["trial", "variant / params", m1, m2], rows), ("p", note),
                     ("figure", path, f"{m1} vs {m2}; front highlighted")]


# ---------------------------------------------------------------- failed trials


def _failed_section(data: dict) -> list[Block]:
    failed = [t for t in _trials(data) if t.get("status") in ("failed", "diverged")]
    if not failed:
        return []
    rows = [[str(t.get("trial")), " ".join(str(t.get("error") or DASH).split())[:ERROR_CHARS]]
            for t in failed]
    return [("h2", f"Failed trials ({len(failed)})"), ("table", ["trial", "error"], rows)]


# ---------------------------------------------------------------- rendering


def _md_cell(cell: str) -> str:
    text = " ".join(str(cell).split()).replace("|", "\\|")
    return f"**{text}**" if isinstance(cell, _Bold) else text


def _render_markdown(blocks: list[Block], out_dir: Path) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + block[1])
        elif kind == "p":
            out.append(block[1])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "table":
            headers, rows = block[1], block[2]
            lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
                     "|" + "|".join(" --- " for _ in headers) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "figure":
            out.append(f"![{block[2]}]({block[1].relative_to(out_dir).as_posix()})")
    return "\n\n".join(out) + "\n"


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #eee; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #666; font-size: 13px; }
"""


def _html_cell(cell: str, tag: str) -> str:
    text = html.escape(str(cell))
    inner = f"<strong>{text}</strong>" if isinstance(cell, _Bold) else text
    return f"<{tag}>{inner}</{tag}>"


def _html_figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = html.escape(caption)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{cap}">'
            f"<figcaption>{cap}</figcaption></figure>")


def _render_html(title: str, blocks: list[Block]) -> str:
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3", "p"):
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(_html_cell(h, "th") for h in block[1])
            rows = "".join("<tr>" + "".join(_html_cell(c, "td") for c in row) + "</tr>\n"
                           for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>\n{rows}</tbody></table>")
        elif kind == "figure":
            body.append(_html_figure(block[1], block[2]))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


# ---------------------------------------------------------------- entry point


def write_report(
    data: dict, out_dir: Path, progress: Callable[[str], None] = lambda msg: None, *, replay: bool = False
) -> dict[str, Path | list[Path]]:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` under `out_dir`.

    Returns ``{"markdown": Path, "html": Path, "figures": [Path, ...]}``. `progress` gets a
    short message before each long step (tables, figures, importances). `replay`: the
    early-stopping section also replays the curves through ASHA (`sweeper.replay`, Ray).
    """
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    progress("header")
    blocks = _header(data)
    if data.get("kind") == "ablation" and _objectives(data):
        progress("ablation table")
        blocks += _ablation_section(data, fig_dir)
    progress("learning curves")
    blocks += _curves_section(data, fig_dir)
    if data.get("kind") == "search" and _objectives(data):
        blocks += _search_section(data, fig_dir, progress)
    if data.get("kind") == "search" and _objectives(data):
        progress("early-stopping diagnosis")
        blocks += _diagnosis_section(data, fig_dir, replay)
    if len(_objectives(data)) >= 2:
        progress("pareto front")
        blocks += _pareto_section(data, fig_dir)
    blocks += _failed_section(data)
    progress("writing report")
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    md_path.write_text(_render_markdown(blocks, out_dir), encoding="utf-8")
    html_path.write_text(_render_html(f"Sweep report: {data.get('name', 'sweep')}", blocks),
                         encoding="utf-8")
    figures = [block[1] for block in blocks if block[0] == "figure"]
    return {"markdown": md_path, "html": html_path, "figures": figures}


def group_rows(board: dict[str, Any], key: str) -> tuple[list[dict[str, Any]], list[str], str]:
    """Leaderboard rows grouped by `key` (`variant`, a searched key, or any `data.*` key): mean ± 95%
    CI of the objective at each trial's last epoch over finished trials; for an ablation's variants
    also the difference to the baseline, its p (paired t by seed, else Welch; Holm-corrected).

    When the held-out fold (`data.fold`) is an ablation factor, folds are where a recipe is
    measured, not recipes: `--group variant` pools each variant over its folds (its name without
    the `data.fold=N` part; n = folds x seeds) and pairs results by (seed, fold), and `--group KEY`
    for a factor KEY (`data.fold`) gives one row per variant and value: per fold, per recipe."""
    objective, mode = board["objective"], board["mode"]
    done = [r for r in board["rows"] if r["status"] == "finished" and r.get("final") is not None]
    ablation = board.get("ablation") or {}
    factors = ablation.get("factors") or {}
    if key == "variant" and board.get("ablation"):
        groups: dict[str, dict[Any, float]] = {}
        for r in done:
            name, fold = without_factor(r["variant"], FOLD_KEY, factors.get(FOLD_KEY, []))
            unit = int(r["seed"]) if FOLD_KEY not in factors else f"seed {r['seed']}, fold {_fold_of(r, fold)}"
            groups.setdefault(name, {})[unit] = r["final"]
        if "baseline" not in groups:
            raise LookupError("no finished baseline trial yet: nothing to compare the variants with")
        out = []
        for row in stats.ablation_table(groups, "baseline", mode):
            half = (row["ci_high"] - row["ci_low"]) / 2 if row["n"] > 1 else float("nan")
            out.append({"variant": row["variant"], "n": row["n"], f"{objective} mean": row["mean"],
                        "± 95% CI": half, "Δ vs baseline": row["diff"] if row["variant"] != "baseline" else None,
                        "p (Holm)": row["p_holm"], "test": row["test"],
                        "significant": ("yes" if row["significant"] else "no") if row["variant"] != "baseline" else ""})
        pooled = ", pooled over folds (paired by seed and fold)" if FOLD_KEY in factors else ""
        return out, list(out[0]), f"{board['name']}: {objective} at the last epoch, per variant{pooled}"
    if not any(key in r for r in board["rows"]):
        raise LookupError(f"--group {key}: trials have no {key!r}; group by variant (ablations) or one of "
                          f"{', '.join(board['searched']) or 'the searched keys'}")
    if board.get("ablation") and key in factors:  # per variant and value: e.g. each recipe on each fold
        cells: dict[tuple[str, str], list[float]] = {}
        for r in done:
            name, value = without_factor(r["variant"], key, factors[key])
            cells.setdefault((name, _text(r.get(key) if value is None else value)), []).append(r["final"])
        order = {name: i for i, name in enumerate(dict.fromkeys(
            without_factor(v, key, factors[key])[0] for v in ablation.get("variants", [])))}
        out = []
        for (name, value), finals in sorted(cells.items(), key=lambda c: (order.get(c[0][0], len(order)),
                                                                          _sortable(c[0][1]))):
            s = stats.summarize(finals)
            out.append({"variant": name, key: value, "n": s.n, f"{objective} mean": s.mean,
                        "± 95% CI": (s.ci_high - s.ci_low) / 2})
        return (out, ["variant", key, "n", f"{objective} mean", "± 95% CI"],
                f"{board['name']}: {objective} at the last epoch, per variant and {key}")
    values: dict[Any, list[float]] = {}
    for r in done:
        values.setdefault(r.get(key), []).append(r["final"])
    out = []
    for value, finals in values.items():
        s = stats.summarize(finals)
        out.append({key: value, "n": s.n, f"{objective} mean": s.mean, "± 95% CI": (s.ci_high - s.ci_low) / 2})
    out.sort(key=lambda r: r[f"{objective} mean"], reverse=mode == "max")
    return out, [key, "n", f"{objective} mean", "± 95% CI"], f"{board['name']}: {objective} at the last epoch, per {key}"


def _fold_of(row: dict[str, Any], from_name: Any) -> str:
    """A trial's held-out fold: the one its variant's name says, else its logged `data.fold` (the baseline's)."""
    return _text(row.get(FOLD_KEY) if from_name is None else from_name)


def _text(value: Any) -> str:
    """A grouped value as MLflow holds params: text (`0`, not `0` and `'0'` apart)."""
    return "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _sortable(value: str) -> tuple[int, float, str]:
    """Numbers in numeric order, before any text."""
    try:
        return 0, float(value), value
    except ValueError:
        return 1, 0.0, value
