"""`sweeper` command line: thin wrappers over config, runner, tracking and the evaluators.

    sweeper launch sweeps/demo.yaml [--dry-run] [--set KEY=VALUE ...] [--address auto] [--fresh]
    sweeper validate sweeps/demo.yaml
    sweeper leaderboard demo [--top 10] [--format table|markdown|csv|json]
    sweeper eval --task detection --gt GT.json --pred PRED.json [--area-range tiny=0,16] [--backend B]
    sweeper report NAME [--out DIR]
    sweeper resume RUN_DIR_OR_NAME
    sweeper data synth --task detection --out DIR [--images N --size S --seed K]
    sweeper data stats DATASET [--thresholds 32,96] [--plot sizes.png] [--format table|json]

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

from sweeper.cluster import cluster_app
from sweeper.config import Sweep, SweepConfigError, load_sweep

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Hyperparameter and ablation sweeps for detection models on Ray Tune + Optuna + MLflow.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: generate synthetic data, analyse box sizes.")
app.add_typer(data_app, name="data")
app.add_typer(cluster_app, name="cluster", help="Run a sweep on a cluster: render (and submit) a Slurm batch "
              "script or KubeRay manifests.")
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
    err_console.print("error:", style="bold red", end=" ")
    err_console.print(str(exc), highlight=False, markup=False, soft_wrap=True)
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
    if spec.ablation is None or spec.eval_grid:
        c.print(t)
    if spec.ablation is not None:
        _print_ablation(c, sweep, flat)
    fixed = Table(title="fixed (base)")
    fixed.add_column("key")
    fixed.add_column("value")
    from sweeper.config import SECRET_NAME

    for key, value in flat.items():
        if key not in {d.key for d in sweep.dimensions}:
            fixed.add_row(key, "***" if SECRET_NAME.search(key) else str(value))
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
    if spec.ablation is not None:
        c.print(f"study: ablation, {len(sweep.variants)} variants x {len(spec.ablation.seed_values)} seeds; "
                f"objective: {_objectives(sweep)}")
    else:
        c.print(f"search: {spec.search_alg.name}" + (f" ({spec.search_alg.sampler})" if spec.search_alg.name == "optuna" else "")
                + f", seed {spec.search_alg.seed}; objective: {_objectives(sweep)}")
    c.print(f"scheduler: {plan}")
    c.print(f"budget: {trials} trials, at most {trials * max_t} trial-epochs"
            + (f" (ASHA stops most trials at {sched.grace_period} epochs)" if sched.name == "asha" else "")
            + f"; {conc} at once (local machine: {cpus} CPUs), {spec.budget.max_failures} retries per trial")
    c.print(f"resources per trial: {spec.resources.cpu:g} CPU, {spec.resources.gpu:g} GPU")
    c.print(f"storage: {sweep.experiment_dir}\ntracking: {spec.tracking.uri}")
    if spec.command is not None:
        _print_commands(c, sweep)
    return out.getvalue()


def _objectives(sweep: Sweep) -> str:
    text = ", ".join(f"{o.mode} {o.metric}" for o in sweep.objectives or [sweep.spec.objective])
    return text + (" (multi-objective: Pareto front; ASHA and the leaderboard order use the first)"
                   if len(sweep.objectives) > 1 else "")


def _print_ablation(c: Console, sweep: Sweep, flat: dict[str, Any]) -> None:
    """Variant x changed keys x seeds: what differs from the baseline, and nothing else."""
    abl = sweep.spec.ablation
    assert abl is not None
    seeds = ", ".join(str(s) for s in abl.seed_values)
    t = Table(title=f"ablation plan ({'full factorial' if abl.full_factorial else 'one factor at a time'}; "
                    f"seeds set {sweep.seed_key})")
    t.add_column("variant")
    t.add_column("changed keys (baseline value -> variant value)")
    t.add_column("seeds")
    for name, changes in sweep.variants:
        changed = "; ".join(f"{k}: {flat.get(k)} -> {v}" for k, v in changes.items()) or "none (the baseline)"
        t.add_row(name, changed, seeds)
    c.print(t)


def _print_commands(c: Console, sweep: Sweep, n: int = 3) -> None:
    """The exact command lines of the first trials (`<trial_dir>` is Ray's per-trial directory)."""
    from sweeper.config import redact, script_params
    from sweeper.spaces import example_points
    from sweeper.tasks.command import render_command

    cmd = sweep.spec.command
    assert cmd is not None
    ckpt = f"; checkpoint dir in ${cmd.checkpoint_dir_env}" if cmd.checkpoint_dir_env else ""
    c.print(f"command: runs in {cmd.workdir}; overrides: {cmd.overrides}; metrics: {cmd.metrics}{ckpt}",
            highlight=False, markup=False, soft_wrap=True)
    if sweep.spec.ablation is not None:
        points = [p["params"] for p in sweep.ablation_points[:n]]
    else:
        points = example_points(sweep.dimensions, n, grid=sweep.spec.search_alg.name == "grid",
                                seed=sweep.spec.search_alg.seed)
    for i, point in enumerate(points, 1):
        line, env = render_command(cmd.run, script_params(sweep, point), cmd.overrides, trial_dir="<trial_dir>")
        prefix = " ".join(f"{k}={v}" for k, v in redact({**env, **cmd.env}).items())
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
    from shlex import quote

    from sweeper.runner import experiment_path  # a URI keeps its ?query at the end; quoted for the shell

    _run(sweep, sweep_file, address=address, fresh=fresh,
         continue_cmd=f"sweeper resume {quote(experiment_path(sweep))}")


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
    if outcome.failure_budget_hit:
        err_console.print(f"[bold red]stopped[/]: {outcome.failed} trials failed, more than "
                          f"budget.max_failed_trials ({sweep.spec.budget.max_failed_trials}); the errors are in the "
                          "leaderboard above and in each trial's MLflow run (error.txt). Fix the cause and "
                          f"start again: sweeper launch {sweep_file} --fresh", highlight=False)
        raise typer.Exit(1)
    if outcome.interrupted:
        console.print(f"[yellow]interrupted[/]: to continue: {continue_cmd}", highlight=False)
        raise typer.Exit(130)
    console.print(f"MLflow UI: mlflow ui --backend-store-uri {sweep.spec.tracking.uri}", highlight=False)


@app.command()
def resume(
    run: str = typer.Argument(..., help="Experiment directory (runs/NAME), sweep name under ./runs, "
                              "or the experiment URI (s3://bucket/prefix/NAME)."),
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
    if runner.experiment_path(sweep) != exp_dir:
        _fail(LookupError(f"{exp_dir} does not match the sweep file's storage/name ({runner.experiment_path(sweep)})"))
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
    what = (f"{len(sweep.variants)} variants x {len(sweep.spec.ablation.seed_values)} seeds" if sweep.spec.ablation
            else f"{len(sweep.dimensions)} searched keys")
    console.print(f"{sweep.file}: ok ({sweep.num_trials} trials, {what})", highlight=False)


# --------------------------------------------------------------------------- leaderboard
def _fmt(value: Any) -> str:
    """Metrics with 4 decimals; params (strings in MLflow) that are floats with 4 significant digits
    (Python writes exponents with a sign, so a trial id like `2361e036` stays as it is)."""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, str) and re.fullmatch(r"-?\d*\.\d{5,}(e[-+]\d+)?|-?\d+(\.\d+)?e[-+]\d+", value):
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


def group_rows(board: dict[str, Any], key: str) -> tuple[list[dict[str, Any]], list[str], str]:
    """Leaderboard rows grouped by `key` (`variant`, or a searched key): mean ± 95% CI of the
    objective at each trial's last epoch over finished trials; for an ablation's variants also
    the difference to the baseline, its p (paired t by seed, else Welch; Holm-corrected)."""
    from sweeper import stats

    objective, mode = board["objective"], board["mode"]
    done = [r for r in board["rows"] if r["status"] == "finished" and r.get("final") is not None]
    if key == "variant" and board.get("ablation"):
        groups: dict[str, dict[int, float]] = {}
        for r in done:
            groups.setdefault(r["variant"], {})[int(r["seed"])] = r["final"]
        if "baseline" not in groups:
            raise LookupError("no finished baseline trial yet: nothing to compare the variants with")
        out = []
        for row in stats.ablation_table(groups, "baseline", mode):
            half = (row["ci_high"] - row["ci_low"]) / 2 if row["n"] > 1 else float("nan")
            out.append({"variant": row["variant"], "n": row["n"], f"{objective} mean": row["mean"],
                        "± 95% CI": half, "Δ vs baseline": row["diff"] if row["variant"] != "baseline" else None,
                        "p (Holm)": row["p_holm"], "test": row["test"],
                        "significant": ("yes" if row["significant"] else "no") if row["variant"] != "baseline" else ""})
        return out, list(out[0]), f"{board['name']}: {objective} at the last epoch, per variant"
    if not any(key in r for r in board["rows"]):
        raise LookupError(f"--group {key}: trials have no {key!r}; group by variant (ablations) or one of "
                          f"{', '.join(board['searched']) or 'the searched keys'}")
    values: dict[Any, list[float]] = {}
    for r in done:
        values.setdefault(r.get(key), []).append(r["final"])
    out = []
    for value, finals in values.items():
        s = stats.summarize(finals)
        out.append({key: value, "n": s.n, f"{objective} mean": s.mean, "± 95% CI": (s.ci_high - s.ci_low) / 2})
    out.sort(key=lambda r: r[f"{objective} mean"], reverse=mode == "max")
    return out, [key, "n", f"{objective} mean", "± 95% CI"], f"{board['name']}: {objective} at the last epoch, per {key}"


def _print_board(uri: str, name: str, top: int | None, fmt: Fmt, all_launches: bool = False,
                 group: str | None = None) -> None:
    from sweeper import tracking

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        _fail(LookupError(f"no MLflow store at {uri[len('sqlite:///'):]}: run from the directory you "
                          "launched in, or pass --tracking-uri"))
    try:
        board = tracking.leaderboard(uri, name, top=top, all_launches=all_launches)
    except LookupError as exc:
        _fail(exc)
    if group:
        try:
            grouped, columns, title = group_rows(board, group)
        except LookupError as exc:
            _fail(exc)
        if fmt == Fmt.json:
            print(json.dumps({"name": name, "objective": board["objective"], "group": group, "rows": grouped},
                             indent=2, default=str))
        else:
            print(render_rows(grouped, columns, fmt, title))
        return
    rows = board["rows"]
    tags = ["variant", "seed"] if board.get("ablation") else []
    fixed = ["trial", "status", *tags, "epoch", board["objective"], *board.get("secondary", []), *board["searched"]]
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
    group: Optional[str] = typer.Option(None, "--group", help="variant (ablations) or a searched key: "
                                        "mean ± 95% CI per group, with tests against the baseline."),
) -> None:
    """Trials of a sweep from MLflow, best objective first (or grouped: --group variant)."""
    from sweeper.config import resolve_tracking_uri

    _print_board(resolve_tracking_uri(tracking_uri, Path.cwd()), name, top, fmt, all_launches, group)


