"""What the benchmarks build and run besides recording results (results_io.py): the sweep
documents they hand to `sweeper launch` (and the launch itself), the trial configs those documents
give, and the plain training loops (the task's own `train_one_epoch` / `evaluate`, no Ray, no
MLflow) they measure against.

    doc = demo_sweep("bench-x", work / "data", lrs=[1e-3, 3e-3], epochs=2, resolution=64, concurrent=2)
    configs = trial_configs(write_sweep(doc, work / "x.yaml"), [{"train.lr": 1e-3}])
    walls = [r["wall_s"] for r in run_plain_trials(configs, processes=2, threads=1)]
    child = launch_sweep(doc, work, file_name="x.yaml")     # wall_s, peak_rss_mb, output

Only the standard library and PyYAML at import; sweeper and torch are imported where they are used.
"""
from __future__ import annotations

import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from results_io import ROOT, run_child  # bench/ is on sys.path when run as a script

DEMO = ROOT / "sweeps" / "demo.yaml"


def demo_sweep(name: str, data: Path, *, lrs: list[float] | None, epochs: int, resolution: int, concurrent: int,
               scheduler: dict[str, Any] | None = None, cpu: float = 1, gpu: float = 0,
               model: dict[str, Any] | None = None, train: dict[str, Any] | None = None,
               objective: str = "map50") -> dict[str, Any]:
    """The demo sweep (`sweeps/demo.yaml`): its task, model (or `model`) and post settings on the
    COCO set in `data`, `train.epochs`/`resolution` as given, AdamW and `train.seed` 0 (then
    `train` on top); a grid over `lrs` (none: nothing searched), `scheduler` (FIFO when None),
    `objective` (max) the objective; MLflow in ./mlruns.db and Ray's results in ./runs of the launch's directory."""
    base = yaml.safe_load(DEMO.read_text())["base"]
    if model:
        base["model"] = model
    base["train"] = {**base["train"], "epochs": epochs, "resolution": resolution, "optimizer": "adamw", "seed": 0,
                     **(train or {})}
    return {
        "name": name, "task": "detection",
        "data": {"format": "coco", "train": str(data / "train.json"), "val": str(data / "val.json"),
                 "images": str(data / "images")},
        "base": base,
        "search": {"train.lr": {"grid": lrs}} if lrs else {},
        "objective": {"metric": objective, "mode": "max"},
        "search_alg": {"name": "grid", "seed": 0},
        "scheduler": scheduler or {"name": "fifo"},
        "budget": {"num_samples": 1, "max_concurrent": concurrent},
        "resources": {"cpu": cpu, "gpu": gpu},
        "tracking": {"uri": "sqlite:///mlruns.db"},
        "storage": "runs",
    }


def sweep_text(sweep: dict[str, Any] | str) -> str:
    """A sweep document as the YAML a sweep file holds (text is taken as it is)."""
    return sweep if isinstance(sweep, str) else yaml.safe_dump(sweep, sort_keys=False)


def write_sweep(sweep: dict[str, Any] | str, path: Path) -> Path:
    """Write a sweep document (a dict, or YAML text) to `path`; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(sweep_text(sweep))
    return path


def launch_sweep(sweep: dict[str, Any] | str, workdir: Path, *, file_name: str = "sweep.yaml",
                 env: dict[str, str] | None = None) -> dict[str, Any]:
    """Write the sweep document into `workdir` and run `sweeper launch` on it from there (so
    relative data, storage and tracking paths land in `workdir`); returns what
    results_io.run_child does (wall_s, peak_rss_mb, returncode, output), raises on a failed launch."""
    workdir.mkdir(parents=True, exist_ok=True)
    write_sweep(sweep, workdir / file_name)
    return run_child([sys.executable, "-m", "sweeper.cli", "launch", file_name], workdir, env)


def trial_configs(sweep_file: Path, points: list[dict[str, Any]], cwd: Path | None = None) -> list[dict[str, Any]]:
    """The config each trial of `sweep_file` gets for each of `points` ({dotted key: value}), as
    `sweeper launch` would give it; relative paths resolve against `cwd` (default: the file's folder)."""
    from sweeper.config import load_sweep, trial_config

    sweep = load_sweep(sweep_file, cwd=cwd or sweep_file.parent)
    return [trial_config(sweep, point) for point in points]


def dbnet_config(data: dict[str, Any], *, epochs: int, resolution: int, warmup_epochs: float, batch_size: int = 4,
                 **train: Any) -> dict[str, Any]:
    """A DBNet trial config without a sweep file: the schema's defaults, a resnet18 U-Net with 64
    channels, the receipts `data` (what `make_synthetic_receipts` returns), no eval grid, `hmean`."""
    from sweeper.tasks.dbnet.spec import DBNetBase

    cfg = DBNetBase().model_dump()
    cfg["model"].update(backbone="resnet18", decoder="unet", channels=64)
    cfg["train"].update(epochs=epochs, batch_size=batch_size, resolution=resolution, warmup_epochs=warmup_epochs,
                        **train)
    cfg.update(task="dbnet", data={"format": "ufo", "train": data["train"], "val": data["val"],
                                   "images": data["images"]}, eval_grid={},
               objective={"metric": "hmean", "mode": "max"})
    return cfg


def make_task(cfg: dict[str, Any], device: str = "cpu") -> Any:
    """The task object a trial would train (`cfg["task"]`'s class from the registry)."""
    from sweeper.tasks import load_task

    return load_task(cfg["task"])(cfg, device=device)


def train_epochs(task: Any, epochs: int, *, evaluate: bool = False) -> dict[str, dict[str, Any]]:
    """Epochs 1..`epochs` of `task`: `train_one_epoch` and, with `evaluate`, `evaluate` after each.
    Returns the last epoch's metrics: {"train": ..., "eval": ...} (eval empty without `evaluate`)."""
    out: dict[str, dict[str, Any]] = {"train": {}, "eval": {}}
    for epoch in range(1, epochs + 1):
        out["train"] = task.train_one_epoch(epoch)
        if evaluate:
            out["eval"] = task.evaluate()
    return out


def plain_trial(cfg: dict[str, Any], *, threads: int | None = None, epochs: int | None = None,
                evaluate: bool = False) -> dict[str, Any]:
    """One trial as a plain loop of the task code, in this process, on the CPU: `threads` torch
    threads (None: as they are), then `train_epochs` (default: `train.epochs` of them). Returns
    wall_s (from building the task to the end of its last epoch) and the last epoch's metrics."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    from sweeper.tasks import load_task

    task_cls = load_task(cfg["task"])  # the task's code is imported before the clock starts
    t0 = time.perf_counter()
    task = task_cls(cfg, device="cpu")
    out = train_epochs(task, epochs or cfg["train"]["epochs"], evaluate=evaluate)
    return {"wall_s": time.perf_counter() - t0, **out}


def _plain_trial_job(job: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    cfg, kwargs = job
    return plain_trial(cfg, **kwargs)


def run_plain_trials(configs: list[dict[str, Any]], processes: int, **kwargs: Any) -> list[dict[str, Any]]:
    """`plain_trial(cfg, **kwargs)` for every config, in `processes` worker processes at once (as
    many as a sweep runs trials at once); results in the order of `configs`."""
    with ProcessPoolExecutor(processes) as pool:
        return list(pool.map(_plain_trial_job, [(cfg, kwargs) for cfg in configs]))
