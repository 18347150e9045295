"""Tune's experiment state, guarded: a resume never starts a sweep over behind the user's back.

    kept = keep_copy(exp_dir)                        # after a launch, and from StateCopy while it runs
    note = check_before_restore(exp_dir, sweep_file)  # before Tuner.restore: None, or "recovered ..."

`Tuner.restore` reads the newest `experiment_state-<session>.json` of the experiment (the largest
name: the session is a timestamp), the trials' statuses and checkpoints. When that file is
truncated or missing, Ray 2.60 logs "Failed to restore the run state", starts the experiment
over and trains finished trials again as new trials under the same MLflow parent run. So the
driver keeps a copy of the last state that parsed (`state_copy/` in the experiment: Tune copies
and syncs only the experiment's top-level files, so a subdirectory is left alone), and before a
restore checks the file Tune would read: a damaged one is moved aside and replaced by the copy
(said on the console), or, with no good copy, the resume is refused (a SweepConfigError naming the
file: exit 2). `refuse_silent_restart` is the backstop for damage this check cannot see (a
truncated searcher state makes Ray start over the same way). Works for a local directory and for
a URI (pyarrow's filesystem, as Ray uses it).
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

STATE_PATTERN = "experiment_state-*.json"  # TuneController.CKPT_FILE_TMPL, Ray 2.60
TUNER_PKL = "tuner.pkl"  # what Tuner.can_restore looks for
COPY_DIR = "state_copy"  # the last good experiment state, one file, under its original name
RESTORE_FAILED = "Failed to restore the run state."  # TuneController's log line before it starts over


def _fs(exp_dir: str):  # noqa: ANN202 - (pyarrow.fs.FileSystem, path in it)
    from sweeper.runner import _filesystem, _local_dir

    local = _local_dir(exp_dir)
    if local is not None:
        import pyarrow.fs

        return pyarrow.fs.LocalFileSystem(), str(local)
    return _filesystem(exp_dir)


def _listing(fs, path: str) -> list[str]:  # noqa: ANN001
    import pyarrow.fs

    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True, recursive=False))
    return [Path(i.path).name for i in infos if i.type == pyarrow.fs.FileType.File]


def _read(fs, path: str) -> bytes | None:  # noqa: ANN001
    try:
        with fs.open_input_stream(path) as fh:
            return fh.read()
    except (FileNotFoundError, OSError):
        return None


def _write(fs, path: str, data: bytes) -> None:  # noqa: ANN001
    """Write `data` to `path`; on a local disk through a temporary file and a rename, so a crash
    never leaves half a copy (an object store writes an object whole anyway)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with fs.open_output_stream(tmp) as fh:
        fh.write(data)
    fs.move(tmp, path)


def problem(data: bytes | None) -> str | None:
    """Why Tune could not restore from this experiment state; None if it can. Checks what
    `TuneController.resume` reads: a JSON object with `runner_data` and a list of
    `[trial state, run metadata]` pairs in `trial_data`."""
    if data is None:
        return "missing"
    try:
        state = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"damaged ({exc})"
    if not isinstance(state, dict) or not isinstance(state.get("runner_data"), dict):
        return "damaged (no runner_data)"
    trials = state.get("trial_data")
    if not isinstance(trials, list) or not all(isinstance(t, list) and len(t) == 2 for t in trials):
        return "damaged (no list of trials in trial_data)"
    return None


def newest_state(exp_dir: str) -> str | None:
    """The name of the experiment state file Tune would restore from; None if there is none."""
    fs, path = _fs(exp_dir)
    names = fnmatch.filter(_listing(fs, path), STATE_PATTERN)
    return max(names) if names else None


def keep_copy(exp_dir: str, last: tuple[str, int, float] | None = None) -> tuple[str, int, float] | None:
    """Copy the newest experiment state into `state_copy/` if it parses (a damaged one never
    replaces a good copy); returns what was seen (name, size, mtime), so a caller polling it can
    pass it back as `last` and skip reading a file that has not changed. None: nothing to copy."""
    import pyarrow.fs

    fs, path = _fs(exp_dir)
    name = newest_state(exp_dir)
    if name is None:
        return None
    info = fs.get_file_info(f"{path}/{name}")
    seen = (name, info.size or 0, info.mtime.timestamp() if info.mtime else 0.0)
    if seen == last:
        return seen
    data = _read(fs, f"{path}/{name}")
    if problem(data) is not None:  # half-written by a sync in progress: keep the previous copy
        return last
    fs.create_dir(f"{path}/{COPY_DIR}", recursive=True)
    _write(fs, f"{path}/{COPY_DIR}/{name}", data)
    for old in fnmatch.filter(_listing(fs, f"{path}/{COPY_DIR}"), STATE_PATTERN):
        if old != name:
            try:
                fs.delete_file(f"{path}/{COPY_DIR}/{old}")
            except (FileNotFoundError, OSError, pyarrow.ArrowException):
                pass
    return seen


