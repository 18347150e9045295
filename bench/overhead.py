"""Overhead of sweeper over plain training loops: the same trials, the same threads.

Runs a fixed list of trial configurations (a grid over `train.lr`, FIFO, so both sides train
exactly the same epochs) twice:

1. `sweeper launch` as a user would run it (Ray start, Optuna grid sampler, checkpoints every
   epoch, MLflow logging), timed from process start to exit;
2. the task code directly: `DetectionTask.train_one_epoch` + `evaluate` per epoch, in as many
   worker processes as the sweep runs trials at once, each with the same torch threads.

Writes `bench/results/overhead.json` with both wall times, their ratio and Ray's start-up time.
Target: ratio <= 1.10 for trials of about a minute each (the default sizes below).

    python bench/overhead.py              # ~9 minutes on 2 cores (8 trials of ~1 minute, 2 at a time)
    python bench/overhead.py --quick      # a smoke run (seconds-long trials; ratio not meaningful)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import launch_sweep, run_plain_trials, trial_configs, write_sweep
from results_io import RESULTS, bench_env, environment, write_result  # bench/ is on sys.path when run as a script


def sweep_doc(*, epochs: int, size: int, lrs: list[float], concurrent: int, cpu: int) -> dict:
    """RetinaNet on a timm resnet18 over ./data (synthetic, `size` px), a FIFO grid over `lrs`."""
    return {
        "name": "bench-overhead", "task": "detection",
        "data": {"train": "data/train.json", "val": "data/val.json", "images": "data/images"},
        "base": {"model": {"arch": "retinanet", "backbone": "resnet18", "fpn_channels": 64},
                 "train": {"epochs": epochs, "batch_size": 4, "resolution": size, "warmup_epochs": 0.5, "seed": 0}},
        "search": {"train.lr": {"grid": lrs}},
        "objective": {"metric": "map50", "mode": "max"},
        "search_alg": {"name": "grid"},
        "scheduler": {"name": "fifo"},
        "budget": {"num_samples": 1, "max_concurrent": concurrent},
        "resources": {"cpu": cpu},
    }


def ray_startup_s(env: dict[str, str]) -> float:
    code = "import time, ray; t=time.perf_counter(); ray.init(include_dashboard=False); print(time.perf_counter()-t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "overhead.json")
    args = ap.parse_args()
    if args.quick:
        args.trials, args.epochs, args.images, args.size = 2, 2, 12, 64

    from sweeper.tasks.detection.synth import make_synthetic_coco

    work = Path(tempfile.mkdtemp(prefix="sweeper-bench-"))
    env = bench_env()
    make_synthetic_coco(work / "data", images=args.images, size=args.size, seed=0)
    lrs = [round(0.02 / 1.5 ** i, 6) for i in range(args.trials)]
    cpu = max(1, (os.cpu_count() or 2) // args.concurrent)
    doc = sweep_doc(epochs=args.epochs, size=args.size, lrs=lrs, concurrent=args.concurrent, cpu=cpu)
    sweep_file = write_sweep(doc, work / "bench.yaml")

    # as on any machine that has launched a sweep before: timm's model names are cached, so the
    # driver checks backbones without importing torch (sweeper/tasks/backbones.py)
    from sweeper.tasks.backbones import check_backbone

    check_backbone("resnet18")
    startup = ray_startup_s(env)
    print(f"ray.init() cold start: {startup:.1f} s")

    configs = trial_configs(sweep_file, [{"train.lr": lr} for lr in lrs], cwd=work)
    t0 = time.perf_counter()
    trial_walls = [r["wall_s"] for r in run_plain_trials(configs, args.concurrent, threads=cpu, evaluate=True)]
    plain = time.perf_counter() - t0
    print(f"plain loops: {plain:.1f} s (trials {', '.join(f'{w:.0f}' for w in trial_walls)} s)")

    try:
        swept = launch_sweep(doc, work, file_name=sweep_file.name, env=env)["wall_s"]
    except RuntimeError as exc:
        sys.exit(f"sweeper launch failed:\n{exc}")
    print(f"sweeper launch: {swept:.1f} s")

    result = {
        "benchmark": "overhead", "ratio": round(swept / plain, 3), "sweeper_wall_s": round(swept, 1),
        "plain_wall_s": round(plain, 1), "ray_init_s": round(startup, 2),
        "mean_trial_s": round(sum(trial_walls) / len(trial_walls), 1),
        "trials": args.trials, "epochs": args.epochs, "concurrent": args.concurrent, "threads_per_trial": cpu,
        "images": args.images, "size": args.size, "quick": args.quick,
        **{key: value for key, value in environment().items() if key in ("machine", "python")},
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