@app.command()
def report(
    name: str = typer.Argument(..., help="Sweep name (the MLflow experiment)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default reports/NAME)."),
    tracking_uri: str = typer.Option(DEFAULT_TRACKING, "--tracking-uri", help="MLflow store."),
) -> None:
    """Write reports/NAME/report.md and report.html (ablation table with CIs and tests, curves,
    importances, Pareto front) and log them to the sweep's parent MLflow run."""
    from sweeper import tracking
    from sweeper.config import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri, Path.cwd())
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        _fail(LookupError(f"no MLflow store at {uri[len('sqlite:///'):]}: run from the directory you "
                          "launched in, or pass --tracking-uri"))
    out_dir = out or Path("reports") / name
    progress = lambda msg: err_console.print(f"[dim]{msg} ...[/]", highlight=False)  # noqa: E731
    try:
        data = tracking.report_data(uri, name, progress)
    except LookupError as exc:
        _fail(exc)
    from sweeper.reporting import write_report

    paths = write_report(data, out_dir, progress)
    tracking.log_report(uri, data["parent_run_id"], out_dir)
    console.print(f"wrote {paths['markdown']} and {paths['html']} ({len(paths['figures'])} figures); "
                  f"also logged to MLflow run {data['parent_run_id']} under report/", highlight=False)


