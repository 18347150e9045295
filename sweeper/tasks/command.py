"""The command task: sweep a training script you already have (Hydra, argparse, Lightning, MMDet).

A command trial renders the trial's values into the command line (or the environment), runs it
as a subprocess in its own process group, streams its output to a log, and reads the metrics the
script reports while it runs, one epoch (or step, with `time_key: step`) at a time::

    trial = CommandTrial(spec, params, trial_dir=..., objective="val/hmean")
    try:
        for epoch, metrics in trial.epochs():   # blocks until the script finishes an epoch
            ...                                 # the trainable reports to Ray Tune here
            trial.at_end                        # True: the script exited 0 after this one
    finally:
        trial.stop()                            # every process it started ends (see below)

Metrics come from stdout lines ``SWEEPER_METRICS {"epoch": 3, "val/hmean": 0.97}`` (what
`sweeper.report.report` prints), or from a CSV / JSON-lines file the script appends to (a
Lightning CSVLogger's ``metrics.csv``). Records of the same epoch are merged; an epoch is
complete once its objective was seen and a later epoch started, the source was quiet for a
second, or the script ended. The record key holding the time is `time_key` (`epoch`, `step`, or
a list tried in order: MMEngine's validation lines carry the epoch as `step`). Nothing here
knows about Ray: the trainable drives it.

An epoch whose objective is NaN or infinite raises `NonFiniteLossError`, as a built-in task's
non-finite loss does: the trial is recorded as diverged, the value never becomes a best.

Nothing the script started outlives the trial: its processes are found by process group, by
parent links and by a per-trial marker in their environment (`command_guard.TOKEN_VAR`, which a
`setsid()` daemon keeps). When the script has exited, what it left running is ended at once. When
its work is done (it reported its planned last epoch, `planned`) but it runs on, `stop` gives it
`stop_grace_s` to exit by itself (a final save is not cut short), then ends it; a trial stopped
before that (ASHA) gets SIGTERM, then SIGKILL after `stop_grace_s`.
"""
from __future__ import annotations

import collections
import csv
import glob
import io
import json
import math
import os
import queue
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from sweeper.results import NonFiniteLossError
from sweeper.tasks.command_guard import end_pids

METRICS_PREFIX = "SWEEPER_METRICS "
GUARD = str(Path(__file__).with_name("command_guard.py"))
STATE_FILE = "sweeper_command.json"  # our bookkeeping inside a persisted checkpoint
SETTLE_S = 1.0  # quiet time after which the latest epoch's records are taken as complete


class CommandFailed(RuntimeError):
    """The command exited non-zero or never reported the objective; the message says what it printed."""


# --------------------------------------------------------------------------- rendering
def format_value(value: Any) -> str:
    """A value as Hydra / argparse / env text: true/false, null, repr of floats, [a,b] lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def _hydra_value(value: Any) -> str:
    """Strings with Hydra grammar characters (`=`, `,`, spaces, brackets...) go in Hydra quotes."""
    text = format_value(value)
    if isinstance(value, str) and not re.fullmatch(r"[\w./+\-]*", value):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


def env_name(key: str) -> str:
    """`models.optimizer.lr` -> `SWEEPER_PARAM_MODELS_OPTIMIZER_LR`."""
    return "SWEEPER_PARAM_" + re.sub(r"[^A-Za-z0-9]", "_", key).upper()


def render_overrides(params: dict[str, Any], style: str) -> tuple[list[str], dict[str, str]]:
    """Dotted key -> value as command-line words (hydra, argparse) or environment variables (env)."""
    if style == "hydra":
        return [f"{k}={_hydra_value(v)}" for k, v in params.items()], {}
    if style == "argparse":
        return [w for k, v in params.items() for w in (f"--{k}", format_value(v))], {}
    if style == "env":
        return [], {env_name(k): format_value(v) for k, v in params.items()}
    raise ValueError(f"unknown overrides style {style!r}")


def render_command(run: str, params: dict[str, Any], style: str, *, trial_dir: str,
                   python: str = sys.executable) -> tuple[str, dict[str, str]]:
    """The exact shell command line of a trial, and the env vars it adds."""
    words, env = render_overrides(params, style)
    text = run.replace("{overrides}", " ".join(shlex.quote(w) for w in words))
    text = text.replace("{python}", shlex.quote(python)).replace("{trial_dir}", shlex.quote(trial_dir))
    return text, env


def thread_env(cpus: float) -> dict[str, str]:
    """Thread limits from the trial's CPUs, for every common math library (over-subscription is slow)."""
    n = str(max(1, int(cpus)))
    return {k: n for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                           "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")}


