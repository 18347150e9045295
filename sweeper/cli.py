"""`sweeper` command line: thin wrappers over config, runner, tracking and the evaluators.

    sweeper launch sweeps/demo.yaml [--dry-run] [--set KEY=VALUE ...] [--address auto] [--fresh]
    sweeper validate sweeps/demo.yaml
    sweeper leaderboard demo [--top 10] [--format table|markdown|csv|json]
    sweeper eval --task detection --gt GT.json --pred PRED.json [--area-range tiny=0,16] [--backend B]
    sweeper tasks
    sweeper report NAME [--out DIR]
    sweeper diagnose NAME [--format table|json] [--workers 2]
    sweeper ui [NAME] [--port 5000] [--open]
    sweeper resume RUN_DIR_OR_NAME
    sweeper confirm NAME [--top 3] [--seeds 3] [--dry-run] [--address auto] [--fresh]
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
from sweeper.config import Sweep, SweepConfigError, check_paths, load_sweep, redact_uri
from sweeper.registry import TASKS

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Hyperparameter and ablation sweeps for detection models on Ray Tune + Optuna + MLflow.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: generate synthetic data, analyse box sizes.")
app.add_typer(data_app, name="data")
app.add_typer(cluster_app, name="cluster", help="Run a sweep on a cluster: render (and submit) a Slurm batch "
              "script or KubeRay manifests.")
console = Console(soft_wrap=True)  # paths and commands stay on one line, copy-pastable
err_console = Console(stderr=True)
DEFAULT_TRACKING = "sqlite:///mlruns.db"
DEFAULT_TASK = next(iter(TASKS))  # `--task` of eval and data synth: the first built-in task


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
    from sweeper.config.secret_keys import public_sweep

    sweep = public_sweep(sweep)  # printed: secret values as ***, a searched secret's as secret-1, secret-2, ...
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
        t.add_row(d.key, d.describe(), str(sweep.baseline_value(d.key)))
    for key, values in spec.eval_grid.items():
        t.add_row(key, f"eval_grid {values} (one forward pass)", str(flat.get(key)))
    if not sweep.dimensions and not spec.eval_grid:
        t.add_row("-", "nothing searched", "-")
    if spec.ablation is None or spec.eval_grid:
        c.print(t)
    if spec.ablation is not None:
        _print_ablation(c, sweep)
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
    unit = spec.command.time_unit if spec.command is not None else "epoch"  # what ASHA and max_t count
    from sweeper.config import time_budget

    if sched.name == "asha" and sched.time_attr == "time_total_s":
        plan = time_budget.scheduler_plan(spec)
    elif sched.name == "asha" and unit == "step":
        # a script on steps reports every so many steps: a rung judges its first report at or after it
        marks, k = [], 0
        while (mark := sched.grace_period * sched.reduction_factor ** k) < max_t:
            marks.append(f"{mark:g}")
            k += 1
        plan = (f"ASHA on `step`: rungs at steps [{', '.join(marks)}], each judging a trial's first report at or "
                f"after it (keep top 1/{sched.reduction_factor:g}), max_t {max_t} steps")
    elif sched.name == "asha" and sched.promote:
        from sweeper.rungs import promotion_rungs

        rungs = promotion_rungs(sched.grace_period, sched.reduction_factor, max_t)
        plan = (f"ASHA (promotion) on `epoch`: a trial pauses at epochs {rungs or [max_t]} (checkpointed, its worker "
                f"freed) and resumes when in the top 1/{sched.reduction_factor:g} of that rung; new trials start "
                f"only when none is promotable; max_t {max_t}")
    elif sched.name == "asha":
        from sweeper.rungs import asha_rungs

        rungs = asha_rungs(sched.grace_period, sched.reduction_factor, max_t)
        plan = (f"ASHA on `epoch`: rungs at epochs {rungs or [max_t]} (keep top 1/{sched.reduction_factor:g}), "
                f"max_t {max_t}")
    elif spec.command is not None and not (sched.max_t or spec.command.epochs):
        plan = "FIFO: every trial runs until its script ends"
    else:
        plan = f"FIFO: every trial runs {max_t} {unit}s"
    cpus = os.cpu_count() or 1
    conc = spec.budget.max_concurrent or max(1, min(trials, int(cpus // spec.resources.cpu)))
    if spec.ablation is not None:
        c.print(f"study: ablation, {len(sweep.variants)} variants x {len(spec.ablation.seed_values)} seeds; "
                f"objective: {_objectives(sweep)}")
    else:
        c.print(f"search: {spec.search_alg.name}" + (f" ({spec.search_alg.sampler})" if spec.search_alg.name == "optuna" else "")
                + f", seed {spec.search_alg.seed}; objective: {_objectives(sweep)}")
        from sweeper.warm_start import plan_lines

        try:
            for line in plan_lines(sweep):  # start points, imported trials, constraints
                c.print(line, highlight=False, markup=False, soft_wrap=True)
        except SweepConfigError as exc:
            _fail(exc)
    c.print(f"scheduler: {plan}")
    raw_sched = sweep.raw.get("scheduler") if isinstance(sweep.raw.get("scheduler"), dict) else {}
    if sched.name == "asha" and raw_sched.get("grace_period", "auto") == "auto":
        from sweeper.config.grace import explain_auto

        c.print(f"grace period: auto = {explain_auto(sweep)}", highlight=False, markup=False)
    es = spec.early_stopping
    if es is not None:
        c.print(f"early stopping: a trial ends after {es.patience} evaluations in a row that do not improve its "
                f"best {spec.objective.metric} by more than {es.min_delta:g} ({spec.objective.mode}); recorded as "
                "finished (stop_reason patience, Optuna COMPLETE with its best), its best checkpoint kept"
                + (", with ASHA stopping weak trials first" if sched.name == "asha" else ""))
    else:
        c.print("early stopping: none (early_stopping: {patience: N} ends trials that stop improving)")
    c.print(f"budget: {trials} trials, at most {trials * max_t} trial-{unit}s"
            + (f" (ASHA stops most trials at {sched.grace_period} {unit}s)"
               if sched.name == "asha" and sched.time_attr == "epoch" else "")
            + f"; {conc} at once (local machine: {cpus} CPUs), {spec.budget.max_failures} retries per trial")
    import time

    for line in time_budget.plan_lines(spec, time.time()):  # budget.time_limit, budget.trial_time_limit
        c.print(line, highlight=False, markup=False)
    c.print(f"resources per trial: {spec.resources.cpu:g} CPU, {spec.resources.gpu:g} GPU")
    c.print(f"storage: {redact_uri(sweep.experiment_dir)}\ntracking: {redact_uri(spec.tracking.uri)}")
    if _optuna_hint(sweep):
        c.print(f"optuna study: {sweep.name} in {redact_uri(spec.search_alg.storage or '')}")
    if spec.notify is not None:  # the webhook's path is its secret: never printed
        from sweeper.config import redact_webhook

        c.print(f"notify: {redact_webhook(spec.notify.webhook)} on {', '.join(spec.notify.on)}",
                highlight=False, markup=False)
    if spec.command is not None:
        keys = [spec.command.time_key] if isinstance(spec.command.time_key, str) else spec.command.time_key
        c.print(f"time: {unit}s (command.time_key), read from each record's {' or '.join(f'`{k}`' for k in keys)}",
                highlight=False, markup=False)
        _print_commands(c, sweep)
    return out.getvalue()


def _objectives(sweep: Sweep) -> str:
    text = ", ".join(f"{o.mode} {o.metric}" for o in sweep.objectives or [sweep.spec.objective])
    return text + (" (multi-objective: Pareto front; ASHA and the leaderboard order use the first)"
                   if len(sweep.objectives) > 1 else "")


def _print_ablation(c: Console, sweep: Sweep) -> None:
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
        changed = "; ".join(f"{k}: {sweep.baseline_value(k)} -> {v}" for k, v in changes.items()) or "none (the baseline)"
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
        from sweeper.config.secret_keys import is_alias

        shown = {k: v if is_alias(v) else redact({k: v})[k] for k, v in script_params(sweep, point).items()}
        line, env = render_command(cmd.run, shown, cmd.overrides, trial_dir="<trial_dir>")
        prefix = " ".join(f"{k}={v}" for k, v in redact({**env, **cmd.env}).items())
        c.print(f"trial {i}: {prefix + ' ' if prefix else ''}{line}", highlight=False, markup=False, soft_wrap=True)


@app.command()
def launch(
    sweep_file: Path = typer.Argument(..., help="Sweep YAML file."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: train.epochs=4 (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and plan; run nothing."),
    address: Optional[str] = typer.Option(None, "--address", help="Join a running Ray cluster ('auto' or host:port)."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over: move an existing experiment of this name aside."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Also show Ray's own trial tables "
                                "(-vv: every result); by default a compact live view, or one line per trial "
                                "event when the output is not a terminal."),
) -> None:
    """Run a sweep: Optuna proposes, ASHA stops weak trials, MLflow records every trial."""
    sweep = _load(sweep_file, set_, check_data=False)  # paths are checked once data exists (_run)
    if dry_run:
        print(_plan_table(sweep))
        console.print("dry run: nothing was started.")
        return
    from shlex import quote  # a URI keeps its ?query at the end; quoted for the shell

    _run(sweep, sweep_file, address=address, fresh=fresh, verbose=verbose,
         continue_cmd=f"sweeper resume {quote(redact_uri(sweep.experiment_dir))}")


def _run(sweep: Sweep, sweep_file: Path, *, address: str | None, fresh: bool, continue_cmd: str,
         verbose: int = 0) -> None:
    from sweeper import runner, tasks, warm_start
    from sweeper.checkpoints import resolve_checkpoint_refs

    try:
        tasks.prepare_data(sweep)
        check_paths(sweep)  # the data now exists (generated if the sweep asks): check it
        sweep = resolve_checkpoint_refs(sweep)  # `NAME:best` -> the checkpoint file, before any trial
        _check_tracking(sweep)
        warm_start.load(sweep)  # `search.warm_start` names sweeps the store holds, sharing keys: before any trial
        outcome = runner.launch(sweep, address=address, fresh=fresh, verbose=verbose,
                                preflight=lambda: tasks.check_sweep(sweep))
    except SweepConfigError as exc:
        _fail(exc)
    console.print(f"\n[bold]{outcome.name}[/]: {outcome.finished} finished, {outcome.stopped} stopped early "
                  f"by ASHA, {outcome.failed} failed of {outcome.num_trials} trials in {outcome.wall_s:.0f} s")
    if outcome.board is not None:
        _show_board(outcome.board, top=10, fmt=Fmt.table)
    if outcome.failure_budget_hit:
        err_console.print(f"[bold red]stopped[/]: {outcome.failed} trials failed, more than "
                          f"budget.max_failed_trials ({sweep.spec.budget.max_failed_trials}); the errors are in the "
                          "leaderboard above and in each trial's MLflow run (error.txt). Fix the cause and "
                          f"start again: sweeper launch {sweep_file} --fresh", highlight=False)
        raise typer.Exit(1)
    if outcome.time_limit_reached:  # a planned end, not a failure: exit 0
        from sweeper.durations import format_duration

        limit = format_duration(sweep.spec.budget.time_limit or 0)
        console.print(f"[yellow]time limit reached[/] (budget.time_limit {limit}): running trials checkpointed their "
                      f"last epoch and stopped; nothing failed. To continue them (another {limit}): {continue_cmd}",
                      highlight=False)
        return
    if outcome.interrupted:
        console.print(f"[yellow]interrupted[/]: to continue: {continue_cmd}", highlight=False)
        raise typer.Exit(130)
    console.print(_ui_hint(outcome.name, sweep.spec.tracking.uri), highlight=False)
    if hint := _optuna_hint(sweep):
        console.print(hint, highlight=False)


def _check_tracking(sweep: Sweep) -> None:
    """A tracking server that does not answer is a user error now, not minutes of retries later."""
    from sweeper.store import unreachable

    problem = unreachable(sweep.spec.tracking.uri)
    if problem:
        raise SweepConfigError(sweep.file, "tracking.uri", problem)


@app.command()
def resume(
    run: str = typer.Argument(..., help="Experiment directory (runs/NAME), sweep name under ./runs, "
                              "or the experiment URI (s3://bucket/prefix/NAME)."),
    address: Optional[str] = typer.Option(None, "--address", help="Join a running Ray cluster ('auto' or host:port)."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Also show Ray's own trial tables "
                                "(-vv: every result)."),
    set_: list[str] = typer.Option([], "--set", help="A secret the launch set with --set, given again: "
                                   "auth_token=VALUE (its value is not stored with the experiment)."),
) -> None:
    """Continue an interrupted sweep: finished trials are kept, unfinished ones resume from
    their last checkpoint, MLflow runs continue in place."""
    from sweeper import runner

    try:
        exp_dir, state = runner.find_experiment(run)
    except (LookupError, SweepConfigError) as exc:
        _fail(exc)
    sweep_file = Path(state["sweep_file"])
    if not sweep_file.is_file():
        _fail(LookupError(f"{redact_uri(exp_dir)}: the sweep file {sweep_file} it was launched from is gone"))
    try:
        from sweeper.config.secret_keys import restore_overrides

        overrides = restore_overrides(list(state.get("overrides", [])), set_, f"{redact_uri(exp_dir)}/{runner.STATE_FILE}",
                                      f"sweeper resume {run}")
        sweep = load_sweep(sweep_file, overrides, cwd=state.get("cwd"), check_data=False)
    except SweepConfigError as exc:
        _fail(exc)
    if sweep.experiment_dir != exp_dir:
        _fail(LookupError(f"{redact_uri(exp_dir)} does not match the sweep file's storage/name "
                          f"({redact_uri(sweep.experiment_dir)})"))
    _run(sweep, sweep_file, address=address, fresh=False, continue_cmd=f"sweeper resume {redact_uri(run)}", verbose=verbose)


@app.command()
def confirm(
    name: str = typer.Argument(..., help="The search to confirm (its sweep name)."),
    top: int = typer.Option(3, "--top", help="Re-run the K best configurations (finished trials, best first)."),
    seeds: int = typer.Option(3, "--seeds", help="Seeds per configuration (0..N-1, the task's seed key); at least 2."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the configurations and the plan; run nothing."),
    address: Optional[str] = typer.Option(None, "--address", help="Join a running Ray cluster ('auto' or host:port)."),
    fresh: bool = typer.Option(False, "--fresh", help="Start the confirmation over (moves NAME-confirm aside)."),
    tracking_uri: str = typer.Option(DEFAULT_TRACKING, "--tracking-uri", help="MLflow store to look NAME up in "
                                     "when runs/NAME is not in this directory."),
) -> None:
    """Re-run a search's K best configurations with N seeds each (FIFO, full epochs, same data) as
    the sweep NAME-confirm; print mean ± 95% CI per configuration, the paired test of each against
    the winner and whether the winner is distinguishable (Holm-adjusted)."""
    from sweeper import confirm as confirming
    from sweeper.config import resolve_tracking_uri

    try:
        plan = confirming.plan(name, top, seeds, resolve_tracking_uri(tracking_uri, Path.cwd()))
    except SweepConfigError as exc:
        _fail(exc)
    _print_candidates(plan)
    if dry_run:
        print(_plan_table(plan.sweep))
        console.print(f"dry run: nothing was started ({plan.file} holds the confirm sweep).", highlight=False)
        return
    try:
        _run(plan.sweep, plan.file, address=address, fresh=fresh,
             continue_cmd=f"sweeper confirm {name} --top {top} --seeds {seeds}")
    finally:
        try:
            confirming.record(plan)  # tags and confirm.json, also after an interruption
        except Exception as exc:  # noqa: BLE001 - the trials ran; a failed tag must not hide that
            err_console.print(f"warning: could not tag the confirm runs in MLflow: {exc}", highlight=False)
    _print_confirm(plan, confirming.results(plan))


def _print_candidates(plan: Any) -> None:
    """The configurations a confirm launch re-runs, as the search ranked them."""
    objective = plan.board["objective"]
    rows = [{"rank": c.rank, "variant": c.variant, "trial": c.trial, f"search {objective}": c.value, **c.params}
            for c in plan.candidates]
    columns = ["rank", "variant", "trial", f"search {objective}", *plan.candidates[0].params]
    console.print(f"{plan.name}: the {len(rows)} best finished configurations, each re-run with {plan.seeds} seeds "
                  f"as {plan.sweep.name}", highlight=False)
    print(render_rows(rows, columns, Fmt.table))


def _print_confirm(plan: Any, rows: list[dict[str, Any]]) -> None:
    """Mean ± 95% CI per configuration, each against the winner (paired t by seed, Holm), the verdict."""
    from sweeper.confirmed import ALPHA, distinguishable, half_width

    objective = plan.board["objective"]
    console.print(f"\n[bold]{plan.name}[/]: {objective} at the last epoch over seeds, winner first "
                  f"(paired t-test by seed against the winner, Holm-adjusted over {max(len(rows) - 1, 0)} "
                  f"comparisons, alpha {ALPHA:g})", highlight=False)
    for r in rows:
        head = f"rank {r['rank']} (trial {r['trial']}, {r['variant']}): "
        if r["n"] == 0:
            console.print(head + "no finished seed", highlight=False)
            continue
        half = half_width(r)
        line = head + f"{objective} {r['mean']:.4f}" + (f" ± {half:.4f}" if half is not None else "") + \
            f" (95% CI, n={r['n']} seeds)"
        if r.get("winner"):
            line += ", winner"
        elif r.get("p") is not None:
            ci = (f" [{r['diff_ci_low']:+.4f}, {r['diff_ci_high']:+.4f}]"
                  if r["diff_ci_low"] is not None and r["diff_ci_high"] is not None else "")
            line += (f"; vs winner {r['diff']:+.4f}{ci}, {r['test'] or 'no test'} p={_fmt(r['p'])} "
                     f"p_holm={_fmt(r['p_holm'])}: {'worse' if r['significant'] else 'not distinguishable'}")
        console.print(line, highlight=False)
    verdict = distinguishable(rows)
    winner = rows[0] if rows and rows[0]["n"] else None
    if verdict is None:
        console.print("verdict: cannot tell yet (needs two configurations with finished seeds)", highlight=False)
    elif verdict:
        console.print(f"verdict: rank {winner['rank']} (trial {winner['trial']}) is distinguishably the best: every "
                      f"other configuration is worse, Holm-adjusted p < {ALPHA:g}", highlight=False)
    else:
        tied = ", ".join(str(r["rank"]) for r in rows[1:] if r["n"] and not r["significant"])
        console.print(f"verdict: rank {winner['rank']} (trial {winner['trial']}) is not distinguishable from rank "
                      f"{tied} at alpha {ALPHA:g} after Holm: more seeds, or treat them as equals", highlight=False)
    console.print(f"leaderboard: sweeper leaderboard {plan.name} (confirmed configurations first); report: "
                  f"sweeper report {plan.sweep.name}", highlight=False)


@app.command()
def validate(
    sweep_file: Path = typer.Argument(..., help="Sweep YAML file."),
    set_: list[str] = typer.Option([], "--set", help="Override a key (as for launch)."),
) -> None:
    """Check a sweep file (schema, search space, objective, data paths, backbone names)."""
    sweep = _load(sweep_file, set_, check_data=False)
    from sweeper import tasks
    from sweeper.checkpoints import resolve_checkpoint_refs

    try:
        check_paths(sweep)  # a dataset `data.synth` generates on first launch may not exist yet
        tasks.check_sweep(sweep)
        resolve_checkpoint_refs(sweep)  # `NAME:best`: that sweep exists, ran this task, has a checkpoint
        _check_tracking(sweep)
        from sweeper.warm_start import load as warm_start_trials

        warm_start_trials(sweep)  # `search.warm_start`: those sweeps exist and share searched keys
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


def _read_board(uri: str, name: str, top: int | None = None, all_launches: bool = False) -> dict[str, Any]:
    from sweeper import store

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        _fail(LookupError(f"no MLflow store at {uri[len('sqlite:///'):]}: run from the directory you "
                          "launched in, or pass --tracking-uri"))
    try:
        return store.leaderboard(uri, name, top=top, all_launches=all_launches)
    except LookupError as exc:
        _fail(exc)
        raise  # unreachable


def _show_board(board: dict[str, Any], top: int | None, fmt: Fmt, group: str | None = None) -> None:
    """Print a leaderboard (rows best first), or its rows grouped by `group` with statistics."""
    name = board["name"]
    if group:
        from sweeper.reporting import group_rows

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
    rows = board["rows"][:top] if top else board["rows"]
    tags = ["variant", "seed"] if board.get("ablation") else []
    from sweeper.confirmed import COLUMNS as CONFIRMED  # `sweeper confirm`'s mean ± CI over seeds, when it ran

    confirmed = list(CONFIRMED) if board.get("confirmed") else []
    feasible = ["feasible"] if board.get("constraints") else []  # `constraints`: true / false per trial
    fixed = ["trial", "status", *feasible, *tags, "epoch", board["objective"], *confirmed, *board.get("secondary", []),
             *board["searched"]]
    present = set(k for r in rows for k in r)
    extra = [k for k in board.get("columns", []) if k in present and k not in fixed]
    extra += sorted(k for k in present if k.startswith("best/") and k not in fixed)
    extra += [k for k in ("time_total_s", "gpu_seconds") if k in present and k not in extra]  # training time
    columns = fixed + extra + ["error"]
    if fmt == Fmt.csv:  # for scripts: every metric
        columns = fixed + sorted(present - set(fixed) - {"error", "run_id"}) + ["error", "run_id"]
    if fmt == Fmt.json:
        print(json.dumps({**board, "rows": rows}, indent=2, default=str))
        return
    title = f"{name}: best {board['mode']} {board['objective']} first"
    if feasible:
        from sweeper.constraints import describe
        from sweeper.schema import Constraint

        title += f", feasible ({describe([Constraint(**c) for c in board['constraints']])}) before infeasible"
    if confirmed:
        title = (f"{name}: confirmed configurations first (mean ± 95% CI of {board['objective']} at the last epoch "
                 f"over seeds, sweeper confirm), then best {board['mode']} {board['objective']} first")
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

    board = _read_board(resolve_tracking_uri(tracking_uri, Path.cwd()), name, top, all_launches)
    _show_board(board, top, fmt, group)


@app.command()
def report(
    name: str = typer.Argument(..., help="Sweep name (the MLflow experiment)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default reports/NAME)."),
    tracking_uri: str = typer.Option(DEFAULT_TRACKING, "--tracking-uri", help="MLflow store."),
    replay: bool = typer.Option(False, "--replay", help="In \"Can early stopping be trusted?\", also replay "
                                "the curves through ASHA (as `sweeper diagnose` does; loads Ray)."),
) -> None:
    """Write reports/NAME/report.md and report.html (ablation table with CIs and tests, curves,
    importances, Pareto front, early-stopping diagnosis) and log them to the sweep's parent MLflow run."""
    from sweeper import store
    from sweeper.config import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri, Path.cwd())
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        _fail(LookupError(f"no MLflow store at {uri[len('sqlite:///'):]}: run from the directory you "
                          "launched in, or pass --tracking-uri"))
    out_dir = out or Path("reports") / name
    progress = lambda msg: err_console.print(f"[dim]{msg} ...[/]", highlight=False)  # noqa: E731
    try:
        data = store.report_data(uri, name, progress)
    except LookupError as exc:
        _fail(exc)
    from sweeper.reporting import write_report

    paths = write_report(data, out_dir, progress, replay=replay)
    store.log_report(uri, data["parent_run_id"], out_dir)
    console.print(f"wrote {paths['markdown']} and {paths['html']} ({len(paths['figures'])} figures); "
                  f"also logged to MLflow run {data['parent_run_id']} under report/", highlight=False)