# --------------------------------------------------------------------------- eval, data
@app.command("eval")
def eval_(
    task: str = typer.Option("detection", "--task", help="detection (COCO) or dbnet (text polygons)."),
    gt: Path = typer.Option(..., "--gt", help="Ground truth: COCO JSON; dbnet: folder/zip of gt_<name>.txt or UFO JSON."),
    pred: Path = typer.Option(..., "--pred", help="Predictions: COCO results JSON; dbnet: folder/zip of <name>.txt or UFO JSON."),
    metric: str = typer.Option("icdar15", "--metric", help="dbnet only: icdar15, cleval or cleval_per_image."),
    backend: str = typer.Option("faster_coco_eval", "--backend",
                                help="detection only: faster_coco_eval or pycocotools (same numbers)."),
    area_range: list[str] = typer.Option([], "--area-range", help="detection only: NAME=LO,HI in sqrt-area px "
                                         "(repeatable), reported as map_NAME / ar_NAME."),
    fmt: EvalFmt = typer.Option(EvalFmt.table, "--format", help="table or json."),
) -> None:
    """Score a predictions file with exactly the evaluator a sweep uses."""
    if task == "detection":
        from sweeper.tasks.detection.coco_eval import CocoFormatError, evaluate_coco, load_coco_gt, load_detections

        ranges = {}
        for text in area_range:
            name, _, bounds = text.partition("=")
            try:
                lo, hi = (float(v) for v in bounds.split(","))
            except ValueError:
                _fail(ValueError(f"--area-range: expected NAME=LO,HI (e.g. tiny=0,16), got {text!r}"))
            ranges[name.strip()] = (lo, hi)
        try:
            metrics = evaluate_coco(load_coco_gt(gt), load_detections(pred), area_ranges=ranges or None,
                                    backend=backend)
        except (CocoFormatError, ValueError) as exc:
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


