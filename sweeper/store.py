"""The MLflow store: a sweep's experiment, its launches' parent runs, and the readers behind
`sweeper leaderboard` and `sweeper report`.

One experiment per sweep, a parent run per launch, one child run per trial (written by
`sweeper.tracking`, the Tune callback). This module needs MLflow alone: reading a leaderboard
never imports Ray or Optuna.

Tags (all under `sweeper.`): kind (sweep|trial), task, trial_id, status (running|finished|stopped|
failed|diverged), stopped_at_epoch, error, objective, mode, searched (JSON list), config_hash.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import yaml

from sweeper.config import REDACTED, Sweep, redact, redact_uri
from sweeper.registry import TaskSpec, all_specs, get_spec
from sweeper.results import BEST_OBJECTIVE, EPOCH

_BAD_CHARS = re.compile(r"[^/\w.\- :]")


def metric_key(name: str) -> str:
    """MLflow allows only `/\\w.- :` in names; anything else becomes `_`."""
    return _BAD_CHARS.sub("_", name)


def client(uri: str):  # noqa: ANN201 - mlflow.MlflowClient, imported lazily
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def unreachable(uri: str, timeout_s: float = 5.0) -> str | None:
    """Why the tracking server at `uri` cannot be used, within `timeout_s`; None if it answers (or
    the store is a database). MLflow's own client retries a dead server for minutes: this asks its
    `/health` once, before any run is created."""
    if not uri.startswith(("http://", "https://")):
        return None
    import urllib.error
    import urllib.request

    from sweeper.config import redact_uri

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            if response.status < 400:
                return None
            why = f"it answered /health with HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        why = f"it answered /health with HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        why = f"{getattr(exc, 'reason', exc)} (waited at most {timeout_s:g} s)"
    return (f"the MLflow tracking server {redact_uri(uri)} cannot be reached: {why}; start it "
            "(mlflow server --host 127.0.0.1 --port PORT --workers 1) or fix tracking.uri")


def artifact_root(uri: str, name: str) -> str | None:
    """Keep a sqlite store's artifacts beside the database, whatever the working directory."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts" / name).as_uri()
    return None


def get_or_create_experiment(uri: str, name: str) -> str:
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return c.create_experiment(name, artifact_location=artifact_root(uri, name))


def start_sweep_run(sweep: Sweep, config_hash: str, experiment_id: str | None = None) -> str:
    """Create the parent run of one launch (in `experiment_id` if the caller has it); returns its id."""
    uri = sweep.spec.tracking.uri
    exp_id = experiment_id or get_or_create_experiment(uri, sweep.name)
    c = client(uri)
    abl = sweep.spec.ablation
    run = c.create_run(exp_id, run_name=f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}", tags={
        "sweeper.kind": "sweep",
        "sweeper.task": sweep.spec.task,
        "sweeper.objective": sweep.spec.objective.metric,
        "sweeper.mode": sweep.spec.objective.mode,
        "sweeper.objectives": json.dumps([o.model_dump() for o in sweep.objectives or [sweep.spec.objective]]),
        "sweeper.searched": json.dumps(ablated_keys(sweep) if abl else [d.key for d in sweep.dimensions]),
        "sweeper.study": "ablation" if abl else "search",
        **({"sweeper.ablation": json.dumps({"factors": abl.factors, "named": abl.variants, "seeds": abl.seed_values,
                                            "seed_key": sweep.seed_key, "full_factorial": abl.full_factorial,
                                            "variants": [name for name, _ in sweep.variants]}, default=str)}
           if abl else {}),
        "sweeper.max_t": str(sweep.max_t),
        "sweeper.sampler": sweep.spec.search_alg.sampler if sweep.spec.search_alg.name == "optuna"
        else sweep.spec.search_alg.name,
        **({"sweeper.constraints": json.dumps([c.model_dump(exclude_none=True) for c in sweep.spec.constraints])}
           if sweep.spec.constraints else {}),
        "sweeper.config_hash": config_hash,
        "sweeper.sweep_file": str(sweep.file),
        **optuna_tags(sweep),
    })
    try:  # the run exists now: if what follows fails, it must not stay RUNNING as the latest launch
        c.log_text(run.info.run_id, _sweep_text(sweep), "sweep.yaml")
        c.log_dict(run.info.run_id, redact(sweep.raw), "sweep.resolved.json")
        from sweeper import ui  # MLflow's UI opens the experiment on this launch's leaderboard (`sweeper ui`)

        ui.tag_experiment(c, exp_id, run.info.run_id, run.data.tags)
    except Exception as exc:
        fail_sweep_run(uri, run.info.run_id, exc)
        from sweeper.config import SweepConfigError, redact_uri

        raise SweepConfigError(sweep.file, "tracking.uri", f"MLflow could not record the launch in "
                               f"{redact_uri(uri)} (artifacts at {redact_uri(run.info.artifact_uri)}): "
                               f"{type(exc).__name__}: {exc}; nothing was started and earlier launches are "
                               "unchanged") from None
    return run.info.run_id


