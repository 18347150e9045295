"""`sweeper ui`: MLflow's own UI over a sweep's tracking store, opened on the sweep's leaderboard.

A plain `mlflow ui` opens a sweep on MLflow 3.17's GenAI "Overview" (traces, latency, tokens),
its runs page shows one collapsed parent run sorted by creation time, no searched value or
objective is a column, and it starts nine job-consumer processes. `sweeper ui NAME` serves the
same UI lean (`MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`, one worker, no access log) on
127.0.0.1 and prints the URL of a saved view that lists the latest launch's trials, best first,
with the searched values, the objective, status, stop reason and epoch as columns. MLflow only:
no Ray, no Optuna.

What the MLflow 3.17.2 UI really reads (its bundle, `mlflow/server/js/build/static/js/*.js`,
minified; module ids as webpack numbers them there), and so what this module relies on:

- **Which page an experiment opens on** is chosen by the workflow type, not by the experiment:
  the URL parameter `workflowType` (`genai` | `machine_learning`), else localStorage
  `mlflow.workflowType`, default `genai` (main.*.js, module 7975). A fresh browser therefore
  lands on GenAI, whatever the experiment says; `workflowType=machine_learning` in the URL opens
  "Model training" and its runs page. The experiment tag `mlflow.experimentKind`
  (`custom_model_development` = "Machine learning") is read only where the feature flag that
  derives the kind from the workflow type is off (module 31080; the flag, export `Z0` of module
  89511, is hard-coded on in 3.17.2); the UI's own kind selector writes it (chunk 2809, module
  84753) and `mlflow.demo` sets it. We set it as MLflow's mark of a model-training experiment,
  but the URL parameter is what works in 3.17.
- **Saved views**: an experiment tag `mlflow.sharedViewState.<id>` holding a JSON envelope
  `{name, createdAt, updatedAt, state}` whose `state` is the JSON text (deflate-compressed or
  plain) of the runs page's search facets (`searchFilter`, `orderByKey`, `orderByAsc`,
  `startTime`, `lifecycleFilter`, `modelVersionFilter`, `datasetsFilter`) and UI state
  (`selectedColumns`, `columnOrder`, `columnWidths`, `groupBy`, ...; `runsExpanded`,
  `runsPinned`, `runsHidden`, `runsVisibilityMap` and `autoRefreshEnabled` are dropped on load)
  (envelope: chunk 3448, module 53787; fields: main, module 1395; loader: chunk 3878, the hook
  around "Error loading shared view state"). `#/experiments/ID/runs?viewStateShareKey=<id>`
  applies it, unless the URL already carries a search-facet parameter, and the view is listed
  in the page's saved-views menu. The envelope's plain-JSON fallback (a bare state object) and
  the older deflate format are read too.
- **Column ids** are `metrics.`KEY``, `params.`KEY``, `tags.`KEY`` and `attributes.`Run Name``
  (main, module 95051, export `GF`); `orderByKey` takes the same form and the server sorts.
- **Trials without expanding**: rows nest under a parent only when the parent is among the
  fetched runs (`getNestedRowRenderMetadata`), and a view cannot expand rows, so the view's
  filter (`tags.`mlflow.parentRunId` = 'LAUNCH'`) leaves the parent out and the trials are the
  top-level rows.
- **Primary metric**: `mlflow.experiment.primaryMetric.name` / `.greaterIsBetter`, which the
  charts view plots first (chunk 3878, `primaryMetricKey`); MLflow's Python writes the same tags
  (`mlflow.tracking.fluent._set_experiment_primary_metric`).
- Not used: `isComparingRuns` (a legacy parameter), `compareRunsMode` (the default, `TABLE`, is
  the table), `groupBy` (it would fold the trials into group rows).

`sweeper.store` writes these tags with every launch; `sweeper ui` writes them again for the
launch it opens, so experiments made before they existed open the same way.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeper.results import BEST_OBJECTIVE, EPOCH, STEP

VIEW_ID = "sweeper-leaderboard"
VIEW_NAME = "sweeper leaderboard"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
PRIMARY_METRIC_TAG = "mlflow.experiment.primaryMetric.name"
GREATER_IS_BETTER_TAG = "mlflow.experiment.primaryMetric.greaterIsBetter"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 5000
#: how long MLflow's server may take to answer (measured: 8-13 s on 2 busy cores)
READY_TIMEOUT_S = 120.0


class PortInUse(OSError):
    """The port `sweeper ui` was asked to serve on is taken (the message suggests a free one)."""


@dataclass
class Target:
    """The sweep a UI opens on: its experiment, its latest launch, and the URL of its view."""

    name: str
    experiment_id: str
    parent_run_id: str
    trials: int
    url: str


# --------------------------------------------------------------------------- the view (pure)
def column(kind: str, key: str) -> str:
    """A runs-table column id as the MLflow UI names it: `metrics.`best_objective``."""
    return f"{kind}.`{key}`"


def leaderboard_view(parent_run_id: str, objective: str, mode: str, searched: Iterable[str],
                     secondary: Iterable[str] = (), ablation: bool = False) -> dict[str, Any]:
    """The runs page's state for one launch: its trials only (so none hides under a collapsed
    parent), best `best_objective` first, the objective and searched values as columns.
    `objective` and `secondary` are MLflow metric keys (`store.metric_key`)."""
    best = column("metrics", BEST_OBJECTIVE)
    columns = [best, *(column("metrics", m) for m in [objective, *secondary] if m != BEST_OBJECTIVE)]
    if ablation:
        columns += [column("tags", "sweeper.variant"), column("tags", "sweeper.seed")]
    columns += [column("params", key) for key in searched]
    columns += [column("tags", "sweeper.status"), column("tags", "sweeper.stop_reason"),
                column("metrics", EPOCH), column("metrics", STEP), column("tags", "sweeper.error")]
    columns = list(dict.fromkeys(columns))
    return {
        "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        "orderByKey": best,
        "orderByAsc": mode == "min",
        "selectedColumns": columns,
        # the table groups columns by type unless told an order: the objective next to the name
        "columnOrder": [column("attributes", "Run Name"), *columns],
        "columnWidths": {best: 150, column("tags", "sweeper.status"): 130,
                         column("tags", "sweeper.stop_reason"): 150},
    }


def experiment_tags(view: dict[str, Any], mode: str, now_ms: int | None = None) -> dict[str, str]:
    """The experiment tags that make MLflow's UI show a sweep as a model-training leaderboard:
    the kind, the primary metric and the saved view (`view`, from `leaderboard_view`)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    envelope = {"name": VIEW_NAME, "createdAt": now_ms, "updatedAt": now_ms, "state": json.dumps(view)}
    return {
        KIND_TAG: TRAINING_KIND,
        PRIMARY_METRIC_TAG: BEST_OBJECTIVE,
        GREATER_IS_BETTER_TAG: str(mode == "max"),
        VIEW_TAG: json.dumps(envelope),
    }