def check_before_restore(exp_dir: str, sweep_file: str | Path) -> str | None:
    """Make sure `Tuner.restore(exp_dir)` will continue the sweep rather than start it over.

    None: the state Tune reads is sound. A message: it was damaged or missing and has been
    replaced by sweeper's copy (the damaged file kept beside it as `*.damaged-<time>`). Raises a
    SweepConfigError naming the file when there is no good copy either."""
    from sweeper.config import SweepConfigError

    from sweeper.config import redact_uri

    fs, path = _fs(exp_dir)
    name = newest_state(exp_dir)
    shown = redact_uri(exp_dir)  # a storage URI may carry a password
    why = problem(_read(fs, f"{path}/{name}")) if name else "missing"
    if why is None:
        return None
    copies = fnmatch.filter(_listing(fs, f"{path}/{COPY_DIR}"), STATE_PATTERN)
    copy = f"{path}/{COPY_DIR}/{max(copies)}" if copies else None
    data = _read(fs, copy) if copy else None
    where = f"{shown}/{name or STATE_PATTERN}"
    if problem(data) is not None:
        kept = f"; the copy sweeper keeps ({shown}/{COPY_DIR}/{Path(copy).name}) is {problem(data)} too" if copy \
            else f"; sweeper kept no copy of it ({shown}/{COPY_DIR}/)"
        raise SweepConfigError(where, None, f"{why}: Ray would start the sweep over and train its finished "
                               f"trials again{kept}. Restore the file from a backup, or start over with "
                               f"`sweeper launch {sweep_file} --fresh` (the old experiment is moved aside)")
    target = name or Path(copy).name
    if name:
        fs.move(f"{path}/{name}", f"{path}/{name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    _write(fs, f"{path}/{target}", data)
    return (f"{where} was {why}: restored the copy sweeper kept ({shown}/{COPY_DIR}/{Path(copy).name}); "
            "finished trials are not rerun, trials that ended after the copy was taken continue from the "
            "checkpoint it records")


def _silent_restart_error(exp_dir: str, sweep_file: str | Path, exc: BaseException | None) -> Exception:
    from sweeper.config import SweepConfigError, redact_uri

    return SweepConfigError(redact_uri(exp_dir), None, f"Ray could not restore the experiment's state ({exc!r}) "
                            "and would start the sweep over, training its finished trials again; stopped before "
                            "any trial ran. Restore the experiment's files from a backup, or start over with "
                            f"`sweeper launch {sweep_file} --fresh` (the old experiment is moved aside)")


class _RefuseRestart(logging.Filter):
    def __init__(self, exp_dir: str, sweep_file: str | Path) -> None:
        super().__init__()
        self.exp_dir, self.sweep_file = exp_dir, sweep_file

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == RESTORE_FAILED:
            raise _silent_restart_error(self.exp_dir, self.sweep_file, record.exc_info[1] if record.exc_info else None)
        return True


def refuse_silent_restart(exp_dir: str, sweep_file: str | Path) -> None:
    """Turn Ray's "Failed to restore the run state. Restarting experiment." into an error: Tune
    2.60 catches every restore error (a damaged searcher state as well as a damaged experiment
    state) and starts over unless `fail_fast`, which would also end the sweep at its first failed
    trial. The filter raises from Tune's logging call, inside its `except`, so `fit` raises."""
    log = logging.getLogger("ray.tune.execution.tune_controller")
    for old in [f for f in log.filters if isinstance(f, _RefuseRestart)]:
        log.removeFilter(old)
    log.addFilter(_RefuseRestart(exp_dir, sweep_file))


class StateCopy(Callback):
    """Refreshes `state_copy/` while the sweep runs, at most every `every_s` seconds, so that a
    driver killed mid-write (the state file truncated) resumes from a recent copy rather than
    the last launch's. A state of ~20 KB per trial is read and parsed only when it changed."""

    def __init__(self, exp_dir: str, every_s: float = 30.0) -> None:
        self.exp_dir, self.every_s = exp_dir, every_s
        self._next: float = 0.0
        self._seen: tuple[str, int, float] | None = None

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every_s
        try:
            self._seen = keep_copy(self.exp_dir, self._seen)
        except Exception as exc:  # noqa: BLE001 - a failed copy must not end the sweep
            logging.getLogger(__name__).warning("could not copy the experiment state: %s", exc)

    def __getstate__(self) -> dict[str, Any]:  # pickled into tuner.pkl: no clock, no last file seen
        return {"exp_dir": self.exp_dir, "every_s": self.every_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["exp_dir"], state["every_s"])


def adopt(tuner: Any, exp_dir: str) -> None:
    """On resume: an experiment launched before StateCopy existed gets one (Tune restores the
    launch's callbacks and takes no new ones; as `sweeper.console.adopt`, this reaches into Ray
    2.60's `Tuner._local_tuner`)."""
    run_config = getattr(getattr(tuner, "_local_tuner", None), "get_run_config", lambda: None)()
    if run_config is None:
        return
    callbacks = list(run_config.callbacks or [])
    if not any(isinstance(cb, StateCopy) for cb in callbacks):
        run_config.callbacks = [*callbacks, StateCopy(exp_dir)]
