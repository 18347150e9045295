"""ASHA against training every configuration to the end: what early stopping saves, and what it costs.

The same fixed configurations of the detection demo task (`sweeps/demo.yaml`: Faster R-CNN on a
timm `mobilenetv3_small_100`, from scratch, synthetic shapes; AdamW, `--configs` learning rates
log-spaced over [1e-4, 1e-2], `train.seed` 0 for all) run twice through `sweeper launch`, as a
`grid` search so both runs train exactly the same points:

1. FIFO: every configuration to `--epochs`;
2. ASHA: grace period 1 epoch, reduction factor 3 (`max_t` = `--epochs`).

Reported (from the MLflow store both launches write): trial-epochs trained, wall time, the best
final objective (`map50` at the last epoch, over the trials that reached it) of each, the best
value any trial reached, the Spearman rank correlation between the epoch-1 and final objectives
over the FIFO trials (how far early stopping can be trusted on this task) and of every epoch's,
and, as a reference, synchronous successive halving replayed on the FIFO curves for each grace
period (its trial-epochs and the best it keeps: which grace period this task needs). Targets:
ASHA <= 40% of FIFO's trial-epochs, its best final objective within 2% (relative) of FIFO's.

Writes `bench/results/asha.json`.

    python bench/asha.py                  # about 15 minutes on 2 cores (9 configs x 6 epochs, 2 at a time)
    python bench/asha.py --quick          # a smoke run (tiny data, 3 configs x 2 epochs; figures not meaningful)
    python bench/asha.py --reanalyze bench/results/asha.json   # recompute the figures from saved curves
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from common import demo_sweep, launch_sweep
from results_io import RESULTS, bench_env, environment, remove_work, write_result

from sweeper.rungs import asha_rungs

OBJECTIVE = "map50"


def learning_rates(n: int, low: float = 1e-4, high: float = 1e-2) -> list[float]:
    """`n` learning rates log-spaced over [low, high] (3 significant digits): the fixed configs."""
    if n == 1:
        return [float(f"{math.sqrt(low * high):.3g}")]
    return [float(f"{low * (high / low) ** (i / (n - 1)):.3g}") for i in range(n)]


def sha_replay(curves: list[dict[int, float]], max_t: int, grace: int, rf: int) -> dict[str, Any]:
    """Synchronous successive halving replayed on known curves: every trial trains to the first
    rung, the best 1/rf (at least one) go on to the next, ... the last ones to max_t. Returns
    its trial-epochs and the best final objective it would have kept."""
    alive = list(range(len(curves)))
    trained, reached = 0, 0
    for milestone in [*asha_rungs(grace, rf, max_t), max_t]:
        trained += len(alive) * (milestone - reached)
        reached = milestone
        if milestone < max_t:
            alive.sort(key=lambda i: curves[i].get(milestone, float("-inf")), reverse=True)
            alive = alive[:max(1, len(alive) // rf)]
    best = max(curves[i].get(max_t, float("-inf")) for i in alive)
    return {"rungs": asha_rungs(grace, rf, max_t), "trial_epochs": trained,
            "fraction_of_fifo": round(trained / (len(curves) * max_t), 3), "best_final": best}


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rho (scipy); None when either side is constant (rho undefined)."""
    from scipy.stats import spearmanr

    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return round(float(spearmanr(xs, ys).statistic), 3)


def read_trials(uri: str, name: str) -> list[dict[str, Any]]:
    """Per trial of the sweep's launch: lr, status and the objective per epoch (from MLflow)."""
    from sweeper.store import report_data

    out = []
    for t in report_data(uri, name)["trials"]:
        curve = {int(e): float(v) for e, v in t["history"].get(OBJECTIVE, [])}
        out.append({"lr": float(t["params"]["train.lr"]), "status": t["status"], "curve": curve,
                    "epochs": max(curve, default=0), "error": t.get("error")})
    return sorted(out, key=lambda t: t["lr"])