def server_url(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """The address a browser on this machine uses for a server listening on `host`:`port`
    (a wildcard host is reached through the loopback address)."""
    if host in ("", "0.0.0.0", "::"):
        host = DEFAULT_HOST
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"http://{host}:{port}"


def leaderboard_url(base_url: str, experiment_id: str) -> str:
    """The URL of a sweep's leaderboard view on the MLflow UI at `base_url`."""
    return (f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?viewStateShareKey={VIEW_ID}&workflowType=machine_learning")


def ui_command(name: str, uri: str, default_uri: str) -> str:
    """The `sweeper ui` command line that opens sweep `name` in store `uri` (the tracking URI
    only when it is not the default one of the directory the user is in)."""
    from shlex import quote

    return f"sweeper ui {quote(name)}" + ("" if uri == default_uri else f" --tracking-uri {quote(uri)}")


def is_server(uri: str) -> bool:
    """A tracking server already serves its own UI: `sweeper ui` only points at it."""
    return uri.startswith(("http://", "https://"))


# --------------------------------------------------------------------------- checks
def check_store(uri: str) -> None:
    """Refuse a local store that does not exist (MLflow would create an empty one and serve it)
    and a tracking server that does not answer (MLflow's client would retry for minutes)."""
    if is_server(uri):
        from sweeper.store import unreachable

        if why := unreachable(uri):
            raise LookupError(why)
        return
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
    elif uri.startswith("file://"):
        path = Path(uri[len("file://"):])
    elif "://" not in uri:  # a plain directory (file store)
        path = Path(uri)
    else:
        return
    if not path.exists():
        raise LookupError(f"no MLflow store at {path}: run from the directory you launched in, or pass "
                          "--tracking-uri")


def port_in_use(host: str, port: int) -> bool:
    """Whether a server could not listen on `host`:`port` (checked the way uvicorn binds)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except socket.gaierror as exc:  # not a name of this machine: say so, not "in use"
            raise OSError(f"--host {host}: {exc.strerror}") from None
        except OSError:
            return True
    return False


def check_port(host: str, port: int) -> None:
    """Raise PortInUse, naming a free port near `port` to use instead."""
    if not port_in_use(host, port):
        return
    free = next((p for p in range(port + 1, min(port + 100, 65536)) if not port_in_use(host, p)), None)
    hint = f"--port {free}" if free else "another --port"
    raise PortInUse(f"port {port} on {host} is in use (another MLflow UI?): try {hint}")


# --------------------------------------------------------------------------- the store
def latest_sweep(uri: str) -> str:
    """The name of the sweep launched last in the store (what `sweeper ui` opens without NAME)."""
    from sweeper import store

    c = store.client(uri)
    exps = {e.experiment_id: e.name for e in c.search_experiments()}
    runs = c.search_runs(list(exps), "tags.`sweeper.kind` = 'sweep'", order_by=["attributes.start_time DESC"],
                         max_results=1) if exps else []
    if not runs:
        raise LookupError(f"no sweep in {uri}: launch one first (sweeper launch SWEEP.yaml)")
    return exps[runs[0].info.experiment_id]


def mark(uri: str, name: str | None, base_url: str) -> Target:
    """Tag sweep `name`'s experiment (default: the sweep launched last) for its latest launch;
    LookupError, listing the sweeps the store has, when there is no such sweep."""
    from sweeper import store

    name = name or latest_sweep(uri)
    board = store.leaderboard(uri, name)  # LookupError: "no sweep named ...; known: ..."
    c = store.client(uri)
    parent = c.get_run(board["parent_run_id"])
    tag_experiment(c, parent.info.experiment_id, parent.info.run_id, parent.data.tags)
    return Target(name, parent.info.experiment_id, parent.info.run_id, len(board["rows"]),
                  leaderboard_url(base_url, parent.info.experiment_id))


def launch_view(parent_run_id: str, tags: dict[str, str]) -> dict[str, Any]:
    """The leaderboard view of a launch, from its parent run's tags (what `store.leaderboard`
    reads too: objective, mode, searched keys, the other objectives, ablation or search)."""
    from sweeper.store import metric_key

    objectives = json.loads(tags.get("sweeper.objectives", "[]"))
    return leaderboard_view(parent_run_id, metric_key(tags["sweeper.objective"]), tags["sweeper.mode"],
                            json.loads(tags.get("sweeper.searched", "[]")),
                            [metric_key(o["metric"]) for o in objectives[1:]],
                            ablation="sweeper.ablation" in tags)


def tag_experiment(c: Any, experiment_id: str, parent_run_id: str, tags: dict[str, str]) -> None:
    """Mark the experiment as model training with this launch's leaderboard as its saved view
    (`c`: an MlflowClient; `tags`: the launch's parent-run tags)."""
    for key, value in experiment_tags(launch_view(parent_run_id, tags), tags["sweeper.mode"]).items():
        c.set_experiment_tag(experiment_id, key, value)


# --------------------------------------------------------------------------- the server
def server_command(uri: str, host: str, port: int) -> list[str]:
    """`mlflow server` over `uri`: one worker and no access log (the terminal stays readable);
    a sqlite store's artifacts beside the database, as `store.artifact_root` keeps them."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
           "--port", str(port), "--workers", "1", "--uvicorn-opts", "--no-access-log"]
    if uri.startswith("sqlite:///"):
        cmd += ["--artifacts-destination", str(Path(uri[len("sqlite:///"):]).parent / "mlartifacts")]
    return cmd


def server_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """No job execution: MLflow's job consumers (nine processes, about 2 GB) serve GenAI jobs
    (judges, scorers) a sweep never submits."""
    return {**(os.environ if env is None else env), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def wait_ready(proc: subprocess.Popen, probe_url: str, what: str = "the MLflow server",
               timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until `probe_url` answers 200; RuntimeError if the server exits or does not answer in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it answered")
        try:
            with urllib.request.urlopen(probe_url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer {probe_url} within {timeout_s:.0f} s")


def serve(uri: str, host: str, port: int, on_ready: Callable[[], None]) -> int:
    """Run the MLflow UI until Ctrl-C (or SIGTERM); `on_ready` once it answers. Returns the
    server's exit code (0 when stopped by the user)."""
    return serve_process(server_command(uri, host, port), server_env(), f"{server_url(host, port)}/health",
                         on_ready, "the MLflow server")


def serve_process(cmd: list[str], env: dict[str, str], probe_url: str, on_ready: Callable[[], None],
                  what: str) -> int:
    """Run a UI server (`cmd`) until Ctrl-C (or SIGTERM); `on_ready` once `probe_url` answers.
    Returns its exit code (0 when stopped by the user)."""
    # its own process group, so stopping it stops its workers too, whoever sent the signal
    group = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
    proc = subprocess.Popen(cmd, env=env, **group)

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        wait_ready(proc, probe_url, what)
        on_ready()
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop(proc)


def stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM to the server's process group (MLflow's CLI and its uvicorn), SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:  # nothing of it is left
        return
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
