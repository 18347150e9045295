"""MLflow from the Ray driver: the Tune callback that writes one child run per trial.

Everything is logged from the driver, so trials never need access to the tracking store; the
callback writes on a background thread, in order, so Tune's loop does not wait for the store
(`flush_all` waits for it). The callback is pickled into Tune's experiment state and comes back
on restore, so it keeps only plain data (URI, ids) and, once restored, finds each trial's run by
its `sweeper.trial_id` tag: a resumed or relaunched sweep continues each trial's run in place
instead of creating a duplicate. The store itself (experiments, parent runs, the leaderboard
readers) is `sweeper.store`, which needs no Ray.
"""
from __future__ import annotations

import json
import math
import posixpath
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

from sweeper.config import SECRET_NAME, Sweep, flatten, redact_uri, trial_params
from sweeper.config.secret_keys import is_alias, public_sweep
from sweeper.constraints import feasible
from sweeper.results import (
    BEST_EPOCH,
    COMPLETED,
    MICRO_BATCHES,
    OOM_RETRIES,
    PARKED,
    SELF_STOPS,
    TRIAL_CONFIG,
    is_divergence,
    stop_reason,
    time_attr,
)
from sweeper.store import client, get_or_create_experiment, metric_key

#: Ray's bookkeeping keys that are not worth an MLflow metric (`time_total_s` is: the trial's
#: training time, summed over restarts, which the leaderboard shows and `budget.time_limit` checks)
_RAY_KEYS = {"timestamp", "training_iteration", "time_this_iter_s", "pid",
             "time_since_restore", "iterations_since_restore", "done", "epochs_total",
             "checkpoint_dir_name", "should_checkpoint", BEST_EPOCH, PARKED}  # best_epoch: a tag, once


#: failed MLflow writes printed as they happen; the rest are counted in the launch's summary
MAX_PRINTED_ERRORS = 5
#: loggers with writes in flight, so the runner can wait for all of them (Tune restores its own copy)
_LIVE: "weakref.WeakSet[MLflowTrialLogger]" = weakref.WeakSet()


def adopt(tuner: Any, sweep: Sweep) -> None:
    """On resume: the trial loggers Tune restored from `tuner.pkl` hold the public sweep they
    pickled (`MLflowTrialLogger.__getstate__`): give them the real sweep and tracking URI again.
    Reaches into `Tuner._local_tuner` (Ray 2.60), as `console.adopt` does."""
    run_config = getattr(getattr(tuner, "_local_tuner", None), "get_run_config", lambda: None)()
    for cb in (run_config.callbacks or []) if run_config is not None else []:
        if isinstance(cb, MLflowTrialLogger):
            cb.sweep, cb.uri = sweep, sweep.spec.tracking.uri


def flush_all() -> list[str]:
    """Wait until every trial logger of this process has written what it was given; returns
    the writes that failed (also printed when they failed)."""
    errors: list[str] = []
    for logger in list(_LIVE):
        errors += logger.flush()
    return errors


