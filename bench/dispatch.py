"""Driver scaling: many short trials through `sweeper launch` against the same trials in plain Ray Tune.

Trials of the `noop` task (no training: `--epochs` reports of `score`, each after
`--sleep-s` seconds) are what a sweep's driver costs per trial. For each size in `--sizes`:

1. `sweeper launch` on a noop sweep: Optuna TPE (seed 0) over `x`, `y`, ASHA (grace 1,
   reduction factor 3), `--concurrent` trials at once, MLflow in a sqlite store;
2. plain Ray Tune on the same trials: a `Tuner` over a function trainable running the same
   NoopTask, Ray's own `OptunaSearch` with the same TPE sampler and space, the same ASHA,
   the same concurrency limit, `reuse_actors=True` as sweeper sets, no MLflow, no checkpoints.

Both run as child processes, timed from start to exit; the driver's peak RSS is read from /proc.
Reported per size: wall times, ours / plain (target <= 1.20), the extra driver time per trial
(ms), and peak driver memory. Also, measured in this process:

* Optuna suggestion time as the study grows: `study.ask(fixed_distributions=...)` (what Ray's
  OptunaSearch calls) with sweeper's space and sampler, at study sizes up to the largest size;
* MLflow write time per trial: sweeper's own `MLflowTrialLogger` (the callback the sweep runs)
  creating, filling and closing trial runs in a sqlite store, as the store grows; and the part
  of it Tune's loop waits for (the callback hands the writes to its background thread).

Writes `bench/results/dispatch.json`.

    python bench/dispatch.py              # 200 trials (a few minutes on 2 cores)
    python bench/dispatch.py --full       # 200, 500 and 1000 trials
    python bench/dispatch.py --sizes 50   # a smoke run
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from common import launch_sweep
from results_io import RESULTS, bench_env, environment, remove_work, run_child, write_result

SWEEP = """
name: bench-dispatch-{n}
task: noop
base: {{train: {{epochs: {epochs}, sleep_s: {sleep_s}}}}}
search:
  x: {{uniform: [0.0, 1.0]}}
  y: {{uniform: [0.0, 1.0]}}
