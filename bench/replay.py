"""The replay benchmark: every scheduler on the recorded learning curves of bench/curves/.

Each curve set (`bench/curves/*.json`: every configuration trained to the end, FIFO; see README
"Performance" for how each was made) is replayed through `sweeper.replay` (the real Ray Tune
scheduler objects the sweeps use, driven by the recorded results) for every scheduler of
`sweeper.replay.SCHEDULERS`, over `--orders` seeded random arrival orders with 2, 4 and 8
workers. Reported per set and scheduler: the median compute used as a fraction of exhaustive
training (trial-epochs; `cost_fraction` weights each epoch by its recorded seconds, which differ
between configurations), and the median and 90th-percentile regret of the configuration the
scheduler would return (relative gap of its final objective to the exhaustive best).

A set recorded with several seeds per configuration is replayed one seed at a time: arrival order
i uses seed `i % seeds` for every configuration (regret against that seed's exhaustive best), so
the orders cover both the arrival order and the training noise.

Our default's target (issue 15): on every set, median regret <= 1% at <= 33% compute, and less
regret than Ray's default ASHA at about the same compute.

    python bench/replay.py --out bench/results/replay.json    # all sets, 50 orders: ~2-3 min on 2 cores
    python bench/replay.py --quick --out /tmp/replay.json     # 5 orders, 2 workers: a smoke run
    python bench/replay.py --explore                          # also candidate default settings
    python bench/replay.py --sets dbnet --merge               # replay one new set, keep the others in --out
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from results_io import RESULTS, ROOT, environment, write_result

CURVES = ROOT / "bench" / "curves"
WORKERS = (2, 4, 8)
TARGET_REGRET, TARGET_COMPUTE = 0.01, 0.33


def load_set(path: Path) -> dict[str, Any]:
    """A curve set file: name, objective, mode, epochs, warmup and, per seed, one curve per
    configuration (configurations in file order; a configuration missing a seed is left out)."""
    doc = json.loads(path.read_text())
    by_config: dict[str, dict[int, dict[str, Any]]] = {}
    for entry in doc["curves"]:
        key = json.dumps(entry.get("config", {}), sort_keys=True)
        by_config.setdefault(key, {})[int(entry.get("seed", 0))] = entry
    seeds = sorted({s for runs in by_config.values() for s in runs})
    settings = doc.get("settings") or {}
    train = settings.get("train") if isinstance(settings.get("train"), dict) else {}
    warmup = settings.get("train.warmup_epochs", settings.get("warmup_epochs", train.get("warmup_epochs")))
    if warmup is None:  # bench/record_curves.py writes the overrides into its `sweep` line
        found = re.search(r"train\.warmup_epochs ([0-9.]+)", str(settings.get("sweep", "")))
        warmup = float(found.group(1)) if found else 0.0
    per_seed = {s: [(k, runs[s]) for k, runs in by_config.items() if s in runs] for s in seeds}
    return {"name": doc.get("name", path.stem), "objective": doc.get("objective"), "mode": doc.get("mode", "max"),
            "epochs": int(doc["epochs"]), "warmup_epochs": float(warmup or 0), "seeds": seeds,
            "per_seed": per_seed, "configs": len(by_config), "curves": len(doc["curves"]),
            "made_by": doc.get("made_by")}


def _curves(cs: dict[str, Any], seed: int) -> list[Any]:
    from sweeper.replay import Curve

    return [Curve(values=tuple(float(v) for v in e["values"]),
                  epoch_s=tuple(float(s) for s in e["epoch_s"]) if e.get("epoch_s") else None, key=k)
            for k, e in cs["per_seed"][seed]]


def _job(args: tuple[Path, str, int, int, dict[str, Any] | None]) -> tuple[str, str, int, list[dict[str, float]]]:
    """All arrival orders of one (set, scheduler, workers): run in a pool process."""
    path, name, workers, orders, candidate = args
    from sweeper import replay

    cs = load_set(path)
    curves = {s: _curves(cs, s) for s in cs["seeds"]}
    out = []
    for order in range(orders):
        seed = cs["seeds"][order % len(cs["seeds"])]
        kw = dict(mode=cs["mode"], max_t=cs["epochs"], workers=workers, seed=order)
        if candidate is None:
            r = replay.replay_named(name, curves[seed], warmup_epochs=cs["warmup_epochs"], **kw)
        else:
            r = replay.replay(curves[seed], lambda: _candidate(candidate, cs, len(curves[seed])), **kw)
        out.append({"compute_fraction": r.compute_fraction, "cost_fraction": r.cost_fraction,
                    "regret": r.regret, "wall_s": r.wall_s})
    return cs["name"], name, workers, out


def _candidate(c: dict[str, Any], cs: dict[str, Any], n: int) -> Any:
    """A candidate default: grace (an int, or `auto`), reduction factor, brackets, promote."""
    from sweeper.replay import _promotion_class
    from sweeper.rungs import auto_grace_period
    from sweeper.scheduler import PersistentASHA

    max_t = cs["epochs"]
    grace = auto_grace_period(max_t, cs["warmup_epochs"]) if c["grace"] == "auto" else min(int(c["grace"]), max_t)
    if c.get("promote"):
        return _promotion_class()(time_attr="epoch", max_t=max_t, grace_period=grace,
                                  reduction_factor=c["rf"], num_samples=n, state_path=None)
    return PersistentASHA(time_attr="epoch", max_t=max_t, grace_period=grace, reduction_factor=c["rf"],
                          brackets=c.get("brackets", 1), state_path=None)


def _summary(rows: list[dict[str, float]]) -> dict[str, float]:
    regrets = sorted(r["regret"] for r in rows)
    p90 = regrets[min(len(regrets) - 1, math.ceil(0.9 * len(regrets)) - 1)]
    return {"compute_fraction": round(statistics.median(r["compute_fraction"] for r in rows), 4),
            "cost_fraction": round(statistics.median(r["cost_fraction"] for r in rows), 4),
            "regret": round(statistics.median(regrets), 4), "regret_p90": round(p90, 4),
            "wall_s": round(statistics.median(r["wall_s"] for r in rows), 2)}


def targets(scheds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Issue 15's target for our default on one set: median regret <= 1% at <= 33% compute
    (trial-epochs; cost-weighted reported beside it), and its regret against Ray's default ASHA
    (better / equal / worse, with both computes: the two seldom spend the same)."""
    d, ray = scheds.get("default"), scheds.get("ray-asha")
    if d is None:
        return {}
    out: dict[str, Any] = {"regret_le_1pct": d["regret"] <= TARGET_REGRET,
                           "compute_le_33pct": d["compute_fraction"] <= TARGET_COMPUTE,
                           "cost_le_33pct": d["cost_fraction"] <= TARGET_COMPUTE}
    if ray is not None:
        out["regret_vs_ray_asha"] = ("better" if d["regret"] < ray["regret"] else
                                     "equal" if d["regret"] == ray["regret"] else "worse")
        out["compute_default_vs_ray_asha"] = [d["compute_fraction"], ray["compute_fraction"]]
    return out


