"""DBNet throughput at 640 px and the cost of an evaluation grid relative to one setting.

Measures, on synthetic receipts rendered at 640 px (threads as a 1-CPU trial would have):

* training images/s (second epoch, so start-up is excluded);
* evaluation time for one `post` setting: forward + post-processing + ICDAR-2015 Hmean;
* the same evaluation with a 4 x 3 grid (`post.box_thresh` x `post.thresh`): the forward pass is
  shared, so only post-processing and scoring repeat. Target: grid / single < 1.3.

Writes `bench/results/dbnet.json`.

    python bench/dbnet.py            # ~2 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from common import dbnet_config, make_task, train_epochs
from results_io import RESULTS, write_result  # bench/ is on sys.path when run as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32, help="synthetic receipts (3/4 train, 1/4 val)")
    ap.add_argument("--resolution", type=int, default=640)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "dbnet.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from sweeper.tasks.dbnet.synth import make_synthetic_receipts

    data = make_synthetic_receipts(Path(tempfile.mkdtemp(prefix="dbnet-bench-")), images=args.images,
                                   size=args.resolution, seed=0)
    task = make_task(dbnet_config(data, epochs=2, resolution=args.resolution, warmup_epochs=0))
    train = train_epochs(task, 2)["train"]

    from sweeper.tasks.dbnet.task import POST_KEYS
    from sweeper.tasks.training import best_over_grid

    defaults = {f"post.{k}": getattr(task.cfg.post, k) for k in POST_KEYS}

    def post_and_metric(maps: list, grid: dict) -> float:
        t0 = time.perf_counter()
        best_over_grid(grid, defaults, lambda p: task._score(maps, {k.removeprefix("post."): v for k, v in p.items()}),
                       task.cfg.objective.metric, task.cfg.objective.mode)
        return time.perf_counter() - t0

    task.predict_maps()  # warm-up
    forwards = []
    for _ in range(2):
        t0 = time.perf_counter()
        maps = task.predict_maps()
        forwards.append(time.perf_counter() - t0)
    fwd1 = min(forwards)
    post1 = min(post_and_metric(maps, {}) for _ in range(2))
    post12 = min(post_and_metric(maps, {"post.box_thresh": [0.3, 0.4, 0.5, 0.6], "post.thresh": [0.2, 0.3, 0.4]})
                 for _ in range(2))
    single, gridded = fwd1 + post1, fwd1 + post12
    n_val = len(task.val_ds)
    result = {
        "benchmark": "dbnet", "resolution": args.resolution, "threads": args.threads,
        "train_images_per_s": round(train["train/images_per_s"], 2),
        "eval_single_s": round(single, 3), "eval_grid_4x3_s": round(gridded, 3),
        "grid_over_single": round(gridded / single, 3),
        "eval_images_per_s_single": round(n_val / single, 2),
        "forward_s": round(fwd1, 3), "post_and_metric_single_s": round(post1, 3),
        "post_and_metric_grid_s": round(post12, 3), "val_images": n_val,
        "machine": f"{platform.machine()} {torch.get_num_threads()} torch threads",
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