# --------------------------------------------------------------------------- metrics
def parse_metrics_line(line: str) -> dict[str, Any] | None:
    """`SWEEPER_METRICS {...}` -> the dict; None for any other line (or a malformed one)."""
    start = line.find(METRICS_PREFIX)
    if start < 0:
        return None
    try:
        record = json.loads(line[start + len(METRICS_PREFIX):])
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip():
        try:
            return float(value)
        except ValueError:
            return None
    return None


class EpochMetrics:
    """Merges metric records per epoch (or step) and hands out each one once it is complete.

    Epochs are renumbered from 1 (ASHA's time unit): a script that counts from 0, as Lightning
    does, has its epoch 0 reported as 1. Steps (`time_key` starting with `step`) are taken as the
    script reports them: a step count has no "first" to renumber (a record at step 0, an
    evaluation before training, is not reported). Times at or below `last_reported` are ignored,
    so a script that resumes from an older checkpoint and repeats an epoch is not reported twice.
    """

    def __init__(self, objective: str, first_epoch: int | None = None, last_reported: int = 0,
                 time_key: str | list[str] = "epoch") -> None:
        self.objective = objective
        self.epoch_keys = [time_key] if isinstance(time_key, str) else list(time_key)
        if self.epoch_keys[0] == "step":
            first_epoch = 0  # taken as reported: "renumbered" from 0 to 0
        self.first_epoch = first_epoch
        self.last_reported = last_reported
        self.pending: dict[int, dict[str, float]] = {}
        self.records = 0
        self.keys: set[str] = set()
        self.last_change = time.monotonic()

    def add(self, record: dict[str, Any]) -> None:
        self.records += 1
        self.keys.update(record)
        key = next((k for k in self.epoch_keys if _number(record.get(k)) is not None), None)
        if key is None:
            return
        raw_epoch = _number(record[key])
        assert raw_epoch is not None
        if self.first_epoch is None:
            self.first_epoch = 0 if raw_epoch == 0 else 1
        epoch = int(raw_epoch) - self.first_epoch + (0 if self.epoch_keys[0] == "step" else 1)
        if epoch <= self.last_reported:
            return
        values = {k: n for k, v in record.items() if k not in self.epoch_keys and (n := _number(v)) is not None}
        merged = self.pending.setdefault(epoch, {})
        if any(merged.get(k) != v for k, v in values.items()):
            merged.update(values)
            self.last_change = time.monotonic()

    def ready(self, final: bool = False) -> list[tuple[int, dict[str, float]]]:
        """Complete epochs, oldest first: objective seen and (a later epoch began, quiet, or final)."""
        out = []
        quiet = time.monotonic() - self.last_change >= SETTLE_S
        newest = max(self.pending, default=0)
        for epoch in sorted(self.pending):
            metrics = self.pending[epoch]
            if self.objective not in metrics:
                if epoch < newest or final:  # the script moved on without the objective for it
                    del self.pending[epoch]
                continue
            if epoch < newest or quiet or final:
                out.append((epoch, self.pending.pop(epoch)))
                self.last_reported = epoch
        return out

    def describe_seen(self) -> str:
        if not self.records:
            return "no metric records at all"
        return f"{self.records} metric records with keys {', '.join(sorted(self.keys))}"