@app.command()
def diagnose(
    name: str = typer.Argument(..., help="Sweep name (the MLflow experiment): a finished, pilot or partial sweep."),
    fmt: EvalFmt = typer.Option(EvalFmt.table, "--format", help="table or json."),
    tracking_uri: str = typer.Option(DEFAULT_TRACKING, "--tracking-uri", help="MLflow store."),
    workers: int = typer.Option(2, "--workers", min=1, help="Trials at a time in the replay."),
    seed: int = typer.Option(0, "--seed", help="Seeds the bootstrap and the replay's arrival orders."),
) -> None:
    """Can early stopping be trusted? Per epoch, Spearman's rho of the objective with the final one
    (bootstrap 95% CI), the epoch ranks settle, and the ASHA grace period and reduction factor it
    recommends, with the compute and regret of replaying this sweep's curves through ASHA."""
    from sweeper import diagnosis, store
    from sweeper.config import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri, Path.cwd())
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        _fail(LookupError(f"no MLflow store at {uri[len('sqlite:///'):]}: run from the directory you "
                          "launched in, or pass --tracking-uri"))
    try:
        data = store.objective_curves(uri, name)
        curves = {t["trial"] or t["run_id"]: diagnosis.curve_from_history(t["history"]) for t in data["trials"]}
        d = diagnosis.diagnose(curves, data["objective"], data["mode"], max_t=data["max_t"], workers=workers,
                               seed=seed)
    except (LookupError, diagnosis.DiagnosisError) as exc:
        _fail(exc if isinstance(exc, LookupError) else diagnosis.DiagnosisError(f"sweep {name!r}: {exc}"))
    if fmt == EvalFmt.json:
        print(json.dumps({"name": name, **d.to_dict()}, indent=2))
        return
    c = Console(soft_wrap=True)
    c.print(f"{name}: {d.trials} trials, {d.metric} ({d.mode}), reference epoch {d.reference_epoch} "
            f"({d.reference_trials} trials reached it, {d.truncated} truncated)", highlight=False)
    ranks = Table(title=f"Spearman rho of each epoch's {d.metric} with epoch {d.reference_epoch}'s")
    for col in ("epoch", "n", "rho", "95% CI", ""):
        ranks.add_column(col)
    for row in diagnosis.rank_rows(d):
        ranks.add_row(*row)
    c.print(ranks)
    if d.candidates:
        table = Table(title=f"ASHA replayed on these curves (median over {d.candidates[0].orders} arrival orders, "
                            f"{d.candidates[0].workers} workers)")
        for col in ("grace", "factor", "compute", "regret", "regret p90", ""):
            table.add_column(col)
        for row in diagnosis.candidate_rows(d):
            table.add_row(*row)
        c.print(table)
    for note in d.notes:
        c.print(f"- {note}", highlight=False, markup=False)
    c.print(diagnosis.verdict(d), highlight=False, markup=False, style="bold")


