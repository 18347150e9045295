"""Trial packing: how many trials at once, with how many threads each, buys the most trial-epochs.

CPU (always): the detection demo task (`sweeps/demo.yaml`'s model at `--resolution`, FIFO, a grid
of `--trials` learning rates, `--epochs` each) through `sweeper launch`, packed two ways on this
machine's CPUs:

* 1 trial at a time with `resources.cpu` = all CPUs (torch threads = CPUs);
* CPUs trials at once with `resources.cpu: 1` (1 torch thread each).

Throughput is trial-epochs per hour: over the whole launch (start-up and shutdown included) and
in steady state (from the first trial's start to the last result, from Ray's result records).
`--oversubscribe` (on by default) adds the case the sweep prevents: the same number of trials at
once as plain processes, each with as many torch threads as the machine has CPUs.

GPU (`--gpu`, when CUDA is available; skipped with a message otherwise): 1, 2 and 4 trials per
GPU (`resources.gpu: 1 | 0.5 | 0.25`, one trial per slot) of a small detector (RetinaNet, timm
`resnet18`, 512 px), with AMP on and off: training images/s per trial and in all (from each
trial's `train/images_per_s` at its last epoch) and GPU memory per trial (peak of each trial
process in `nvidia-smi`).

Writes `bench/results/packing.json`.

    python bench/packing.py               # CPU part, ~10 minutes on 2 cores
    python bench/packing.py --gpu         # and the GPU part on a CUDA machine
    python bench/packing.py --quick       # a smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import demo_sweep, launch_sweep, run_plain_trials, trial_configs
from results_io import RESULTS, bench_env, environment, remove_work, write_result


def read_results(experiment: Path) -> list[list[dict[str, Any]]]:
    """Ray's per-trial result records (one dict per reported epoch), per trial."""
    trials = []
    for path in sorted(experiment.glob("trial_*/result.json")):
        trials.append([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    return trials


def throughput(trials: list[list[dict[str, Any]]], wall_s: float) -> dict[str, Any]:
    """Trial-epochs per hour over the launch and in steady state; per-epoch seconds and images/s."""
    records = [r for t in trials for r in t]
    start = min(r["timestamp"] - r["time_total_s"] for r in records)
    span = max(r["timestamp"] for r in records) - start
    return {
        "trial_epochs": len(records), "wall_s": round(wall_s, 1), "steady_span_s": round(span, 1),
        "trial_epochs_per_h": round(len(records) / wall_s * 3600, 1),
        "steady_trial_epochs_per_h": round(len(records) / span * 3600, 1),
        "mean_epoch_s": round(sum(r["time_this_iter_s"] for r in records) / len(records), 2),
        "mean_train_images_per_s_per_trial": round(
            sum(t[-1]["train/images_per_s"] for t in trials) / len(trials), 2),
    }


def oversubscription(sweep_file: Path, work: Path, procs: int) -> dict[str, Any]:
    """`procs` plain training processes with 1 thread each against CPUs threads each."""
    (cfg,) = trial_configs(sweep_file, [{"train.lr": 1e-3}], cwd=work)
    out = {}
    for threads in (1, os.cpu_count() or 1):
        t0 = time.perf_counter()
        runs = run_plain_trials([cfg] * procs, procs, threads=threads, epochs=1)
        rates = [r["train"]["train/images_per_s"] for r in runs]
        out[f"{procs}x{threads}_threads"] = {"wall_s": round(time.perf_counter() - t0, 1),
                                             "train_images_per_s_total": round(sum(rates), 2)}
    return out


class GpuMemoryPoller:
    """Peak `nvidia-smi` memory (MiB) per process while a sweep runs (trial workers are processes)."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s, self.peak, self._stop = interval_s, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
            out = subprocess.run(query, capture_output=True, text=True).stdout
            for line in out.splitlines():
                pid, _, mem = line.partition(",")
                if mem.strip().isdigit():
                    self.peak[pid.strip()] = max(self.peak.get(pid.strip(), 0), int(mem))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> GpuMemoryPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def gpu_part(work: Path, env: dict[str, str], epochs: int) -> dict[str, Any]:
    """1/2/4 trials per GPU x AMP on/off, through `sweeper launch` (one trial per slot)."""
    import torch

    if not torch.cuda.is_available():
        print("--gpu: CUDA is not available on this machine; GPU packing skipped")
        return {"skipped": "CUDA not available"}
    from sweeper.tasks import synthesize
    from sweeper.tasks.training import loader_settings

    data = work / "data512"
    synthesize("detection", data, images=256, size=512, seed=0)
    model = {"arch": "retinanet", "backbone": "resnet18", "pretrained": False, "fpn_channels": 64}
    cpus = max(1, (os.cpu_count() or 4) // 4)
    rows = []
    for per_gpu in (1, 2, 4):
        for amp in (True, False):
            name = f"bench-packing-gpu{per_gpu}-{'amp' if amp else 'fp32'}"
            lrs = [round(1e-3 * (i + 1), 6) for i in range(per_gpu)]
            doc = demo_sweep(name, data, lrs=lrs, epochs=epochs, resolution=512, cpu=cpus, gpu=1 / per_gpu,
                             concurrent=per_gpu, model=model, train={"batch_size": 8, "amp": amp})  # workers: auto
            with GpuMemoryPoller() as mem:
                child = launch_sweep(doc, work, file_name=f"{name}.yaml", env=env)
            trials = read_results(work / "runs" / name)
            rates = [t[-1]["train/images_per_s"] for t in trials]
            rows.append({"trials_per_gpu": per_gpu, "amp": amp, "cpu_per_trial": cpus,
                         "loader_workers_per_trial": loader_settings("auto", device="cuda", cpus=cpus)["num_workers"],
                         "wall_s": round(child["wall_s"], 1),
                         "train_images_per_s_per_trial": round(sum(rates) / len(rates), 1),
                         "train_images_per_s_total": round(sum(rates), 1),
                         "gpu_memory_mib_per_trial": max(mem.peak.values(), default=None),
                         "gpu_memory_mib_by_process": mem.peak})
            print(rows[-1], flush=True)
    return {"model": model, "resolution": 512, "batch_size": 8, "epochs": epochs,
            "device": torch.cuda.get_device_name(0), "runs": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4, help="trials per packing (a grid of learning rates)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--images", type=int, default=128, help="synthetic images (3/4 train), as the demo")
    ap.add_argument("--no-oversubscribe", dest="oversubscribe", action="store_false",
                    help="skip the plain-process over-subscription case")
    ap.add_argument("--gpu", action="store_true", help="also the GPU packing (needs CUDA)")
    ap.add_argument("--gpu-epochs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 trials x 1 epoch on 24 images at 64 px")
    ap.add_argument("--out", type=Path, default=RESULTS / "packing.json")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work directory (data, runs, MLflow store)")
    args = ap.parse_args()
    if args.quick:
        args.trials, args.epochs, args.images, args.resolution = 2, 1, 24, 64

    from sweeper.tasks import synthesize

    work = Path(tempfile.mkdtemp(prefix="sweeper-bench-packing-"))
    synthesize("detection", work / "data", images=args.images, size=args.resolution, seed=0)
    env = bench_env()
    cpus = os.cpu_count() or 1
    lrs = [round(3e-4 * 1.5 ** i, 6) for i in range(args.trials)]
    cpu_rows = {}
    for concurrent, cpu in ((1, cpus), (cpus, 1)):
        name = f"bench-packing-{concurrent}x{cpu}"
        doc = demo_sweep(name, work / "data", lrs=lrs, epochs=args.epochs, resolution=args.resolution, cpu=cpu,
                         gpu=0, concurrent=concurrent)
        child = launch_sweep(doc, work, file_name=f"{name}.yaml", env=env)
        key = f"{concurrent}_trials_x_{cpu}_threads"
        cpu_rows[key] = throughput(read_results(work / "runs" / name), child["wall_s"])
        print(name, cpu_rows[key], flush=True)
    one, packed = cpu_rows[f"1_trials_x_{cpus}_threads"], cpu_rows[f"{cpus}_trials_x_1_threads"]
    result = {
        "benchmark": "packing", "trials": args.trials, "epochs": args.epochs, "resolution": args.resolution,
        "images": args.images, "learning_rates": lrs, "model": "sweeps/demo.yaml base.model", "quick": args.quick,
        "cpu": cpu_rows,
        "packed_over_single_steady": round(packed["steady_trial_epochs_per_h"] / one["steady_trial_epochs_per_h"], 3),
        "packed_over_single_launch": round(packed["trial_epochs_per_h"] / one["trial_epochs_per_h"], 3),
        "oversubscription": (oversubscription(work / f"bench-packing-{cpus}x1.yaml", work, cpus)
                             if args.oversubscribe and cpus > 1 else None),
        "gpu": gpu_part(work, env, args.gpu_epochs) if args.gpu else None,
        **environment(),
    }
    write_result(result, args.out)
    remove_work(work, args.keep)


if __name__ == "__main__":
    main()
