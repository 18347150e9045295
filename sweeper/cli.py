"""`sweeper` command line: thin wrappers over config, runner, tracking and the evaluators.

    sweeper launch sweeps/demo.yaml [--dry-run] [--set KEY=VALUE ...] [--address auto] [--fresh]
    sweeper validate sweeps/demo.yaml
    sweeper leaderboard demo [--top 10] [--format table|markdown|csv|json]
    sweeper eval --task detection --gt GT.json --pred PRED.json [--format table|json]
    sweeper data synth --task detection --out DIR [--images N --size S --seed K]

User mistakes print one message and exit 2 (`--debug` shows the traceback). Heavy libraries
are imported inside the commands that need them, so `--help`, `validate` and `--dry-run` are fast.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from sweeper.config import Sweep, SweepConfigError, load_sweep

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Hyperparameter and ablation sweeps for detection models on Ray Tune + Optuna + MLflow.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: generate synthetic data.")
app.add_typer(data_app, name="data")
console = Console(soft_wrap=True)  # paths and commands stay on one line, copy-pastable
err_console = Console(stderr=True)
DEFAULT_TRACKING = "sqlite:///mlruns.db"
#: metrics the leaderboard table shows beside the objective (json/csv carry all of them)
KEY_METRICS = ("map", "map50", "map_small", "hmean", "train/loss")


class Fmt(str, Enum):
    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"


class EvalFmt(str, Enum):
    table = "table"
    json = "json"


_debug = False


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for user errors.")) -> None:
    global _debug
    _debug = debug


def _fail(exc: BaseException) -> None:
    if _debug:
        raise exc
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _load(path: Path, overrides: list[str], check_data: bool = True) -> Sweep:
    try:
        return load_sweep(path, overrides, check_data=check_data)
    except SweepConfigError as exc:
        _fail(exc)
        raise  # unreachable


# --------------------------------------------------------------------------- launch
def _plan_table(sweep: Sweep) -> str:
    spec = sweep.spec
    out = io.StringIO()
    c = Console(file=out, width=110, force_terminal=False)
    c.print(f"[bold]sweep[/] {sweep.name}  task={spec.task}  file={sweep.file}")
    if spec.data is not None:
        c.print(f"data: train={spec.data.train}\n      val={spec.data.val}\n      images={spec.data.images}"
                + ("  (generated on first launch if missing)" if spec.data.synth else ""))
    t = Table(title="search space", show_lines=False)
    t.add_column("key")
    t.add_column("space")
    t.add_column("base value")
    from sweeper.config import flatten

    flat = flatten(sweep.base)
    for d in sweep.dimensions:
        t.add_row(d.key, d.describe(), str(flat.get(d.key)))
    for key, values in spec.eval_grid.items():
        t.add_row(key, f"eval_grid {values} (one forward pass)", str(flat.get(key)))
    if not sweep.dimensions and not spec.eval_grid:
        t.add_row("-", "nothing searched", "-")
    c.print(t)
    fixed = Table(title="fixed (base)")
    fixed.add_column("key")
    fixed.add_column("value")
    for key, value in flat.items():
        if key not in {d.key for d in sweep.dimensions}:
            fixed.add_row(key, str(value))
    c.print(fixed)
    sched = spec.scheduler
    max_t = sweep.max_t
    trials = sweep.num_trials
    if sched.name == "asha":
        rungs, r = [], sched.grace_period
        while r < max_t:
            rungs.append(r)
            r = int(round(r * sched.reduction_factor))
        plan = (f"ASHA on `epoch`: rungs at epochs {rungs or [max_t]} (keep top 1/{sched.reduction_factor:g}), "
                f"max_t {max_t}")
    else:
        plan = f"FIFO: every trial runs {max_t} epochs"
    cpus = os.cpu_count() or 1
    conc = spec.budget.max_concurrent or max(1, min(trials, int(cpus // spec.resources.cpu)))
    c.print(f"search: {spec.search_alg.name}" + (f" ({spec.search_alg.sampler})" if spec.search_alg.name == "optuna" else "")
            + f", seed {spec.search_alg.seed}; objective: {spec.objective.mode} {spec.objective.metric}")
    c.print(f"scheduler: {plan}")
    c.print(f"budget: {trials} trials, at most {trials * max_t} trial-epochs"
            + (f" (ASHA stops most trials at {sched.grace_period} epochs)" if sched.name == "asha" else "")
            + f"; {conc} at once (local machine: {cpus} CPUs), {spec.budget.max_failures} retries per trial")
    c.print(f"resources per trial: {spec.resources.cpu:g} CPU, {spec.resources.gpu:g} GPU")
    c.print(f"storage: {sweep.experiment_dir}\ntracking: {spec.tracking.uri}")
    if spec.command is not None:
        _print_commands(c, sweep)
    return out.getvalue()


def _print_commands(c: Console, sweep: Sweep, n: int = 3) -> None:
    """The exact command lines of the first trials (`<trial_dir>` is Ray's per-trial directory)."""
    from sweeper.config import script_params
    from sweeper.spaces import example_points
    from sweeper.tasks.command import render_command

    cmd = sweep.spec.command
    assert cmd is not None
    ckpt = f"; checkpoint dir in ${cmd.checkpoint_dir_env}" if cmd.checkpoint_dir_env else ""
    c.print(f"command: runs in {cmd.workdir}; overrides: {cmd.overrides}; metrics: {cmd.metrics}{ckpt}",
            highlight=False, markup=False)
    points = example_points(sweep.dimensions, n, grid=sweep.spec.search_alg.name == "grid",
                            seed=sweep.spec.search_alg.seed)
    for i, point in enumerate(points, 1):
        line, env = render_command(cmd.run, script_params(sweep, point), cmd.overrides, trial_dir="<trial_dir>")
        prefix = " ".join(f"{k}={v}" for k, v in {**env, **cmd.env}.items())
        c.print(f"trial {i}: {prefix + ' ' if prefix else ''}{line}", highlight=False, markup=False, soft_wrap=True)


@app.command()
def launch(
    sweep_file: Path = typer.Argument(..., help="Sweep YAML file."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: train.epochs=4 (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and plan; run nothing."),
    address: Optional[str] = typer.Option(None, "--address", help="Join a running Ray cluster ('auto' or host:port)."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over: move an existing experiment of this name aside."),
) -> None:
    """Run a sweep: Optuna proposes, ASHA stops weak trials, MLflow records every trial."""
    sweep = _load(sweep_file, set_, check_data=not dry_run)
    if dry_run:
        print(_plan_table(sweep))
        console.print("dry run: nothing was started.")
        return
    _run(sweep, sweep_file, address=address, fresh=fresh, continue_cmd=f"sweeper resume {sweep.experiment_dir}")


def _run(sweep: Sweep, sweep_file: Path, *, address: str | None, fresh: bool, continue_cmd: str) -> None:
    from sweeper import runner, tasks

    try:
        tasks.prepare_data(sweep)
        sweep = load_sweep(sweep_file, list(sweep.overrides), cwd=sweep.cwd)  # data now exists: check it
        outcome = runner.launch(sweep, address=address, fresh=fresh, preflight=lambda: tasks.check_sweep(sweep))
    except SweepConfigError as exc:
        _fail(exc)
    console.print(f"\n[bold]{outcome.name}[/]: {outcome.finished} finished, {outcome.stopped} stopped early "
                  f"by ASHA, {outcome.failed} failed of {outcome.num_trials} trials in {outcome.wall_s:.0f} s")
    _print_board(sweep.spec.tracking.uri, sweep.name, top=10, fmt=Fmt.table)
    if outcome.interrupted:
        console.print(f"[yellow]interrupted[/]: to continue: {continue_cmd}", highlight=False)
        raise typer.Exit(130)
    console.print(f"MLflow UI: mlflow ui --backend-store-uri {sweep.spec.tracking.uri}", highlight=False)


@app.command()
def resume(
    run: str = typer.Argument(..., help="Experiment directory (runs/NAME) or sweep name under ./runs."),
    address: Optional[str] = typer.Option(None, "--address", help="Join a running Ray cluster ('auto' or host:port)."),
) -> None:
    """Continue an interrupted sweep: finished trials are kept, unfinished ones resume from
    their last checkpoint, MLflow runs continue in place."""
    from sweeper import runner

    try:
        exp_dir, state = runner.find_experiment(run)
    except LookupError as exc:
        _fail(exc)
    sweep_file = Path(state["sweep_file"])
    if not sweep_file.is_file():
        _fail(LookupError(f"{exp_dir}: the sweep file {sweep_file} it was launched from is gone"))
    try:
        sweep = load_sweep(sweep_file, state.get("overrides", []), cwd=state.get("cwd"))
    except SweepConfigError as exc:
        _fail(exc)
    if Path(sweep.experiment_dir).resolve() != exp_dir:
        _fail(LookupError(f"{exp_dir} does not match the sweep file's storage/name ({sweep.experiment_dir})"))
    _run(sweep, sweep_file, address=address, fresh=False, continue_cmd=f"sweeper resume {run}")


@app.command()
def validate(
    sweep_file: Path = typer.Argument(..., help="Sweep YAML file."),
    set_: list[str] = typer.Option([], "--set", help="Override a key (as for launch)."),
) -> None:
    """Check a sweep file (schema, search space, objective, data paths, backbone names)."""
    sweep = _load(sweep_file, set_, check_data=False)
    from sweeper import tasks

    try:
        if sweep.spec.data is None or sweep.spec.data.synth is None:
            load_sweep(sweep_file, set_)
        tasks.check_sweep(sweep)
    except SweepConfigError as exc:
        _fail(exc)
    console.print(f"{sweep.file}: ok ({sweep.num_trials} trials, {len(sweep.dimensions)} searched keys)",
                  highlight=False)


# --------------------------------------------------------------------------- leaderboard
def _fmt(value: Any) -> str:
    """Metrics with 4 decimals; params (strings in MLflow) that are floats with 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, str) and re.fullmatch(r"-?\d*\.\d{5,}(e-?\d+)?|-?\d+(\.\d+)?e-?\d+", value):
        return f"{float(value):.4g}"
    return "" if value is None else str(value)


def render_rows(rows: list[dict[str, Any]], columns: list[str], fmt: Fmt, title: str = "") -> str:
    """Rows as a rich table, markdown, CSV or JSON (the leaderboard and `sweeper eval`)."""
    if fmt == Fmt.json:
        return json.dumps(rows, indent=2, default=str)
    if fmt == Fmt.csv:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    if fmt == Fmt.markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
        return "\n".join(lines)
    out = io.StringIO()
    t = Table(title=title)
    for col in columns:
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(*(_fmt(r.get(c)) for c in columns))
    Console(file=out, width=160).print(t)
    return out.getvalue()


def _print_board(uri: str, name: str, top: int | None, fmt: Fmt, all_launches: bool = False) -> None:
    from sweeper import tracking

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        _fail(LookupError(f"no MLflow store at {uri[len('sqlite:///'):]}: run from the directory you "
                          "launched in, or pass --tracking-uri"))
    try:
        board = tracking.leaderboard(uri, name, top=top, all_launches=all_launches)
    except LookupError as exc:
        _fail(exc)
    rows = board["rows"]
    fixed = ["trial", "status", "epoch", board["objective"], *board["searched"]]
    present = set(k for r in rows for k in r)
    extra = [k for k in KEY_METRICS if k in present and k not in fixed]
    extra += sorted(k for k in present if k.startswith("best/") and k not in fixed)
    columns = fixed + extra + ["error"]
    if fmt == Fmt.csv:  # for scripts: every metric
        columns = fixed + sorted(present - set(fixed) - {"error", "run_id"}) + ["error", "run_id"]
    if fmt == Fmt.json:
        print(json.dumps(board, indent=2, default=str))
        return
    title = f"{name}: best {board['mode']} {board['objective']} first"
    print(render_rows(rows, columns, fmt, title))


@app.command()
def leaderboard(
    name: str = typer.Argument(..., help="Sweep name (the MLflow experiment)."),
    top: Optional[int] = typer.Option(None, "--top", help="Show only the best N trials."),
    fmt: Fmt = typer.Option(Fmt.table, "--format", help="table, markdown, csv or json."),
    tracking_uri: str = typer.Option(DEFAULT_TRACKING, "--tracking-uri", help="MLflow store."),
    all_launches: bool = typer.Option(False, "--all", help="Include trials of earlier launches."),
) -> None:
    """Trials of a sweep from MLflow, best objective first."""
    from sweeper.config import resolve_tracking_uri

    _print_board(resolve_tracking_uri(tracking_uri, Path.cwd()), name, top, fmt, all_launches)


# --------------------------------------------------------------------------- eval, data
@app.command("eval")
def eval_(
    task: str = typer.Option("detection", "--task", help="detection (COCO) or dbnet (text polygons)."),
    gt: Path = typer.Option(..., "--gt", help="Ground truth: COCO JSON; dbnet: folder/zip of gt_<name>.txt or UFO JSON."),
    pred: Path = typer.Option(..., "--pred", help="Predictions: COCO results JSON; dbnet: folder/zip of <name>.txt or UFO JSON."),
    metric: str = typer.Option("icdar15", "--metric", help="dbnet only: icdar15, cleval or cleval_per_image."),
    fmt: EvalFmt = typer.Option(EvalFmt.table, "--format", help="table or json."),
) -> None:
    """Score a predictions file with exactly the evaluator a sweep uses."""
    if task == "detection":
        from sweeper.tasks.detection.coco_eval import CocoFormatError, evaluate_coco, load_coco_gt, load_detections

        try:
            metrics = evaluate_coco(load_coco_gt(gt), load_detections(pred))
        except CocoFormatError as exc:
            _fail(exc)
    elif task == "dbnet":
        metrics = _eval_text(gt, pred, metric)
    else:
        _fail(ValueError(f"--task: unknown task {task!r}; known: detection, dbnet"))
    if fmt == EvalFmt.json:
        print(json.dumps(metrics, indent=2))
        return
    rows = [{"metric": k, "value": v} for k, v in metrics.items()]
    print(render_rows(rows, ["metric", "value"], Fmt.table, f"{pred.name} vs {gt.name}"))


def _eval_text(gt: Path, pred: Path, metric: str) -> dict[str, float]:
    from sweeper.tasks.dbnet.hmean import TextEvalFormatError, icdar15_hmean, load_text_eval_pairs

    fns = {"icdar15": icdar15_hmean}
    if metric in ("cleval", "cleval_per_image"):
        from sweeper.tasks.dbnet import cleval

        fns = {"cleval": cleval.cleval, "cleval_per_image": cleval.cleval_per_image}
    if metric not in fns:
        _fail(ValueError(f"--metric: unknown metric {metric!r}; known: icdar15, cleval, cleval_per_image"))
    try:
        result = fns[metric](load_text_eval_pairs(gt, pred))
    except TextEvalFormatError as exc:
        _fail(exc)
    return {k: float(result[k]) for k in ("precision", "recall", "hmean")}


@data_app.command("synth")
def data_synth(
    task: str = typer.Option("detection", "--task", help="detection (COCO shapes) or dbnet (UFO receipts)."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    images: int = typer.Option(96, "--images", help="Images (train + val)."),
    size: int = typer.Option(128, "--size", help="Image side in pixels (dbnet: 256 is a good start)."),
    seed: int = typer.Option(0, "--seed", help="Generator seed (same seed, same files)."),
) -> None:
    """Write a deterministic synthetic dataset (train.json, val.json, images/)."""
    from sweeper.tasks import synthesize

    try:
        info = synthesize(task, out, images=images, size=size, seed=seed)
    except KeyError as exc:
        _fail(ValueError(f"--task: {exc.args[0]}"))
    console.print(json.dumps(info, indent=2, default=str), highlight=False)


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