@app.command()
def ui(
    name: Optional[str] = typer.Argument(None, help="Sweep name (the MLflow experiment); default: the sweep "
                                         "launched last."),
    port: Optional[int] = typer.Option(None, "--port", help="Port to serve on (default 5000; 8080 with "
                                       "--optuna)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on; 0.0.0.0 exposes the UI "
                             "(and the store) to your network."),
    tracking_uri: str = typer.Option(DEFAULT_TRACKING, "--tracking-uri", help="MLflow store."),
    open_browser: bool = typer.Option(False, "--open", help="Open the leaderboard in a browser."),
    optuna: bool = typer.Option(False, "--optuna", help="Serve optuna-dashboard over the sweep's Optuna study "
                                "instead (trials, intermediate values, importances; live while it runs)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="With --optuna: the study's storage URL "
                                          "(default: what the launch recorded, else optuna.db beside the "
                                          "tracking store)."),
) -> None:
    """MLflow's UI over the sweep's store, opened on its leaderboard: the latest launch's trials
    best first, with the searched values, objective, status, stop reason and epoch as columns.
    With --optuna, optuna-dashboard over the sweep's Optuna study. Runs until Ctrl-C."""
    from sweeper import ui as mlflow_ui
    from sweeper.config import redact_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri, Path.cwd())
    if optuna:
        _optuna_ui(name, uri, storage, host, port or 8080, open_browser)
        return
    port = port or mlflow_ui.DEFAULT_PORT
    server = mlflow_ui.is_server(uri)  # a tracking server serves its own UI: point at it
    base = redact_uri(uri).rstrip("/") if server else mlflow_ui.server_url(host, port)
    try:
        mlflow_ui.check_store(uri)
        if not server:
            mlflow_ui.check_port(host, port)  # before anything is started or written
        target = mlflow_ui.mark(uri, name, base)
    except (LookupError, OSError) as exc:
        _fail(exc)

    def ready() -> None:
        console.print(f"MLflow UI for sweep {target.name} ({target.trials} trials of its latest launch, best "
                      f"first):\n{target.url}" + ("" if server else "\nCtrl-C to stop."), highlight=False)
        if open_browser:
            import webbrowser

            if not webbrowser.open(target.url):
                err_console.print("no browser to open here: open the URL above", highlight=False)

    if server:
        ready()
        return
    err_console.print(f"[dim]starting MLflow's UI over {redact_uri(uri)} on {base} ...[/]", highlight=False)
    try:
        code = mlflow_ui.serve(uri, host, port, on_ready=ready)
    except RuntimeError as exc:
        _fail(exc)
    if code:
        _fail(RuntimeError(f"the MLflow server exited with code {code}"))