objective: {{metric: score, mode: max}}
search_alg: {{name: optuna, sampler: tpe, seed: 0}}
scheduler: {{name: asha, grace_period: 1, reduction_factor: 3}}
budget: {{num_samples: {n}, max_concurrent: {concurrent}}}
resources: {{cpu: 1, gpu: 0}}
tracking: {{uri: sqlite:///mlruns.db}}
storage: runs
"""


def plain_tune(trials: int, epochs: int, concurrent: int, sleep_s: float, storage: str) -> None:
    """The same trials as a plain Ray Tune user would write them (run in a child process)."""
    import optuna
    import ray
    from optuna.distributions import FloatDistribution
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from sweeper.tasks.noop import NoopTask

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)

    def trainable(config: dict[str, Any]) -> None:
        task = NoopTask({"x": config["x"], "y": config["y"], "train": {"sleep_s": sleep_s}})
        for epoch in range(1, epochs + 1):
            metrics = {**task.train_one_epoch(epoch), **task.evaluate(), "epoch": epoch}
            tune.report(metrics)

    searcher = OptunaSearch(space={"x": FloatDistribution(0.0, 1.0), "y": FloatDistribution(0.0, 1.0)},
                            metric="score", mode="max", sampler=optuna.samplers.TPESampler(seed=0))
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(
            metric="score", mode="max", search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrent),
            scheduler=ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=1, reduction_factor=3),
            num_samples=trials, reuse_actors=True),
        run_config=tune.RunConfig(name=f"plain-{trials}", storage_path=storage, verbose=1),
    )
    results = tuner.fit()
    print(f"plain ray tune: {len(results)} trials, {sum(r.error is not None for r in results)} errors")


def optuna_ask_ms(sweep_file: Path, max_size: int, reps: int = 5) -> dict[int, float]:
    """Mean ms of `ask` (sweeper's sampler and space) at study sizes up to `max_size`: every
    trial is asked, timed and told its noop score; the `reps` asks from each size on are averaged."""
    import optuna

    from sweeper.config import load_sweep
    from sweeper.search import build_sampler
    from sweeper.spaces import to_optuna
    from sweeper.tasks.noop import NoopTask

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep = load_sweep(sweep_file, cwd=sweep_file.parent)
    space = to_optuna(sweep.dimensions)
    study = optuna.create_study(direction="maximize", sampler=build_sampler(sweep))
    took = []
    for _ in range(max_size + reps):
        t0 = time.perf_counter()
        trial = study.ask(fixed_distributions=space)
        took.append(time.perf_counter() - t0)
        study.tell(trial, NoopTask({**trial.params, "train": {"sleep_s": 0}}).evaluate()["score"])
    sizes = sorted({s for s in (0, 10, 50, 100, 200, 500, 1000, max_size) if s <= max_size})
    return {n: round(statistics.mean(took[n:n + reps]) * 1000, 2) for n in sizes}


def mlflow_write_ms(sweep_file: Path, trials: int, epochs: int, store: Path) -> dict[str, Any]:
    """ms per trial of sweeper's MLflow callback (run create, params, config artifact, one metric
    batch per epoch, status tags, close) in a fresh sqlite store, by how many runs it holds."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    from sweeper import store as mlflow_store
    from sweeper import tracking
    from sweeper.config import load_sweep

    sweep = load_sweep(sweep_file, [f"tracking.uri=sqlite:///{store / 'mlflow-bench.db'}"], cwd=sweep_file.parent)
    t0 = time.perf_counter()
    parent = mlflow_store.start_sweep_run(sweep, "bench")
    setup_s = time.perf_counter() - t0
    logger = tracking.MLflowTrialLogger(sweep, parent)
    per_trial, in_loop = [], []
    for _ in range(trials):
        trial_id = uuid.uuid4().hex[:8]
        trial = Trial("noop", config={"x": 0.5, "y": 0.5}, trial_id=trial_id, stub=True,
                      storage=StorageContext(str(store / "ray"), "bench", trial_dir_name=f"trial_{trial_id}"))
        t0 = time.perf_counter()
        logger.on_trial_start(0, [], trial)
        for epoch in range(1, epochs + 1):
            result = {"train/loss": 0.1 / epoch, "score": 0.9, "epoch": epoch, "epochs_total": epochs,
                      "best_objective": 0.9, "oom_retries": 0, "train/micro_batches": 1,
                      "training_iteration": epoch, "time_this_iter_s": 0.01, "timestamp": int(time.time()),
                      "trial_id": trial_id}
            trial.update_last_result(result)
            logger.on_trial_result(epoch, [], trial, result)
        logger.on_trial_complete(epochs, [], trial)
        in_loop.append((time.perf_counter() - t0) * 1000)  # what Tune's loop waits: handing the writes over
        logger.flush()
        per_trial.append((time.perf_counter() - t0) * 1000)  # until they are in the store
    window = max(1, min(50, trials // 4))
    return {"trials": trials, "epochs_per_trial": epochs, "experiment_and_parent_run_s": round(setup_s, 2),
            "mean_ms_per_trial": round(statistics.mean(per_trial), 1),
            "driver_loop_ms_per_trial": round(statistics.mean(in_loop), 2),
            f"first_{window}_ms_per_trial": round(statistics.mean(per_trial[:window]), 1),
            f"last_{window}_ms_per_trial": round(statistics.mean(per_trial[-window:]), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[200], help="trials per sweep")
    ap.add_argument("--full", action="store_true", help="--sizes 200 500 1000")
    ap.add_argument("--epochs", type=int, default=3, help="reports per trial (ASHA rungs at 1; max_t = epochs)")
    ap.add_argument("--sleep-s", type=float, default=0.0, help="seconds per noop epoch")
    ap.add_argument("--concurrent", type=int, default=2, help="trials at once (1 CPU each)")
    ap.add_argument("--out", type=Path, default=RESULTS / "dispatch.json")
    ap.add_argument("--plain-child", type=int, default=None, help=argparse.SUPPRESS)  # internal: run plain_tune
    ap.add_argument("--storage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true", help="keep the temporary work directory (data, runs, MLflow store)")
    args = ap.parse_args()
    if args.plain_child is not None:
        plain_tune(args.plain_child, args.epochs, args.concurrent, args.sleep_s, args.storage)
        return
    sizes = [200, 500, 1000] if args.full else sorted(args.sizes)

    work = Path(tempfile.mkdtemp(prefix="sweeper-bench-dispatch-"))
    env = bench_env()
    rows = []
    for n in sizes:
        text = SWEEP.format(n=n, epochs=args.epochs, sleep_s=args.sleep_s, concurrent=args.concurrent)
        plain = run_child([sys.executable, __file__, "--plain-child", str(n), "--epochs", str(args.epochs),
                           "--concurrent", str(args.concurrent), "--sleep-s", str(args.sleep_s),
                           "--storage", str(work / "plain-runs")], work, env)
        ours = launch_sweep(text, work, file_name=f"dispatch-{n}.yaml", env=env)
        row = {
            "trials": n, "sweeper_wall_s": round(ours["wall_s"], 1), "plain_wall_s": round(plain["wall_s"], 1),
            "ratio": round(ours["wall_s"] / plain["wall_s"], 3),
            "sweeper_ms_per_trial": round(ours["wall_s"] / n * 1000, 1),
            "plain_ms_per_trial": round(plain["wall_s"] / n * 1000, 1),
            "extra_driver_ms_per_trial": round((ours["wall_s"] - plain["wall_s"]) / n * 1000, 1),
            "sweeper_driver_peak_rss_mb": ours["peak_rss_mb"], "plain_driver_peak_rss_mb": plain["peak_rss_mb"],
        }
        rows.append(row)
        print(row, flush=True)

    largest = max(sizes)
    sweep_file = work / f"dispatch-{largest}.yaml"
    result = {
        "benchmark": "dispatch", "sizes": sizes, "epochs": args.epochs, "sleep_s": args.sleep_s,
        "concurrent": args.concurrent, "searcher": "optuna tpe seed 0 (x, y uniform)",
        "scheduler": "asha grace 1 rf 3", "runs": rows,
        "target_ratio_le_1_20": all(r["ratio"] <= 1.20 for r in rows),
        "optuna_ask_ms_by_study_size": optuna_ask_ms(sweep_file, largest),
        "mlflow_write": mlflow_write_ms(sweep_file, largest, args.epochs, work),
        **environment(),
    }
    write_result(result, args.out)
    remove_work(work, args.keep)


if __name__ == "__main__":
    main()