def summarize(trials: list[dict[str, Any]], epochs: int, wall_s: float) -> dict[str, Any]:
    finals = [t["curve"][epochs] for t in trials if epochs in t["curve"]]
    best_final = max(finals, default=None)
    winner = next((t["lr"] for t in trials if finals and t["curve"].get(epochs) == best_final), None)
    return {
        "trials": len(trials), "trial_epochs": sum(t["epochs"] for t in trials), "wall_s": round(wall_s, 1),
        "reached_last_epoch": len(finals), "best_final": best_final, "best_final_lr": winner,
        "best_any_epoch": max((v for t in trials for v in t["curve"].values()), default=None),
        "statuses": {s: sum(t["status"] == s for t in trials) for s in sorted({t["status"] for t in trials})},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", type=int, default=9, help="configurations (learning rates)")
    ap.add_argument("--epochs", type=int, default=6, help="full budget per trial (ASHA's max_t)")
    ap.add_argument("--resolution", type=int, default=128, help="train.resolution, px")
    ap.add_argument("--images", type=int, default=128, help="synthetic images (3/4 train, 1/4 val), as the demo")
    ap.add_argument("--size", type=int, default=128, help="px of the synthetic images")
    ap.add_argument("--concurrent", type=int, default=2, help="trials at once (1 CPU, 1 torch thread each)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 configs x 2 epochs on 24 images at 64 px")
    ap.add_argument("--out", type=Path, default=RESULTS / "asha.json")
    ap.add_argument("--reanalyze", type=Path, default=None,
                    help="recompute the derived figures from a result JSON's curves (no training)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work directory (data, runs, MLflow store)")
    args = ap.parse_args()
    if args.quick:
        args.configs, args.epochs, args.images, args.size, args.resolution = 3, 2, 24, 64, 64
    grace, rf = 1, 3
    if args.reanalyze:
        old = json.loads(args.reanalyze.read_text())
        for key in ("configs", "epochs", "resolution", "images", "concurrent", "quick"):
            setattr(args, key, old[key])
        args.size = old["image_size"]
        runs = {kind: old[kind] for kind in ("fifo", "asha")}
        for run in runs.values():
            for t in run["per_trial"]:
                t["curve"] = {int(e): v for e, v in t["curve"].items()}
        result = analyze(runs, args, grace, rf, old["learning_rates"])
        # the figures were measured then, not now
        result.update(load_avg_1m=old["load_avg_1m"], measured={k: old.get(k) for k in ("git", "commit", "when")})
        write_result(result, args.out)
        return

    from sweeper.tasks import synthesize

    work = Path(tempfile.mkdtemp(prefix="sweeper-bench-asha-"))
    synthesize("detection", work / "data", images=args.images, size=args.size, seed=0)
    lrs = learning_rates(args.configs)
    env = bench_env()
    runs = {}
    for kind, scheduler in (("fifo", {"name": "fifo"}),
                            ("asha", {"name": "asha", "grace_period": grace, "reduction_factor": rf})):
        name = f"bench-asha-{kind}"
        doc = demo_sweep(name, work / "data", lrs=lrs, scheduler=scheduler, epochs=args.epochs,
                         resolution=args.resolution, concurrent=args.concurrent, objective=OBJECTIVE)
        child = launch_sweep(doc, work, file_name=f"{name}.yaml", env=env)
        trials = read_trials(f"sqlite:///{work / 'mlruns.db'}", name)
        crashed = [t for t in trials if t["status"] == "failed"]  # "diverged" (NaN loss) is a result
        if crashed:
            raise SystemExit(f"{name}: {len(crashed)} of {len(trials)} trials crashed, first error: "
                             f"{crashed[0]['error']} (sweep and MLflow store in {work})")
        runs[kind] = {**summarize(trials, args.epochs, child["wall_s"]), "per_trial": trials}
        print(f"{kind}: {runs[kind]['trial_epochs']} trial-epochs in {child['wall_s']:.0f} s, "
              f"best final {OBJECTIVE} {runs[kind]['best_final']}", flush=True)
    write_result(analyze(runs, args, grace, rf, lrs), args.out)
    remove_work(work, args.keep)


def analyze(runs: dict[str, Any], args: argparse.Namespace, grace: int, rf: int, lrs: list[float]) -> dict[str, Any]:
    """The comparison, from both runs' per-trial curves."""
    fifo, asha = runs["fifo"], runs["asha"]
    if sorted(t["lr"] for t in fifo["per_trial"]) != sorted(t["lr"] for t in asha["per_trial"]) or \
            len(fifo["per_trial"]) != len(lrs):
        raise SystemExit(f"the two runs did not train the same {len(lrs)} configurations: "
                         f"fifo {[t['lr'] for t in fifo['per_trial']]}, asha {[t['lr'] for t in asha['per_trial']]}")
    # same config, same seed, one thread: the curves should agree where both trained
    same = [(f["curve"][e], a["curve"][e]) for f, a in zip(fifo["per_trial"], asha["per_trial"])
            for e in a["curve"] if e in f["curve"]]
    curves = [t["curve"] for t in fifo["per_trial"]]
    final = [c.get(args.epochs, 0.0) for c in curves]
    epoch_ratio = asha["trial_epochs"] / fifo["trial_epochs"]
    best_gap = (None if not fifo["best_final"] or asha["best_final"] is None
                else round((fifo["best_final"] - asha["best_final"]) / fifo["best_final"], 4))
    result = {
        "benchmark": "asha", "objective": OBJECTIVE,
        "configs": args.configs, "learning_rates": lrs, "epochs": args.epochs, "resolution": args.resolution,
        "images": args.images, "image_size": args.size, "concurrent": args.concurrent, "threads_per_trial": 1,
        "grace_period": grace, "reduction_factor": rf, "rungs": asha_rungs(grace, rf, args.epochs),
        "quick": args.quick,
        "fifo": fifo, "asha": asha,
        "asha_over_fifo_trial_epochs": round(epoch_ratio, 3),
        "asha_over_fifo_wall": round(asha["wall_s"] / fifo["wall_s"], 3),
        "best_final_relative_gap": best_gap,
        "targets_met": {"trial_epochs_le_40pct": epoch_ratio <= 0.40,
                        "best_within_2pct": best_gap is not None and best_gap <= 0.02},
        "spearman_epoch1_vs_final": spearman([c.get(1, 0.0) for c in curves], final),
        # how early the ranking settles: rank correlation of epoch e with the final epoch
        "spearman_by_epoch_vs_final": {e: spearman([c.get(e, 0.0) for c in curves], final)
                                       for e in range(1, args.epochs)},
        # the same trials under synchronous successive halving, per grace period (reference)
        "sync_sha_replay_by_grace": {g: sha_replay(curves, args.epochs, g, rf) for g in range(1, args.epochs)},
        "curves_max_abs_diff": round(max((abs(a - b) for a, b in same), default=0.0), 6),
        **environment(),
    }
    return result


if __name__ == "__main__":
    main()