def _optuna_ui(name: Optional[str], uri: str, storage: Optional[str], host: str, port: int,
               open_browser: bool) -> None:
    """`sweeper ui NAME --optuna`: optuna-dashboard over the sweep's study, until Ctrl-C."""
    from sweeper import optuna_ui
    from sweeper import ui as mlflow_ui
    from sweeper.config import redact_uri

    try:
        if name is None:
            mlflow_ui.check_store(uri)
            name = mlflow_ui.latest_sweep(uri)
        mlflow_ui.check_port(host, port)
        url = optuna_ui.storage_for(name, uri, storage, Path.cwd())
        board = optuna_ui.find_study(url, name, mlflow_ui.server_url(host, port))
    except (LookupError, OSError) as exc:
        _fail(exc)

    def ready() -> None:
        console.print(f"optuna-dashboard for sweep {board.name} ({board.trials} trials in "
                      f"{redact_uri(board.storage)}):\n{board.url}\nCtrl-C to stop.", highlight=False)
        if open_browser:
            import webbrowser

            if not webbrowser.open(board.url):
                err_console.print("no browser to open here: open the URL above", highlight=False)

    err_console.print(f"[dim]starting optuna-dashboard on {mlflow_ui.server_url(host, port)} ...[/]", highlight=False)
    try:
        code = optuna_ui.serve(board.storage, host, port, on_ready=ready)
    except RuntimeError as exc:
        _fail(exc)
    if code:
        _fail(RuntimeError(f"optuna-dashboard exited with code {code}"))