class MetricsFile:
    """A CSV or JSON-lines metrics file the script writes, read again whenever it changes.

    CSV files are re-read whole (Lightning's CSVLogger rewrites the file when a new column
    appears) and only rows not handed out before are returned; JSON lines are read from where
    the last read stopped. A last line without its
    newline is left for the next read. `pattern` may hold globs: the newest match is read.
    """

    def __init__(self, kind: str, pattern: str) -> None:
        self.kind, self.pattern = kind, pattern
        self.path: str | None = None
        self.signature: tuple[float, int] | None = None
        self.offset = 0  # jsonl: bytes consumed; csv: rows handed out

    def _current(self) -> str | None:
        matches = glob.glob(self.pattern) if glob.has_magic(self.pattern) else [self.pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        return max(matches, key=os.path.getmtime) if matches else None

    def poll(self) -> list[dict[str, Any]]:
        path = self._current()
        if path is None:
            return []
        st = os.stat(path)
        if path != self.path or (self.kind == "jsonl" and st.st_size < self.offset):
            self.path, self.offset, self.signature = path, 0, None
        if self.signature == (st.st_mtime, st.st_size):
            return []
        self.signature = (st.st_mtime, st.st_size)
        with open(path, encoding="utf-8", errors="replace") as fh:
            if self.kind == "jsonl":
                fh.seek(self.offset)
                text = fh.read()
            else:
                text = fh.read()
        complete = text[: text.rfind("\n") + 1]
        if self.kind == "jsonl":
            self.offset += len(complete.encode("utf-8"))
            records = []
            for line in complete.splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
            return records
        rows = [dict(row) for row in csv.DictReader(io.StringIO(complete))]
        if len(rows) < self.offset:  # rewritten shorter: a new run of the script
            self.offset = 0
        new, self.offset = rows[self.offset:], len(rows)
        return new


# --------------------------------------------------------------------------- the process
class CommandProcess:
    """The command in its own process group, output streamed to `log_path`; every process it starts
    carries `SWEEPER_TRIAL_TOKEN=<token>` (unique to this process) in its environment."""

    def __init__(self, command: str, *, cwd: str, env: dict[str, str], log_path: Path,
                 stop_grace_s: float = 10.0, tail_lines: int = 30, shown: str | None = None) -> None:
        self.command, self.grace = command, stop_grace_s
        self.stdout_lines: queue.Queue[str] = queue.Queue()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._log = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
        self._log_lock = threading.Lock()
        self._log.write(f"$ {shown or command}\n")
        self.token = secrets.token_hex(12)
        self.proc = subprocess.Popen(
            [sys.executable, "-S", GUARD, "--token", self.token, str(os.getpid()), str(stop_grace_s), "--",
             "/bin/sh", "-c", command],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.pgid = self.proc.pid  # a new session: the command leads its own group
        self._pumps = [threading.Thread(target=self._pump, args=(self.proc.stdout, True), daemon=True),
                       threading.Thread(target=self._pump, args=(self.proc.stderr, False), daemon=True)]
        for t in self._pumps:
            t.start()

    def _pump(self, stream: Any, is_stdout: bool) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            with self._log_lock:
                self._log.write(line + "\n")
            if is_stdout:
                self.stdout_lines.put(line)
            else:
                self.stderr_tail.append(line)
        stream.close()

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait_output(self) -> None:
        """After the command exited: let the pumps drain what it wrote."""
        for t in self._pumps:
            t.join(timeout=10)

    def _killpg(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def end_rest(self) -> None:
        """After the command exited: end what it left running (a daemon holding its stdout open
        would otherwise keep the trial waiting for output that never ends)."""
        end_pids(self.pgid, self.pgid, self.token, self.grace)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM to every process of the trial, SIGKILL after `grace` (default `stop_grace_s`)
        to those left; leaves no process behind."""
        end_pids(self.pgid, self.pgid, self.token, self.grace if grace is None else grace)
        self._killpg(signal.SIGKILL)  # the sentinel
        self.proc.wait()
        self.wait_output()
        with self._log_lock:
            if not self._log.closed:
                self._log.close()

    def finish(self) -> None:
        """The command's work is done: let it exit by itself (a final save after the last report)
        for most of `stop_grace_s`, then stop it with what is left of that grace period."""
        deadline = time.monotonic() + self.grace
        try:
            self.proc.wait(timeout=max(0.0, self.grace - min(1.0, self.grace / 2)))
        except subprocess.TimeoutExpired:
            pass
        self.stop(grace=max(0.0, deadline - time.monotonic()))


# --------------------------------------------------------------------------- one trial
class CommandTrial:
    """One trial of the command task: start, read metrics per epoch, stop, explain failures."""

    def __init__(self, command: dict[str, Any], params: dict[str, Any], *, trial_dir: str, objective: str,
                 cpus: float = 1, gpu_ids: list[str] | None = None, first_epoch: int | None = None,
                 last_reported: int = 0, checkpoint_dir: str | None = None, log_name: str = "command.log") -> None:
        self.spec = command
        self.trial_dir = Path(trial_dir)
        self.trial_dir.mkdir(parents=True, exist_ok=True)
        self.objective = objective
        self.log_path = self.trial_dir / log_name
        # beside the trial dir, not in it: files under the trial dir are kept as the trial's artifacts,
        # checkpoints are persisted separately, with the reports
        self.checkpoint_dir = Path(checkpoint_dir or f"{self.trial_dir}.checkpoint")
        self.line, extra_env = render_command(command["run"], params, command["overrides"],
                                              trial_dir=str(self.trial_dir))
        # what the log, errors and MLflow show: secret-looking values masked (sweeper.config.redact)
        from sweeper.config import redact

        self.shown_line = render_command(command["run"], redact(params), command["overrides"],
                                         trial_dir=str(self.trial_dir))[0]
        env = {**os.environ, **thread_env(cpus), **extra_env, **command.get("env", {}),
               "SWEEPER_TRIAL_DIR": str(self.trial_dir), "PYTHONUNBUFFERED": "1"}
        if gpu_ids is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)  # exactly what the trial was given
        if command.get("checkpoint_dir_env"):
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            env[command["checkpoint_dir_env"]] = str(self.checkpoint_dir)
        self.env = env
        self.metrics = EpochMetrics(objective, first_epoch if first_epoch is not None else command.get("first_epoch"),
                                    last_reported, command.get("time_key", command.get("epoch_key", "epoch")))
        kind, _, pattern = command.get("metrics", "stdout").partition(":")
        self.file = MetricsFile(kind, pattern.replace("{trial_dir}", str(self.trial_dir))) if pattern else None
        self.process: CommandProcess | None = None
        #: the trial's planned length (epochs or steps; None: the script alone knows it), set by the
        #: trainable: once the script reported it, the trial's work is done even if the script runs on
        self.planned: int | None = None
        #: set while `epochs()` hands out the last epoch of a script that has exited 0: the trainable
        #: can then say, in that epoch's own report, that the script ended by itself
        self.at_end = False

    def start(self) -> None:
        self.process = CommandProcess(self.line, cwd=self.spec["workdir"], env=self.env, log_path=self.log_path,
                                      stop_grace_s=float(self.spec.get("stop_grace_s", 10)), shown=self.shown_line)

    def _collect(self) -> None:
        assert self.process is not None
        while True:
            try:
                line = self.process.stdout_lines.get_nowait()
            except queue.Empty:
                break
            if self.file is None and (record := parse_metrics_line(line)) is not None:
                self.metrics.add(record)
        if self.file is not None:
            for record in self.file.poll():
                self.metrics.add(record)

    def epochs(self, poll_s: float = 0.2) -> Iterator[tuple[int, dict[str, float]]]:
        """Yield (epoch, metrics) as the script completes epochs; raise CommandFailed on failure."""
        if self.process is None:
            self.start()
        assert self.process is not None
        while True:
            rc = self.process.poll()
            if rc is not None:
                self.process.end_rest()
                self.process.wait_output()
            self._collect()
            ready = self.metrics.ready(final=rc is not None)
            for i, (epoch, metrics) in enumerate(ready):
                value = metrics.get(self.objective)
                if value is not None and not math.isfinite(value):
                    raise NonFiniteLossError(f"epoch {epoch}: the command reported {self.objective} = {value} "
                                             f"(diverged): {self.shown_line}")
                self.at_end = rc == 0 and i == len(ready) - 1
                yield epoch, metrics
            if rc is not None:
                break
            if self.work_done:
                return  # it reported its last planned epoch and runs on: `stop` gives it its grace period
            time.sleep(poll_s)
        if rc != 0:
            tail = "\n".join(self.process.stderr_tail) or "(nothing on stderr)"
            how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
            raise CommandFailed(f"command {how}: {self.shown_line}\nlast lines of stderr:\n{tail}")
        if self.metrics.last_reported == 0:
            source = self.spec.get("metrics", "stdout")
            keys = self.metrics.epoch_keys
            raise CommandFailed(f"command exited 0 but never reported {self.objective!r} in a record with "
                                f"{' or '.join(f'`{k}`' for k in keys)} (command.time_key; metrics: {source}); it "
                                f"wrote {self.metrics.describe_seen()}. Print "
                                f"`{METRICS_PREFIX}{{\"{keys[0]}\": 1, \"{self.objective}\": ...}}` lines "
                                "(sweeper.report.report does), point `command.metrics` at its log file, or set "
                                "`command.time_key` to the key(s) its records carry (MMEngine: [epoch, step])")

    @property
    def work_done(self) -> bool:
        """The script reported the trial's planned last epoch (or step)."""
        return self.planned is not None and self.metrics.last_reported >= self.planned

    def stop(self) -> None:
        """End every process of the trial (gently when its work is done, see `CommandProcess.finish`);
        the script's checkpoints were persisted with the reports."""
        if self.process is not None:
            if self.work_done and self.process.poll() is None:
                self.process.finish()
            else:
                self.process.stop()
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

    def restore(self, saved: Path) -> dict[str, Any]:
        """Put a persisted checkpoint back where the script looks; return our bookkeeping."""
        if self.checkpoint_dir.exists():
            shutil.rmtree(self.checkpoint_dir)
        shutil.copytree(saved, self.checkpoint_dir, ignore=shutil.ignore_patterns(STATE_FILE))
        state_file = Path(saved) / STATE_FILE
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        self.metrics.last_reported = int(state.get("epoch", 0))
        if state.get("first_epoch") is not None and self.metrics.first_epoch is None:
            self.metrics.first_epoch = int(state["first_epoch"])
        return state

    def snapshot(self, dest: Path, state: dict[str, Any]) -> None:
        """Copy the script's checkpoint directory (as it is now) plus our bookkeeping into `dest`."""
        if self.checkpoint_dir.is_dir():
            shutil.copytree(self.checkpoint_dir, dest, dirs_exist_ok=True)
        dest.mkdir(parents=True, exist_ok=True)
        (dest / STATE_FILE).write_text(json.dumps({**state, "first_epoch": self.metrics.first_epoch}))
