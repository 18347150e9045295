"""Record full learning curves (every configuration trained to its last epoch, FIFO, no early
stopping) for the replay benchmark (`bench/replay.py`) and `sweeper diagnose`: a tabular HPO
benchmark's data, recorded once and committed under `bench/curves/`.

Curve sets:

* `digits`: a small CNN (plain torch, defined here) on scikit-learn's bundled `load_digits()`
  (8x8 images), a fixed train/val split, SGD + cosine; objective val accuracy (max); a grid of
  216 configurations (learning rate x width x batch size x dropout x weight decay), 25 epochs.
* `dbnet`: the repo's DBNet task as `sweeps/dbnet-demo.yaml` sets it up (synthetic receipts, the
  demo's eval grid), objective `hmean` (max); learning rate x resolution.
* `detection`: the repo's detection task as `sweeps/demo.yaml` sets it up (Faster R-CNN, timm
  `mobilenetv3_small_100` + FPN from scratch, synthetic shapes), objective `map50` (max);
  learning rate x resolution (so epochs differ in cost), two seeds each.

DBNet and detection run the code a trial runs: the demo sweep file (data paths pointed at the
synthesized data, the knobs as a `grid` search) is loaded with `sweeper.config.load_sweep`, each
point finished by `build_trial` and trained by the registered task's `train_one_epoch` /
`evaluate`, without Ray or MLflow, in a pool of `--processes` worker processes with one torch
thread each (as 1-CPU trials); a worker trains one curve after another (each from a fresh task
built from its config and seed): importing torch and timm per curve cost about a minute on the
shared cores. `epoch_s[i]` is the wall time of epoch i+1's training plus
its evaluation (what one trial-epoch costs). A configuration whose loss turns non-finite keeps
the objective's worst value (0.0) from that epoch on (`settings.diverged` lists them).

Finished curves are kept in `--cache` (JSON lines) as they finish, so a run that was stopped
continues where it was (cache: `$TMPDIR/sweeper-curves-cache.jsonl`); the set's JSON is written when
its curves are done, or when `--stop-after` ends the run (then `settings.partial` says how many).

    python bench/record_curves.py digits        # 216 curves: ~5 min on 2 quiet cores (24 min shared with other jobs)
    python bench/record_curves.py dbnet         # 18 curves: ~6 min quiet (33 min shared)
    python bench/record_curves.py detection     # 54 curves: ~20-40 min quiet (8 curves took 31 min shared)
    python bench/record_curves.py detection --stop-after 30   # start no curve after 30 min (marked partial)
    python bench/record_curves.py detection --from-cache      # write the JSON from the cached curves only
    python bench/record_curves.py digits --quick --out /tmp/curves   # seconds; not meaningful
"""
from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import multiprocessing as mp
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CURVES = ROOT / "bench" / "curves"
SETS = ("digits", "dbnet", "detection")


def sig(x: float, digits: int = 5) -> float:
    """`x` rounded to `digits` significant digits (compact JSON that still ranks curves exactly)."""
    return 0.0 if x == 0 else float(f"{x:.{digits}g}")


def log_grid(low: float, high: float, n: int) -> list[float]:
    """`n` values log-spaced over [low, high], 3 significant digits."""
    return [float(f"{low * (high / low) ** (i / (n - 1)):.3g}") for i in range(n)]