def _optuna_hint(sweep: Sweep) -> str:
    """The command that serves the sweep's Optuna study in optuna-dashboard ('' when it has none)."""
    from shlex import quote

    from sweeper.store import optuna_tags

    return f"Optuna dashboard: sweeper ui {quote(sweep.name)} --optuna" if optuna_tags(sweep) else ""


def _ui_hint(name: str, uri: str) -> str:
    """The end of a launch: the command that serves the sweep's leaderboard in MLflow's UI, and
    the URL it serves."""
    from sweeper import store
    from sweeper import ui as mlflow_ui
    from sweeper.config import redact_uri, resolve_tracking_uri

    server = mlflow_ui.is_server(uri)
    base = redact_uri(uri).rstrip("/") if server else mlflow_ui.server_url()
    try:
        exp = store.client(uri).get_experiment_by_name(name)
    except Exception:  # noqa: BLE001 - a hint must not fail a finished launch
        exp = None
    url = mlflow_ui.leaderboard_url(base, exp.experiment_id) if exp else base
    if server:
        return f"MLflow UI: {url}"
    return f"MLflow UI: {mlflow_ui.ui_command(name, uri, resolve_tracking_uri(DEFAULT_TRACKING, Path.cwd()))}" \
        f"  (serves {url})"


# --------------------------------------------------------------------------- eval, data
@app.command("eval")
def eval_(
    task: str = typer.Option(DEFAULT_TASK, "--task", help="The task whose evaluator scores the files "
                             "(`sweeper tasks` lists them and their options)."),
    gt: Path = typer.Option(..., "--gt", help="Ground truth: COCO JSON; text: folder/zip of gt_<name>.txt or UFO JSON."),
    pred: Path = typer.Option(..., "--pred", help="Predictions: COCO results JSON; text: folder/zip of <name>.txt or UFO JSON."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Text tasks: icdar15 (default), cleval or cleval_per_image."),
    backend: Optional[str] = typer.Option(None, "--backend",
                                          help="COCO tasks: faster_coco_eval (default) or pycocotools (same numbers)."),
    area_range: list[str] = typer.Option([], "--area-range", help="COCO tasks: NAME=LO,HI in sqrt-area px "
                                         "(repeatable), reported as map_NAME / ar_NAME."),
    fmt: EvalFmt = typer.Option(EvalFmt.table, "--format", help="table or json."),
) -> None:
    """Score a predictions file with exactly the evaluator a sweep uses."""
    from sweeper.registry import get_spec

    try:
        spec = get_spec(task)
        evaluate = spec.evaluate_files()
    except LookupError as exc:
        _fail(ValueError(f"--task: {exc.args[0]}"))
    options = {"metric": metric, "backend": backend, "area_range": area_range}
    unused = [f"--{k.replace('_', '-')}" for k, v in options.items() if v and k not in spec.eval_options]
    if unused:
        _fail(ValueError(f"{', '.join(unused)}: not an option of task {task!r}'s evaluator; it takes "
                         f"{', '.join('--' + k.replace('_', '-') for k in spec.eval_options) or 'none'}"))
    try:
        metrics = evaluate(gt, pred, options)
    except ValueError as exc:  # the readers' format errors are ValueErrors naming the file and field
        _fail(exc)
    if fmt == EvalFmt.json:
        print(json.dumps(metrics, indent=2))
        return
    rows = [{"metric": k, "value": v} for k, v in metrics.items()]
    print(render_rows(rows, ["metric", "value"], Fmt.table, f"{pred.name} vs {gt.name}"))


@app.command("tasks")
def tasks_() -> None:
    """The registered tasks: what each trains, its data formats, metrics and eval-grid keys."""
    from sweeper.registry import all_specs

    rows = [{"task": t.name, "what": t.description, "data formats": ", ".join(t.data_formats) or "-",
             "metrics": "any the script reports" if t.open_keys else
             ", ".join([*t.metrics, *(f"{p}<name>" for p in t.metric_prefixes)]),
             "eval_grid keys": ", ".join(t.eval_grid_keys) or "-",
             "eval options": ", ".join(f"--{k.replace('_', '-')}" for k in t.eval_options) or "-"}
            for t in all_specs()]
    print(render_rows(rows, list(rows[0]), Fmt.table, "tasks"))


@data_app.command("synth")
def data_synth(
    task: str = typer.Option(DEFAULT_TASK, "--task", help="The task whose synthetic data to write "
                             "(COCO shapes for detection, UFO receipts for dbnet)."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    images: int = typer.Option(96, "--images", help="Images (train + val)."),
    size: int = typer.Option(128, "--size", help="Image side in pixels (dbnet: 256 is a good start)."),
    seed: int = typer.Option(0, "--seed", help="Generator seed (same seed, same files)."),
) -> None:
    """Write a deterministic synthetic dataset (train.json, val.json, images/)."""
    from sweeper.tasks import synthesize

    try:
        info = synthesize(task, out, images=images, size=size, seed=seed)
    except LookupError as exc:
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
