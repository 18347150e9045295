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
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from results_io import write_result  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

SWEEP = """
name: bench-overhead
task: detection
data: {{train: data/train.json, val: data/val.json, images: data/images}}
base:
  model: {{arch: retinanet, backbone: resnet18, fpn_channels: 64}}
  train: {{epochs: {epochs}, batch_size: 4, resolution: {size}, warmup_epochs: 0.5, seed: 0}}
search:
  train.lr: {{grid: {lrs}}}
objective: {{metric: map50, mode: max}}
search_alg: {{name: grid}}
scheduler: {{name: fifo}}
budget: {{num_samples: 1, max_concurrent: {conc}}}
resources: {{cpu: {cpu}}}
"""


def plain_trial(args: tuple[dict, int]) -> float:
    """One trial as a plain loop of the task code; returns its wall time."""
    cfg, threads = args
    import torch

    torch.set_num_threads(threads)
    from sweeper.tasks.detection.task import DetectionTask

    t0 = time.perf_counter()
    task = DetectionTask(cfg, device="cpu")
    for epoch in range(1, cfg["train"]["epochs"] + 1):
        task.train_one_epoch(epoch)
        task.evaluate()
    return time.perf_counter() - t0


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

    from sweeper.config import load_sweep, trial_config
    from sweeper.tasks.detection.synth import make_synthetic_coco

    work = Path(tempfile.mkdtemp(prefix="sweeper-bench-"))
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    make_synthetic_coco(work / "data", images=args.images, size=args.size, seed=0)
    lrs = [round(0.02 / 1.5 ** i, 6) for i in range(args.trials)]
    cpu = max(1, (os.cpu_count() or 2) // args.concurrent)
    sweep_file = work / "bench.yaml"
    sweep_file.write_text(SWEEP.format(epochs=args.epochs, size=args.size, lrs=lrs, conc=args.concurrent, cpu=cpu))

    # as on any machine that has launched a sweep before: timm's model names are cached, so the
    # driver checks backbones without importing torch (sweeper/tasks/backbones.py)
    from sweeper.tasks.backbones import check_backbone

    check_backbone("resnet18")
    startup = ray_startup_s(env)
    print(f"ray.init() cold start: {startup:.1f} s")

    sweep = load_sweep(sweep_file, cwd=work)
    configs = [trial_config(sweep, {"train.lr": lr}) for lr in lrs]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.concurrent) as pool:
        trial_walls = list(pool.map(plain_trial, [(c, cpu) for c in configs]))
    plain = time.perf_counter() - t0
    print(f"plain loops: {plain:.1f} s (trials {', '.join(f'{w:.0f}' for w in trial_walls)} s)")

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sweeper.cli", "launch", str(sweep_file)], cwd=work, env=env,
                          capture_output=True, text=True)
    swept = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"sweeper launch failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(f"sweeper launch: {swept:.1f} s")

    result = {
        "benchmark": "overhead", "ratio": round(swept / plain, 3), "sweeper_wall_s": round(swept, 1),
        "plain_wall_s": round(plain, 1), "ray_init_s": round(startup, 2),
        "mean_trial_s": round(sum(trial_walls) / len(trial_walls), 1),
        "trials": args.trials, "epochs": args.epochs, "concurrent": args.concurrent, "threads_per_trial": cpu,
        "images": args.images, "size": args.size, "quick": args.quick,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "python": platform.python_version(),
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