#: where a launch's Optuna study is (`sweeper ui NAME --optuna` reads them)
OPTUNA_STORAGE_TAG, OPTUNA_STUDY_TAG = "sweeper.optuna_storage", "sweeper.optuna_study"


def optuna_tags(sweep: Sweep) -> dict[str, str]:
    """The study's storage URL (a password in it redacted) and name; none for an ablation or a
    study kept in memory."""
    storage = sweep.spec.search_alg.storage
    if sweep.spec.ablation is not None or not sweep.dimensions or storage in (None, "memory"):
        return {}
    return {OPTUNA_STORAGE_TAG: redact_uri(storage), OPTUNA_STUDY_TAG: sweep.name}


def ablated_keys(sweep: Sweep) -> list[str]:
    """The keys an ablation varies: its factors', then its named variants' (each once)."""
    abl = sweep.spec.ablation
    assert abl is not None
    return list(dict.fromkeys([*abl.factors, *(k for changes in abl.variants.values() for k in changes)]))


def _sweep_text(sweep: Sweep) -> str:
    """The sweep file as written, unless it holds secret-looking keys: then re-dumped, redacted."""
    text = sweep.file.read_text()
    from sweeper.sweep_yaml import parse_yaml  # as load read it: `on:` stays a key, not `true`

    doc = parse_yaml(text)
    if redact(doc) == doc:
        return text
    return f"# {sweep.file}, with the values of secret-looking keys replaced by {REDACTED}\n" + \
        yaml.safe_dump(redact(doc), sort_keys=False)


def reopen_sweep_run(uri: str, run_id: str) -> tuple[str, int | None, str | None]:
    """Mark a launch's parent run as running again when the sweep is continued; returns what it
    was (status, end time, `sweeper.status`), so a resume that fails can put it back."""
    c = client(uri)
    run = c.get_run(run_id)
    previous = (run.info.status, run.info.end_time, run.data.tags.get("sweeper.status"))
    c.update_run(run_id, status="RUNNING")
    c.set_tag(run_id, "sweeper.status", "running")
    return previous


def restore_sweep_run(uri: str, run_id: str, previous: tuple[str, int | None, str | None]) -> None:
    """Undo `reopen_sweep_run`: a resume that failed before its trials ran leaves the launch as it was."""
    status, end_time, tag = previous
    c = client(uri)
    if status == "RUNNING":
        c.update_run(run_id, status="RUNNING")
    else:
        c.set_terminated(run_id, status, end_time=end_time)
    if tag is None:
        c.delete_tag(run_id, "sweeper.status")
    else:
        c.set_tag(run_id, "sweeper.status", tag)


def fail_sweep_run(uri: str, run_id: str, error: BaseException) -> None:
    """Close the parent run of a launch that raised: FAILED with the error (KILLED on Ctrl-C), so
    it is not left RUNNING and, with no trials, `leaderboard` passes over it."""
    from mlflow.entities import RunTag

    killed = isinstance(error, KeyboardInterrupt)
    c = client(uri)
    c.log_batch(run_id, tags=[RunTag("sweeper.status", "killed" if killed else "failed"),
                              RunTag("sweeper.error", f"{type(error).__name__}: {error}"[:4000])])
    c.set_terminated(run_id, "KILLED" if killed else "FAILED")


def finish_sweep_run(uri: str, run_id: str, best: dict[str, Any] | None, status: str) -> None:
    """Record the best trial on the parent run and close it (FINISHED or KILLED when interrupted)."""
    from mlflow.entities import Metric, RunTag

    c = client(uri)
    tags, metrics = [RunTag("sweeper.status", status.lower())], []
    if best:
        tags += [RunTag("sweeper.best_trial", best["trial_id"]), RunTag("sweeper.best_run_id", best["run_id"])]
        metrics.append(Metric("best_objective", float(best["value"]), int(time.time() * 1000), 0))
    c.log_batch(run_id, metrics=metrics, tags=tags)
    c.set_terminated(run_id, status)