@data_app.command("stats")
def data_stats(
    dataset: Path = typer.Argument(..., help="COCO annotation JSON, or a sweep file (uses its data.train)."),
    thresholds: str = typer.Option("32,96", "--thresholds", help="Size buckets, sqrt-area px (32,96 = COCO's)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also save the size histogram as this PNG."),
    fmt: EvalFmt = typer.Option(EvalFmt.table, "--format", help="table or json."),
) -> None:
    """Box sizes of a COCO dataset: histogram, counts per class and size, images without boxes.

    Choose eval.area_ranges (sqrt-area px) from what it shows."""
    from sweeper.tasks.detection import datastats

    if dataset.suffix in (".yaml", ".yml"):
        spec = _load(dataset, [], check_data=False).spec
        if spec.data is None or spec.data.train is None:
            _fail(ValueError(f"{dataset}: the sweep has no data.train to analyse"))
        dataset = Path(spec.data.train)
    try:
        stats = datastats.dataset_stats(dataset, datastats.parse_thresholds(thresholds))
        path = datastats.plot_histogram(stats, plot) if plot else None
    except ValueError as exc:  # CocoFormatError included
        _fail(exc)
    print(json.dumps(stats, indent=2) if fmt == EvalFmt.json else datastats.render_stats(stats))
    if path:
        err_console.print(f"histogram: {path}", highlight=False)


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