class MLflowTrialLogger(Callback):
    """Tune callback: a child run per trial with params, per-epoch metrics and final status.

    Writes go to MLflow on one background thread, in the order Tune reported them: a sqlite
    commit or a tracking-server round trip costs milliseconds per call, a handful of calls per
    trial, and Tune's single driver loop would otherwise wait for each before it dispatches the
    next trial or result. When the store falls behind (many short trials), a trial's results
    and its end wait together and go out as one batch: fewer, larger writes, same content.
    A write that fails is printed (and returned by `flush`) without stopping the sweep: the
    trial's results are still in its Ray directory (result.json). Tune's experiment snapshots
    wait for the queue (`get_state`), so a resumed sweep never misses an epoch in MLflow.
    """

    def __init__(self, sweep: Sweep, parent_run_id: str, experiment_id: str | None = None) -> None:
        self.sweep = sweep
        self.uri = sweep.spec.tracking.uri
        self.parent_run_id = parent_run_id
        self.experiment_id = experiment_id or get_or_create_experiment(self.uri, sweep.name)
        self.runs: dict[str, str] = {}       # trial_id -> run_id
        self.last_epoch: dict[str, int] = {}  # run_id -> last epoch logged
        self.logged_params: dict[str, set[str]] = {}  # run_id -> param keys it has
        self._client = None
        self.time_key = time_attr(sweep.spec.command)  # the MLflow step: epoch, or a command trial's step
        # built by this launch, not restored by Tune: no trial can have a run yet, so new trials
        # skip the search by tag (a query per trial, which grows with the store)
        self._fresh = True
        self._init_writer()

    def _init_writer(self) -> None:
        self._pool: ThreadPoolExecutor | None = None  # one worker: jobs run in submission order
        self._errors: list[str] = []
        # trial_id -> what it reported that is not written yet; a trial has an entry exactly
        # while a job that will write it is queued
        self._unwritten: dict[str, _Unwritten] = {}
        self._unwritten_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles this into its experiment state from its loop: no lock, so a slow write
        # (a tracking server retrying) never holds the loop up. The writer's maps are not kept:
        # writes still queued at the snapshot land after it, so a restored logger asks MLflow,
        # by tag, what each trial's run holds.
        state = {k: v for k, v in dict(self.__dict__).items()
                 if k not in ("_pool", "_errors", "_unwritten", "_unwritten_lock")}
        state.update(runs={}, last_epoch={}, logged_params={}, _client=None, _fresh=False)
        # the pickle lands in tuner.pkl, in `storage`: no secret values, no password in the URI;
        # a resumed launch gives the restored logger its sweep again (`adopt`)
        state.update(sweep=public_sweep(self.sweep), uri=redact_uri(self.uri))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_writer()

    def get_state(self) -> None:
        """Called by Tune each time it snapshots the experiment: wait for the queued writes first,
        so MLflow is never behind a snapshot. After a crash (even `kill -9`) Tune resumes each
        trial from what the snapshot knew; anything later is trained and logged again, and
        nothing the snapshot knew is missing from MLflow. Nothing to save: returns None."""
        self.flush()

    def _submit(self, what: str, job: Callable[[], None]) -> None:
        """Run `job` on the writer thread after every job submitted before it."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="sweeper-mlflow")
            _LIVE.add(self)
        self._pool.submit(self._run_job, what, job)

    def _run_job(self, what: str, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception as exc:  # noqa: BLE001 - a tracking failure must not end the sweep
            message = f"MLflow ({redact_uri(self.uri)}): {what} failed: {type(exc).__name__}: {str(exc)[:500]}"
            self._errors.append(message)
            if len(self._errors) <= MAX_PRINTED_ERRORS:  # a store that is down fails every write
                print(f"sweeper: {message}", file=sys.stderr, flush=True)
            elif len(self._errors) == MAX_PRINTED_ERRORS + 1:
                print("sweeper: more MLflow writes are failing; not printing them (the count comes at the end)",
                      file=sys.stderr, flush=True)

    def flush(self) -> list[str]:
        """Wait for every write submitted so far (the single worker reaches this marker only
        after them); returns the writes that failed so far."""
        if self._pool is not None:
            self._pool.submit(lambda: None).result()
        return list(self._errors)

    @property
    def c(self):  # noqa: ANN201
        if self._client is None:
            self._client = client(self.uri)
        return self._client

    def _find_run(self, trial_id: str) -> str | None:
        found = self.c.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`sweeper.trial_id` = '{trial_id}' and tags.`sweeper.kind` = 'trial'",
            max_results=1,
        )
        return found[0].info.run_id if found else None

    def run_id(self, trial) -> str:  # noqa: ANN001 - ray.tune.experiment.Trial
        """The trial's run: cached, else found by tag (after a restore), else created."""
        if trial.trial_id in self.runs:
            return self.runs[trial.trial_id]
        run_id = None if self._fresh else self._find_run(trial.trial_id)
        if run_id is None:
            run_id = self._create_run(trial)
        else:
            metrics = self.c.get_run(run_id).data.metrics
            self.last_epoch[run_id] = int(metrics.get(self.time_key, 0))
            self.c.update_run(run_id, status="RUNNING")
            self.c.set_tag(run_id, "sweeper.status", "running")
        self.runs[trial.trial_id] = run_id
        return run_id

    def _create_run(self, trial) -> str:  # noqa: ANN001
        """A child run with the trial's own values (searched, or an ablation point's) as params;
        the rest of its config arrives with its first report (`results.TRIAL_CONFIG`)."""
        from mlflow.entities import Param

        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "sweeper.kind": "trial",
            "sweeper.trial_id": trial.trial_id,
            "sweeper.status": "running",
        }
        point = trial.config.get("ablation")
        if isinstance(point, dict):  # variants and seeds group the runs in the MLflow UI too
            tags.update({"sweeper.variant": point["variant"], "sweeper.seed": str(point["seed"])})
        run = self.c.create_run(self.experiment_id, run_name=trial.trial_id, tags=tags)
        # known before anything else is written: a failed write must never lead to a second run
        self.runs[trial.trial_id] = run.info.run_id
        # a searched secret is in Tune's config as its alias (`secret_keys`): that may be shown, a value never
        own = param_names({k: v for k, v in trial_params(dict(trial.config)).items()
                           if not SECRET_NAME.search(k) or is_alias(v)})
        self.c.log_batch(run.info.run_id, params=[Param(k, _param_text(v)) for k, v in own.items()])
        self.logged_params[run.info.run_id] = set(own)
        return run.info.run_id

    def _log_trial_config(self, run_id: str, text: str) -> None:
        """The config the trial reported it trains with: params for the keys not logged yet (MLflow
        params never change: a value a retry resolved differently, such as micro-batches after an
        out-of-memory error, is in the tags and the latest trial_config.json), and the file."""
        from mlflow.entities import Param

        config = json.loads(text)
        if run_id not in self.logged_params:  # a run of an earlier launch: ask what it has
            self.logged_params[run_id] = set(self.c.get_run(run_id).data.params)
        done = self.logged_params[run_id]
        new = param_names({k: v for k, v in flatten(config).items() if not SECRET_NAME.search(k)}, done)
        if new:  # MlflowClient splits the batch past MLflow's 100 params per call
            self.c.log_batch(run_id, params=[Param(k, _param_text(v)) for k, v in new.items()])
            done |= set(new)
        self.c.log_dict(run_id, config, "trial_config.json")

    def on_trial_start(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        self._submit(f"starting the run of trial {trial.trial_id}", lambda: self.run_id(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # noqa: ANN001
        result = dict(result)
        self._add_unwritten(trial, lambda record: record.results.append(result))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        end = ("complete", dict(trial.last_result or {}))
        self._add_unwritten(trial, lambda record: setattr(record, "end", end))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        # a NaN/inf loss is a property of the configuration (lr too high), not a crash: told by
        # the type of the exception the trial raised, as Ray pickled it
        kind = "diverged" if is_divergence(_pickled_error(trial)) else "error"
        end = (kind, _trial_error_text(trial))
        self._add_unwritten(trial, lambda record: setattr(record, "end", end))

    def _add_unwritten(self, trial, add: Callable[[_Unwritten], None]) -> None:  # noqa: ANN001
        """Add to the trial's not-yet-written record, queuing the job that writes it if there is
        none; under the lock, so nothing lands in a record the writer has already taken."""
        with self._unwritten_lock:
            record = self._unwritten.get(trial.trial_id)
            if record is None:
                record = self._unwritten[trial.trial_id] = _Unwritten()
                self._submit(f"writing the results of trial {trial.trial_id}", lambda: self._write_unwritten(trial))
            add(record)

    def _write_unwritten(self, trial) -> None:  # noqa: ANN001
        """One batch for everything the trial reported since the last write (per-epoch metrics,
        the status tags of its end), then its files and its final state."""
        from mlflow.entities import Metric, RunTag

        with self._unwritten_lock:  # from here on, new reports start a new record (and job)
            record = self._unwritten.pop(trial.trial_id)
        run_id = self.run_id(trial)
        metrics, tags, last = [], [], self.last_epoch.get(run_id, 0)
        for result in record.results:
            if isinstance(result.get(TRIAL_CONFIG), str):
                self._log_trial_config(run_id, result[TRIAL_CONFIG])
            epoch = int(result.get(self.time_key, result.get("training_iteration", 0)))
            if epoch <= last:
                continue  # already logged before a restore
            last, now = epoch, int(time.time() * 1000)
            metrics += [Metric(metric_key(k), float(v), now, epoch) for k, v in result.items()
                        if k not in _RAY_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
                        and math.isfinite(float(v))]  # NaN/inf: no value (a diverged epoch is not reported)
            if result.get(OOM_RETRIES):  # the OOM fallback changed how the trial trains: say so
                tags += [RunTag("sweeper.oom_retries", str(result[OOM_RETRIES])),
                         RunTag("sweeper.micro_batches", str(result.get(MICRO_BATCHES)))]
        kind, detail = record.end or (None, None)
        if kind == "complete":
            tags += [RunTag(k, v) for k, v in end_tags(detail, self.sweep.max_t, self.time_key).items()]
            ok = feasible(getattr(self.sweep.spec, "constraints", []), detail or {})
            if ok is not None:  # `constraints`: judged on the last result, as the searcher judges it
                tags.append(RunTag("sweeper.feasible", str(ok).lower()))
        elif kind in ("error", "diverged"):
            tags += [RunTag("sweeper.status", "diverged" if kind == "diverged" else "failed"),
                     RunTag("sweeper.error", _last_line(detail)[:5000])]
        tags = list({t.key: t for t in tags}.values())  # the latest value of each tag
        if metrics or tags:  # MlflowClient splits a batch over MLflow's per-call limits itself
            self.c.log_batch(run_id, metrics=metrics, tags=tags)
        self.last_epoch[run_id] = last
        if kind in ("error", "diverged"):
            self.c.log_text(run_id, detail, "error.txt")
        if kind is not None:
            self._attach_log(trial, run_id)
            self.c.set_terminated(run_id, "FINISHED" if kind == "complete" else "FAILED")

    def _attach_log(self, trial, run_id: str) -> None:  # noqa: ANN001
        """A command trial's output log and a task's evaluation files (`artifacts/`: the
        confusion matrix), as Ray persisted them beside the trial: in a local `storage` read in
        place, in object storage (s3://...) copied down through Ray's own filesystem first."""
        storage = getattr(trial, "storage", None)
        fs = getattr(storage, "storage_filesystem", None)
        if fs is None or fs.type_name == "local":
            self._attach_from(Path(trial.path), run_id)
            return
        import tempfile

        import pyarrow.fs as pafs

        with tempfile.TemporaryDirectory() as tmp:
            for name in (COMMAND_LOG, TASK_ARTIFACTS):
                src = f"{trial.path}/{name}"
                kind = fs.get_file_info(src).type
                if kind == pafs.FileType.NotFound:
                    continue
                dst = Path(tmp) / name
                if kind == pafs.FileType.Directory:
                    dst.mkdir()
                pafs.copy_files(src, str(dst), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
            self._attach_from(Path(tmp), run_id)

    def _attach_from(self, path: Path, run_id: str) -> None:
        log = path / COMMAND_LOG
        if self.sweep.spec.command is not None and log.is_file():
            self.c.log_artifact(run_id, str(log))
        files = path / TASK_ARTIFACTS
        if files.is_dir() and any(files.iterdir()):
            self.c.log_artifacts(run_id, str(files), TASK_ARTIFACTS)

    def on_experiment_end(self, trials, **info) -> None:  # noqa: ANN001
        # Ray persists a trial's files when its worker lets go of it, which can be after the
        # trial-end callbacks: attach the logs once more, complete, when the sweep ends
        def attach_all() -> None:
            for trial in trials:
                if trial.trial_id in self.runs:
                    self._attach_log(trial, self.runs[trial.trial_id])

        self._submit("attaching the trials' files", attach_all)
        self.flush()


def end_tags(result: dict[str, Any] | None, max_t: int, time_key: str) -> dict[str, str]:
    """The tags of a trial that ended without an error, from its last result: `sweeper.status`
    (`finished` when it ran its course or ended itself, `stopped` when ASHA or the sweep stopped
    it), `sweeper.stop_reason` (`completed`, `patience`, `script`, `asha`; none when the sweep
    stopped it), `sweeper.stopped_at_epoch` when it ended before its planned length (in steps for
    a command trial on steps) and `sweeper.best_epoch` (where its best objective, and checkpoint, is)."""
    result = result or {}
    reason = stop_reason(result, max_t, time_key)
    tags = {"sweeper.status": "finished" if reason in SELF_STOPS else "stopped"}
    if reason is not None:
        tags["sweeper.stop_reason"] = reason
    if reason != COMPLETED and result.get(time_key) is not None:
        tags["sweeper.stopped_at_epoch"] = str(result[time_key])
    if result.get(BEST_EPOCH) is not None:
        tags["sweeper.best_epoch"] = str(result[BEST_EPOCH])
    return tags


@dataclass
class _Unwritten:
    """What a trial reported that is not in MLflow yet: results in order, then maybe its end,
    ("complete", last result), ("error", traceback text) or ("diverged", traceback text)."""

    results: list[dict[str, Any]] = field(default_factory=list)
    end: tuple[str, Any] | None = None


COMMAND_LOG = "command.log"
#: a trial directory's folder of task evaluation files (sweeper.trainable.ARTIFACTS_DIR)
TASK_ARTIFACTS = "artifacts"


def _trial_error_text(trial) -> str:  # noqa: ANN001
    """The trial's traceback: Ray writes it beside the driver's copy of the trial first."""
    path = trial.error_file
    if path and Path(path).is_file():
        return Path(path).read_text()
    error = trial.get_error()
    return str(error) if error else "unknown error (no error file from Ray)"


def _pickled_error(trial) -> BaseException | None:  # noqa: ANN001
    """The exception the trial raised, as Ray pickled it beside the driver's copy of the trial
    (before it is synced to `storage`), else from storage; None if there is none or it is unreadable."""
    try:
        path = trial.pickled_error_file
        if path and Path(path).is_file():
            import cloudpickle

            return cloudpickle.loads(Path(path).read_bytes())
        return trial.get_pickled_error()
    except Exception:  # noqa: BLE001 - an unpicklable or missing error is just not a divergence
        return None


def param_names(values: dict[str, Any], taken: set[str] | None = None) -> dict[str, Any]:
    """`values` under names MLflow accepts as param keys: a command task's `+trainer.precision`,
    `~key`, `a;b` or `a//b` is logged as `_trainer.precision`, `_key`, `a_b`, `a__b` (as
    `store.metric_key` does for metrics; `/` kept where the path is plain); keys already in
    `taken` are left out, and two keys that clean to one name get `_2`, `_3`... in order."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = metric_key(str(key))
        norm = posixpath.normpath(name) if name else "_"
        if norm != name or norm == "." or norm.startswith(("..", "/")):
            name = name.replace("/", "_").replace("..", "__")
            name = "_" if name in ("", ".") else name
        if taken is not None and name in taken:
            continue
        base, n = name, 1
        while name in out:
            n += 1
            name = f"{base}_{n}"
        out[name] = value
    return out


def _param_text(value: Any) -> str:
    """An MLflow param value: text, at most MLflow's 6000 characters."""
    return str(value)[:6000]


def _last_line(message: str) -> str:
    """The exception line of a traceback: what a leaderboard can show."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else message