def spread(n: int) -> list[int]:
    """0..n-1 ordered so that every prefix spreads over the range (ends, middle, quarters, ...): a
    recording stopped early then still covers each knob's range."""
    out: list[int] = []
    step = max(1, n - 1)
    while len(out) < n:
        out += [i for i in range(0, n, step) if i not in out]
        step = max(1, step // 2)
    return out


def grid(space: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of `space`'s values, as {dotted key: value}, in a fixed order."""
    keys = list(space)
    return [dict(zip(keys, values)) for values in itertools.product(*space.values())]


# ------------------------------------------------------------------------------------- digits
def digits_plan(quick: bool) -> dict[str, Any]:
    """The digits set: data split, model family, the grid and its epochs."""
    space = {"train.lr": log_grid(0.003, 0.5, 9), "model.width": [4, 8, 16], "train.batch_size": [16, 64],
             "model.dropout": [0.0, 0.3], "train.weight_decay": [0.0, 0.001]}
    epochs, train_images = 25, 600
    if quick:
        space = {"train.lr": [0.01, 0.1], "model.width": [4], "train.batch_size": [64], "model.dropout": [0.0],
                 "train.weight_decay": [0.0]}
        epochs = 3
    settings = {
        "data": f"sklearn load_digits() (1797 8x8 images, 10 classes), a fixed split (permutation seed 0): "
                f"{train_images} train / {1797 - train_images} val; pixels / 16",
        "model": "conv3x3(1->w)-ReLU-conv3x3(w->2w)-ReLU-maxpool2-dropout-linear(2w*16->10); w = model.width",
        "optimizer": "SGD momentum 0.9 (nesterov), cosine LR to 0 over the epochs, no warmup",
        "train_images": train_images, "epochs": epochs, "threads": 1, "seed": 0,
        "objective": "accuracy on the val split after each epoch",
        "epoch_s": "wall s of one epoch's training plus its evaluation, 1 torch thread",
    }
    return {"objective": "accuracy", "epochs": epochs, "settings": settings,
            "jobs": [{"config": c, "seed": 0, "epochs": epochs, "train_images": train_images} for c in grid(space)]}


def digits_curve(job: dict[str, Any]) -> dict[str, Any]:
    """Train one digits configuration to the end; values = val accuracy per epoch."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    torch.set_num_threads(1)
    c, epochs = job["config"], job["epochs"]
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))  # the split is the same for every curve
    x = torch.tensor(x[order] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y[order], dtype=torch.long)
    n = job["train_images"]
    xt, yt, xv, yv = x[:n], y[:n], x[n:], y[n:]
    torch.manual_seed(job["seed"])
    w = int(c["model.width"])
    model = nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Dropout(float(c["model.dropout"])), nn.Flatten(),
                          nn.Linear(2 * w * 16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=float(c["train.lr"]), momentum=0.9, nesterov=True,
                          weight_decay=float(c["train.weight_decay"]))
    batch = int(c["train.batch_size"])
    steps = epochs * math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(1.0, i / steps))))
    gen = torch.Generator().manual_seed(job["seed"])
    values, epoch_s, diverged = [], [], None
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        if diverged is None:
            model.train()
            for idx in torch.randperm(n, generator=gen).split(batch):
                loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
                if not torch.isfinite(loss):
                    diverged = epoch
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        if diverged is not None:
            values.append(0.0)
        else:
            model.eval()
            with torch.no_grad():
                values.append(float((model(xv).argmax(1) == yv).float().mean()))
        epoch_s.append(time.perf_counter() - t0)
    return {"values": values, "epoch_s": epoch_s, "diverged_at": diverged}


# --------------------------------------------------------------------------- dbnet, detection
def task_plan(name: str, quick: bool) -> dict[str, Any]:
    """The dbnet or detection set: the demo sweep file's setup, the data it synthesizes, the grid."""
    if name == "dbnet":
        # sized for ~15 minutes on 2 cores shared with 7 other engineers' jobs (an epoch ran ~7x slower
        # than on a quiet machine): 12 train / 4 val receipts of 128 px, words >= 4 px kept in the loss
        space = {"train.lr": log_grid(1e-3, 3e-2, 9), "train.resolution": [96, 128]}
        seeds, epochs, data = [0], 8, {"images": 16, "size": 128}
        demo = "dbnet-demo.yaml"
        overrides = {"train": {"batch_size": 2, "warmup_epochs": 0.5}, "labels": {"min_text_size": 4}}
    else:
        # sized for ~35 minutes on the same shared cores: 24 train / 8 val images of 96 px; batch 2 for
        # more steps per epoch; the learning rates span demo.yaml's search range
        space = {"train.lr": log_grid(1e-4, 3e-2, 9), "train.resolution": [64, 80, 96]}
        seeds, epochs, data = [0, 1], 8, {"images": 32, "size": 96}
        demo, overrides = "demo.yaml", {"train": {"batch_size": 2, "warmup_epochs": 0.5, "optimizer": "adamw"}}
    if quick:
        space = {k: v[:1] if k == "train.lr" else v[:2] for k, v in space.items()}
        space["train.resolution"] = [64, 96]
        seeds, epochs, data = [0], 2, {"images": 8, "size": 64 if name == "detection" else 96}
    settings = {
        "sweep": f"sweeps/{demo}: its task, model, post and eval_grid; train.epochs {epochs}, "
                 + ", ".join(f"{sec}.{k} {v}" for sec, kv in overrides.items() for k, v in kv.items())
                 + "; the knobs below as a grid",
        "data": f"synthetic ({'receipts' if name == 'dbnet' else 'shapes'}): `sweeper data synth`, "
                f"{data['images']} images (3/4 train, 1/4 val) of {data['size']} px, seed 0",
        "knobs": space, "seeds": seeds, "epochs": epochs, "threads": 1, "device": "cpu",
        "objective": "hmean (best eval-grid point)" if name == "dbnet" else "map50 (COCO AP at IoU 0.5, val split)",
        "epoch_s": "wall s of train_one_epoch + evaluate, 1 torch thread, 2 curves at a time",
    }
    # every configuration's first seed before any second one, learning rates in `spread` order, each
    # with every resolution: a recording stopped early still covers the grid
    lrs, res = space["train.lr"], space["train.resolution"]
    jobs = [{"config": {"train.lr": lrs[i], "train.resolution": res[(rank + k) % len(res)]}, "seed": s,
             "epochs": epochs} for s in seeds for rank, i in enumerate(spread(len(lrs))) for k in range(len(res))]
    return {"objective": "hmean" if name == "dbnet" else "map50", "epochs": epochs, "settings": settings,
            "jobs": jobs, "demo": demo, "overrides": overrides, "data": data}


def write_task_sweep(name: str, plan: dict[str, Any], work: Path) -> Path:
    """Synthesize the data and write the demo sweep file pointed at it: the sweep the curves' trials
    come from (validated by `load_sweep` like any launch)."""
    import yaml

    from sweeper.tasks import synthesize

    info = synthesize(name, work / "data", images=plan["data"]["images"], size=plan["data"]["size"], seed=0)
    doc = yaml.safe_load((ROOT / "sweeps" / plan["demo"]).read_text())
    doc["data"] = {"format": doc["data"]["format"], "train": info["train"], "val": info["val"], "images": info["images"]}
    for section, values in plan["overrides"].items():
        doc["base"].setdefault(section, {}).update(values)
    doc["base"]["train"]["epochs"] = plan["epochs"]
    doc["search"] = {k: {"grid": sorted({j["config"][k] for j in plan["jobs"]})} for k in plan["jobs"][0]["config"]}
    for key in doc["search"]:  # a searched key must not also be fixed in `base`
        doc["base"][key.split(".")[0]].pop(key.split(".", 1)[1], None)
    doc["search_alg"] = {"name": "grid", "seed": 0}
    doc["scheduler"] = {"name": "fifo"}
    doc.pop("tracking", None)
    doc.pop("storage", None)
    path = work / f"{name}-curves.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    from sweeper.config import build_trial, load_sweep

    sweep = load_sweep(path, cwd=work)  # a mistake here shows now, not in every worker
    build_trial(sweep, {**plan["jobs"][0]["config"], "train.seed": 0})
    return path


def task_curve(job: dict[str, Any]) -> dict[str, Any]:
    """Train one configuration of the sweep in `job["sweep"]` as a 1-CPU trial would (same config
    building, same task code; no Ray); values = the objective after each epoch."""
    import torch

    from sweeper.config import build_trial, load_sweep
    from sweeper.results import NonFiniteLossError
    from sweeper.tasks.training import loader_settings

    torch.set_num_threads(1)
    sweep = load_sweep(job["sweep"], cwd=Path(job["sweep"]).parent)
    params = {**job["config"], "train.seed": job["seed"]}
    asked = build_trial(sweep, params).train.workers
    cfg = build_trial(sweep, params, train={"workers": loader_settings(asked, device="cpu", cpus=1)["num_workers"]})
    task = sweep.task.load_task()(cfg, device="cpu")
    metric = sweep.spec.objective.metric
    values, epoch_s, diverged = [], [], None
    for epoch in range(1, job["epochs"] + 1):
        t0 = time.perf_counter()
        if diverged is None:
            try:
                task.train_one_epoch(epoch)
                value = float(task.evaluate()[metric])
                values.append(value if math.isfinite(value) else 0.0)
            except NonFiniteLossError:
                diverged = epoch
        if diverged is not None:
            values.append(0.0)
            # the epochs it did not train: the mean cost of those it did (or of this failed one)
            epoch_s.append(sum(epoch_s) / len(epoch_s) if epoch_s else time.perf_counter() - t0)
            continue
        epoch_s.append(time.perf_counter() - t0)
        print(f"    {job['config']} seed {job['seed']} epoch {epoch}: {values[-1]:.4f} in {epoch_s[-1]:.1f} s",
              flush=True)
    return {"values": values, "epoch_s": epoch_s, "diverged_at": diverged}


# ------------------------------------------------------------------------------------ driver
def _run(job: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        out = digits_curve(job) if job["set"] == "digits" else task_curve(job)
    except Exception as exc:  # noqa: BLE001 - some of ours do not pickle, and an unpicklable error hangs the pool
        raise RuntimeError(f"{job['config']} seed {job['seed']}: {type(exc).__name__}: {exc}") from None
    return {**job, **out, "wall_s": time.perf_counter() - t0}


def _key(job: dict[str, Any]) -> str:
    return json.dumps([job["config"], job["seed"]], sort_keys=True)


def _bounded(pool: Any, jobs: list[dict[str, Any]], slots: int, t0: float, stop_after_s: float | None) -> Any:
    """`_run` over `jobs` on `pool`, at most `slots` at once, none started after `stop_after_s`;
    yields results as they finish."""
    pending, queue = [], list(jobs)
    while queue or pending:
        late = stop_after_s is not None and time.perf_counter() - t0 > stop_after_s
        while queue and len(pending) < slots and not late:
            pending.append(pool.apply_async(_run, (queue.pop(0),)))
        if late:
            queue.clear()
        for res in [r for r in pending if r.ready()]:
            pending.remove(res)
            yield res.get()
        time.sleep(0.5)


def spearman_by_epoch(curves: list[dict[str, Any]]) -> dict[int, float | None]:
    """Spearman's rho of each epoch's values with the final values, over all curves."""
    from scipy.stats import spearmanr

    finals = [c["values"][-1] for c in curves]
    out: dict[int, float | None] = {}
    for e in range(len(curves[0]["values"])):
        xs = [c["values"][e] for c in curves]
        const = len(set(xs)) < 2 or len(set(finals)) < 2
        out[e + 1] = None if const else round(float(spearmanr(xs, finals).statistic), 3)
    return out


def record(name: str, *, quick: bool, out_dir: Path, cache: Path, processes: int, from_cache: bool = False,
           stop_after_s: float | None = None) -> Path:
    """Record set `name` (curves already in `cache` are reused) and write `out_dir/name.json`;
    `from_cache`: train nothing, write what the cache holds; `stop_after_s`: start no curve after
    that many seconds (running ones finish). A set left short is marked `settings.partial`."""
    plan = digits_plan(quick) if name == "digits" else task_plan(name, quick)
    work = Path(tempfile.mkdtemp(prefix=f"sweeper-curves-{name}-"))
    jobs = plan["jobs"]
    if name != "digits":
        sweep_file = write_task_sweep(name, plan, work)
        jobs = [{**j, "sweep": str(sweep_file)} for j in jobs]
    jobs = [{**j, "set": name} for j in jobs]
    done: dict[str, dict[str, Any]] = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            row = json.loads(line)
            same = row.get("settings", plan["settings"]) == plan["settings"] and row["epochs"] == plan["epochs"]
            if row.get("set") == name and row.get("quick") == quick and same:
                done[_key(row)] = row
    todo = [] if from_cache else [j for j in jobs if _key(j) not in done]
    print(f"{name}: {len(jobs)} curves x {plan['epochs']} epochs, {len(jobs) - len(todo)} from {cache}", flush=True)
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")  # no torch state inherited; each worker imports what it needs
    with ctx.Pool(min(processes, len(todo)) or 1) as pool, cache.open("a") as log:
        for i, row in enumerate(_bounded(pool, todo, processes, t0, stop_after_s), 1):
            row.pop("sweep", None)
            row["quick"], row["settings"] = quick, plan["settings"]  # a cached curve is reused only for the same setup
            done[_key(row)] = row
            log.write(json.dumps(row) + "\n")
            log.flush()
            if name != "digits" or i % 20 == 0 or i == len(todo):
                vals = ", ".join(f"{v:.3f}" for v in row["values"])
                print(f"  [{i}/{len(todo)} {time.perf_counter() - t0:.0f} s] {row['config']} seed {row['seed']}: "
                      f"{vals} ({sum(row['epoch_s']):.1f} s)", flush=True)
    rows = [done[_key(j)] for j in jobs if _key(j) in done]
    if len(rows) < len(jobs):
        plan["settings"]["partial"] = (f"{len(rows)} of the planned {len(jobs)} curves: recording stopped early "
                                       f"(the rest: rerun `python bench/record_curves.py {name}`, it resumes)")
    return write_set(name, plan, rows, quick=quick, out_dir=out_dir, wall_s=None if from_cache else
                     time.perf_counter() - t0)


def write_set(name: str, plan: dict[str, Any], rows: list[dict[str, Any]], *, quick: bool, out_dir: Path,
              wall_s: float | None) -> Path:
    """The set's JSON (the format `bench/replay.py` reads), one curve per line."""
    from importlib.metadata import version

    settings = dict(plan["settings"])
    diverged = [{"curve": i, "epoch": r["diverged_at"]} for i, r in enumerate(rows) if r.get("diverged_at")]
    settings["diverged"] = diverged  # their values are 0.0 from that epoch on
    # seconds each curve was in flight (task build, epochs, evaluations), summed: the recording's cost
    # whatever runs it took (a stopped run resumes from the cache)
    settings["curves_wall_s"] = round(sum(r["wall_s"] for r in rows), 1)
    curves = [{"config": r["config"], "seed": r["seed"], "values": [sig(v) for v in r["values"]],
               "epoch_s": [round(s, 3) for s in r["epoch_s"]]} for r in rows]
    head = {"name": name, "objective": plan["objective"], "mode": "max", "epochs": plan["epochs"],
            "made_by": f"python bench/record_curves.py {name}" + (" --quick" if quick else ""),
            "made_on": f"{mp.cpu_count()} cores CPU ({platform.machine()}, shared), torch {version('torch')}",
            "recorded": dt.date.today().isoformat(), "settings": settings}
    text = json.dumps(head)[:-1] + ', "curves": [\n' + ",\n".join(json.dumps(c) for c in curves) + "\n]}\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(text)
    rho = spearman_by_epoch(curves)
    finals = [c["values"][-1] for c in curves]
    print(f"{name}: wrote {path} ({len(curves)} curves, {len(diverged)} diverged) in {wall_s or 0:.0f} s; final "
          f"{plan['objective']} {min(finals):.3f}..{max(finals):.3f}; Spearman vs final by epoch: {rho}", flush=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+", choices=SETS, help="curve sets to record, in this order")
    ap.add_argument("--quick", action="store_true", help="a smoke run: a few tiny curves of 2-3 epochs")
    ap.add_argument("--out", type=Path, default=CURVES, help="folder for SET.json")
    ap.add_argument("--cache", type=Path, default=None,
                    help="JSON lines of finished curves (default: $TMPDIR/sweeper-curves-cache.jsonl); reused on a rerun")
    ap.add_argument("--processes", type=int, default=2, help="curves at once (1 torch thread each)")
    ap.add_argument("--stop-after", type=float, default=None, metavar="MIN",
                    help="start no new curve after MIN minutes (running ones finish); a short set is marked partial")
    ap.add_argument("--from-cache", action="store_true",
                    help="train nothing: write SET.json from the cached curves (marked partial if some are missing)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    cache = args.cache or Path(tempfile.gettempdir()) / f"sweeper-curves-cache{'-quick' if args.quick else ''}.jsonl"
    for name in args.sets:
        record(name, quick=args.quick, out_dir=args.out, cache=cache, processes=args.processes,
               from_cache=args.from_cache, stop_after_s=None if args.stop_after is None else 60 * args.stop_after)


if __name__ == "__main__":
    main()