CANDIDATES = [{"grace": g, "rf": rf, "brackets": b, "promote": p}
              for g in (1, 2, 3, "auto") for rf in (2, 3, 4) for b in (1,) for p in (False, True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "replay.json")
    ap.add_argument("--curves", type=Path, default=CURVES, help="folder of curve-set JSON files")
    ap.add_argument("--orders", type=int, default=50, help="random arrival orders per (set, scheduler, workers)")
    ap.add_argument("--quick", action="store_true", help="5 orders, 2 workers: a smoke run")
    ap.add_argument("--explore", action="store_true", help="also replay candidate default settings (CANDIDATES)")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--sets", default=None, help="only these curve sets (comma-separated file stems)")
    ap.add_argument("--merge", action="store_true", help="keep the other sets already in --out")
    args = ap.parse_args()
    from sweeper.replay import available
    from sweeper.schema import Scheduler

    t0 = time.perf_counter()
    orders, workers = (5, (2,)) if args.quick else (args.orders, WORKERS)
    paths = sorted(p for p in args.curves.glob("*.json") if args.sets is None or p.stem in args.sets.split(","))
    if not paths:
        raise SystemExit(f"no curve sets in {args.curves} (bench/curves/*.json)")
    sets = {p: load_set(p) for p in paths}
    names = available()
    jobs = [(p, n, w, orders, None) for p in paths for n in names for w in workers]
    if args.explore:
        jobs += [(p, json.dumps(c), w, orders, c) for p in paths for c in CANDIDATES for w in workers
                 if not c["promote"] or "asha-promote" in names]
    # the slowest first (the median rule is quadratic in trials), so the pool ends together
    jobs.sort(key=lambda j: -sets[j[0]]["configs"] * (50 if j[1] == "median-stopping" else 1) * j[2] ** 0)
    results: dict[str, dict[str, dict[int, list[dict[str, float]]]]] = {}
    with ProcessPoolExecutor(args.processes) as pool:
        for set_name, name, w, rows in pool.map(_job, jobs):
            results.setdefault(set_name, {}).setdefault(name, {})[w] = rows
    out: dict[str, Any] = {}
    for p, cs in sets.items():
        scheds = {}
        for name, per_w in results[cs["name"]].items():
            everything = [r for rows in per_w.values() for r in rows]
            scheds[name] = {**_summary(everything), "workers": {str(w): _summary(rows) for w, rows in sorted(per_w.items())}}
        out[cs["name"]] = {
            "file": str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p), "objective": cs["objective"],
            "mode": cs["mode"], "epochs": cs["epochs"], "warmup_epochs": cs["warmup_epochs"],
            "configs": cs["configs"], "seeds": len(cs["seeds"]), "made_by": cs["made_by"],
            "orders": orders, "workers": list(workers),
            "target": targets(scheds),
            "schedulers": {n: scheds[n] for n in sorted(scheds, key=lambda n: (names.index(n) if n in names else
                                                                               len(names), n))},
        }
    if args.merge and args.out.is_file():  # sets replayed earlier (same orders and workers) stay
        earlier = json.loads(args.out.read_text())
        out = {**{k: v for k, v in earlier.get("curve_sets", {}).items() if k not in out}, **out}
    default = Scheduler()
    write_result({"benchmark": "replay", "default": "default",
                  "default_settings": {"name": default.name, "grace_period": default.grace_period,
                                       "reduction_factor": default.reduction_factor, "brackets": default.brackets,
                                       "promote": getattr(default, "promote", False)},
                  "orders": orders, "workers": list(workers), "elapsed_s": round(time.perf_counter() - t0, 1),
                  "environment": environment(), "curve_sets": out}, args.out)
    for set_name, cs in out.items():
        print(f"\n{set_name} ({cs['configs']} configs x {cs['seeds']} seeds, {cs['epochs']} epochs)")
        print(f"{'scheduler':40s} {'compute':>8s} {'cost':>8s} {'regret':>8s} {'p90':>8s}")
        for n, s in cs["schedulers"].items():
            print(f"{n:40s} {s['compute_fraction']:8.3f} {s['cost_fraction']:8.3f} {s['regret']:8.4f} {s['regret_p90']:8.4f}")
    print(f"\n{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