# --------------------------------------------------------------------------- leaderboard
def leaderboard(uri: str, name: str, *, top: int | None = None, all_launches: bool = False) -> dict[str, Any]:
    """Trials of a sweep's latest launch (or all), sorted by the objective's best value."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        known = [e.name for e in c.search_experiments()]
        raise LookupError(f"no sweep named {name!r} in {redact_uri(uri)}; known: {', '.join(known) or 'none'}")
    parents = c.search_runs([exp.experiment_id], "tags.`sweeper.kind` = 'sweep'",
                            order_by=["attributes.start_time DESC"])
    if not parents:
        raise LookupError(f"experiment {name!r} in {redact_uri(uri)} holds no sweeper launch")
    parent = _latest_launch(c, exp.experiment_id, parents)
    objective, mode = parent.data.tags["sweeper.objective"], parent.data.tags["sweeper.mode"]
    tasks = _tasks_of(parent.data.tags.get("sweeper.task"))
    hidden = tuple(p for t in tasks for p in t.detail_prefixes)
    columns = list(dict.fromkeys(c for t in tasks for c in t.leaderboard_columns))
    searched = json.loads(parent.data.tags.get("sweeper.searched", "[]"))
    secondary = [o["metric"] for o in json.loads(parent.data.tags.get("sweeper.objectives", "[]"))[1:]]
    filt = "tags.`sweeper.kind` = 'trial'"
    if not all_launches:
        filt += f" and tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    runs = c.search_runs([exp.experiment_id], filt, max_results=50000)
    constrained = "sweeper.constraints" in parent.data.tags  # a `feasible` column: true, false, or empty
    rows = []
    for run in runs:
        m, t, p = run.data.metrics, run.data.tags, run.data.params
        rows.append({
            "trial": t.get("sweeper.trial_id"), "status": t.get("sweeper.status"),
            **({"feasible": t.get("sweeper.feasible")} if constrained else {}),
            **({"variant": t.get("sweeper.variant"), "seed": t.get("sweeper.seed")} if "sweeper.variant" in t else {}),
            "epoch": int(m[EPOCH]) if EPOCH in m else None,
            objective: m.get(BEST_OBJECTIVE),
            **{k: p.get(k) for k in searched},
            **{k: v for k, v in p.items() if k.startswith("data.") and k not in searched},  # --group data.fold
            **{k: m[k] for k in sorted(m) if k not in (EPOCH, BEST_OBJECTIVE, objective)
               and (k in columns or not k.startswith(hidden))},
            **{k: m.get(k) for k in secondary},  # the other objectives of a multi-objective search
            "final": m.get(objective),  # at the last epoch: what an ablation compares
            "error": t.get("sweeper.error"), "run_id": run.info.run_id,
        })
    sign = -1 if mode == "max" else 1
    # with constraints, feasible trials rank first (the best feasible one is the sweep's answer)
    rows.sort(key=lambda r: (r[objective] is None, constrained and r.get("feasible") != "true",
                             sign * (r[objective] or 0.0)))
    confirmed = None  # `sweeper confirm` re-ran the best with seeds: those first, best confirmed mean first
    if "sweeper.confirmed_by" in parent.data.tags:
        from sweeper.confirmed import confirmed_first

        rows, confirmed = confirmed_first(uri, parent.data.tags["sweeper.confirmed_by"], rows, mode)
    study = parent.data.tags.get("sweeper.study", "search")
    ablation = json.loads(parent.data.tags["sweeper.ablation"]) if "sweeper.ablation" in parent.data.tags else None
    return {"name": name, "task": parent.data.tags.get("sweeper.task"), "objective": objective, "mode": mode,
            "secondary": secondary, "searched": searched,
            "constraints": json.loads(parent.data.tags.get("sweeper.constraints", "[]")),
            "columns": columns,
            "study": study,
            "ablation": ablation,
            **({"confirmed": confirmed} if confirmed is not None else {}),
            "parent_run_id": parent.info.run_id, "rows": rows[:top] if top else rows}


def _latest_launch(c: Any, experiment_id: str, parents: list) -> Any:  # noqa: ANN401 - mlflow entities
    """The newest launch that recorded trials, passing over launches that failed before any trial
    ran (a relaunch on unwritable storage must not hide the previous launch's results); the
    newest launch when none qualifies. `parents`: newest first."""
    for parent in parents:
        if parent.info.status != "FAILED" or c.search_runs(
                [experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=1):
            return parent
    return parents[0]


def _tasks_of(name: str | None) -> list[TaskSpec]:
    """The task a launch ran (its parent run's tag); every known task for launches recorded
    before the tag existed, or of a task this installation does not know."""
    try:
        return [get_spec(name)] if name else all_specs()
    except LookupError:
        return all_specs()


def report_data(uri: str, name: str, progress: Any = lambda msg: None) -> dict[str, Any]:
    """Everything `sweeper report` draws, read from MLflow (the latest launch of `name`):
    per trial its status, variant/seed, searched values, last-epoch metrics, best objective and
    the objective's history per epoch."""
    board = leaderboard(uri, name)
    c = client(uri)
    parent = c.get_run(board["parent_run_id"])
    objective, mode = board["objective"], board["mode"]
    trials = []
    rows = board["rows"]
    for i, row in enumerate(rows, 1):
        progress(f"reading trial {i}/{len(rows)} from MLflow")
        run = c.get_run(row["run_id"])
        objectives = json.loads(parent.data.tags.get("sweeper.objectives", "null")) or [{"metric": objective}]
        history = {o["metric"]: sorted([int(m.step), float(m.value)] for m in
                                       c.get_metric_history(row["run_id"], o["metric"])) for o in objectives}
        params = {}
        for key in board["searched"]:
            if key in run.data.params:
                params[key] = _typed(run.data.params[key])
        trials.append({
            "trial": row["trial"], "status": row["status"], "variant": row.get("variant"),
            "seed": int(row["seed"]) if row.get("seed") is not None else None,
            "params": params, "final": dict(run.data.metrics), "best": row[objective],
            "history": history,
            "stopped_at": int(run.data.tags["sweeper.stopped_at_epoch"]) if "sweeper.stopped_at_epoch" in run.data.tags else None,
            "error": row.get("error"),
        })
    ablation = board.get("ablation")
    return {
        "name": name, "kind": board.get("study", "search"),
        "objectives": json.loads(parent.data.tags.get("sweeper.objectives", "null"))
        or [{"metric": objective, "mode": mode}],
        "searched": [] if ablation else board["searched"],
        "baseline": "baseline" if ablation else None,
        "factors": ablation["factors"] if ablation else None,
        "max_t": int(parent.data.tags.get("sweeper.max_t", 0)) or None,
        "parent_run_id": board["parent_run_id"],
        "trials": trials,
    }


def objective_curves(uri: str, name: str) -> dict[str, Any]:
    """What `sweeper diagnose` reads: the latest launch's objective, mode, planned last epoch and,
    per trial, its status and the objective's MLflow history ([[step, value], ...], step = epoch).
    Raises LookupError for an unknown sweep, naming the sweeps the store has."""
    board = leaderboard(uri, name)
    c = client(uri)
    parent = c.get_run(board["parent_run_id"])
    objective = board["objective"]
    trials = [{"trial": row["trial"], "status": row["status"], "run_id": row["run_id"],
               "history": sorted([int(m.step), float(m.value)] for m in c.get_metric_history(row["run_id"], objective))}
              for row in board["rows"]]
    return {"name": name, "objective": objective, "mode": board["mode"],
            "max_t": int(parent.data.tags.get("sweeper.max_t", 0)) or None,
            "parent_run_id": board["parent_run_id"], "trials": trials}


def _typed(text: str) -> Any:
    """MLflow keeps params as strings; the report wants numbers back where they were numbers."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def sweep_trials(uri: str, name: str, metrics: list[str]) -> dict[str, Any]:
    """Every trial of every launch of sweep `name` (what `search.warm_start` imports): its status
    and stop reason, its params (MLflow text), final metrics and the history per epoch of each of
    `metrics`. Raises LookupError naming the sweeps the store holds when there is no such sweep."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    parents = c.search_runs([exp.experiment_id], "tags.`sweeper.kind` = 'sweep'",
                            order_by=["attributes.start_time DESC"]) if exp is not None else []
    if not parents:
        known = sorted(e.name for e in c.search_experiments()
                       if c.search_runs([e.experiment_id], "tags.`sweeper.kind` = 'sweep'", max_results=1))
        raise LookupError(f"no sweep named {name!r} in {redact_uri(uri)}; the sweeps there: {', '.join(known) or 'none'}")
    runs = c.search_runs([exp.experiment_id], "tags.`sweeper.kind` = 'trial'", max_results=50000)
    trials = []
    for run in runs:
        t = run.data.tags
        trials.append({
            "trial": t.get("sweeper.trial_id"), "status": t.get("sweeper.status"),
            "stop_reason": t.get("sweeper.stop_reason"), "params": dict(run.data.params),
            "metrics": dict(run.data.metrics), "best": run.data.metrics.get(BEST_OBJECTIVE),
            "history": {m: sorted((int(h.step), float(h.value)) for h in c.get_metric_history(run.info.run_id, m))
                        for m in metrics if m in run.data.metrics},
        })
    searched = sorted({k for p in parents for k in json.loads(p.data.tags.get("sweeper.searched", "[]"))})
    return {"name": name, "task": parents[0].data.tags.get("sweeper.task"), "searched": searched,
            "objective": parents[0].data.tags.get("sweeper.objective"), "trials": trials}


def tag_run(uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Add tags to a run (the parent run's warm-start summary)."""
    from mlflow.entities import RunTag

    client(uri).log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def log_report(uri: str, parent_run_id: str, out_dir: Path) -> None:
    """The report's files as artifacts of the sweep's parent run (`report/`)."""
    client(uri).log_artifacts(parent_run_id, str(out_dir), "report")
