"""What the end-to-end tests share: the `sweeper` CLI run as a user runs it, sweep files, a
sweep's runs read back from MLflow and Ray, free ports, Ray nodes and process sessions.

The CLI runs as a child process of this interpreter in the environment tests/conftest.py has
prepared for the whole session (a short private RAY_TMPDIR with its Ray auth token, an offline
model hub, a temporary SWEEPER_CACHE_DIR), with unbuffered output. tests/e2e is a package, so the
test modules import these as `from .conftest import ...`, wherever pytest is started from.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

SWEEPER = [sys.executable, "-m", "sweeper.cli"]
#: the `ray` CLI of this interpreter's environment
RAY = Path(sys.executable).parent / "ray"
#: the training scripts the `task: command` tests run
COMMAND_SCRIPTS = Path(__file__).resolve().parents[1] / "command_scripts"


# --- the CLI ----------------------------------------------------------------------------------

def sweeper_env(env: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """`env` (default: this process's environment) with unbuffered output, plus `extra`."""
    return {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1", **extra}


def run_sweeper(args: list[str], cwd: Path, *, timeout: float = 300, env: Mapping[str, str] | None = None,
                check: bool = False) -> subprocess.CompletedProcess:
    """`sweeper ARGS` in `cwd`, to its end, output captured (`env` default: `sweeper_env()`).
    With `check`, asserts that it exited 0 (the message: the last of its stdout and stderr)."""
    proc = subprocess.run([*SWEEPER, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=sweeper_env() if env is None else dict(env))
    if check:
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def start_sweeper(args: list[str], cwd: Path, *, env: Mapping[str, str] | None = None,
                  **popen: Any) -> subprocess.Popen:
    """`sweeper ARGS` in `cwd`, started and left running: text stdout with stderr merged into it,
    unless `popen` (more `subprocess.Popen` arguments) says otherwise."""
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, **popen}
    return subprocess.Popen([*SWEEPER, *args], cwd=cwd, env=sweeper_env() if env is None else dict(env), **popen)


def write_sweep(path: Path, *texts: str) -> Path:
    """Write a sweep file: the texts, each dedented, one after the other; returns `path`."""
    path.write_text("".join(textwrap.dedent(text) for text in texts))
    return path


def launch_sweep(cwd: Path, text: str, *extra: str, file: str = "sweep.yaml", timeout: float = 400,
                 env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Write `text` to `cwd/file` and `sweeper launch` it (with `extra` arguments) from `cwd`;
    asserts that the launch exited 0."""
    write_sweep(cwd / file, text)
    return run_sweeper(["launch", file, *extra], cwd, timeout=timeout, env=env, check=True)


# --- what a sweep left behind -------------------------------------------------------------------

def mlflow_client(cwd: Path):  # noqa: ANN201 (mlflow is imported lazily)
    """A client of the MLflow store a launch in `cwd` writes by default (`cwd/mlruns.db`)."""
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{cwd / 'mlruns.db'}")


def trial_runs(store: Path | Any, name: str, *, kind: str = "trial", **search: Any) -> list:
    """The runs of sweep `name` tagged `sweeper.kind` = `kind` (the trials; "sweep": the parent
    runs), `[]` while its experiment does not exist. `store`: the folder holding mlruns.db, or an
    MlflowClient; `search`: more `search_runs` arguments (max_results=...)."""
    client = mlflow_client(store) if isinstance(store, (str, os.PathLike)) else store
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], f"tags.`sweeper.kind` = '{kind}'", **search) if exp else []


def json_lines(text: str) -> list[dict[str, Any]]:
    """The records of a JSON-lines text (Ray's result.json), blank lines skipped."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def ray_results(exp_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Ray's own per-trial result log (one record per report, with `node_ip`, `pid`), by trial dir."""
    return {d.name: json_lines((d / "result.json").read_text()) for d in sorted(exp_dir.glob("trial_*"))}


# --- ports, processes, Ray nodes ----------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[3])


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def session_pids(sid: int) -> list[int]:
    return [pid for pid in all_pids() if (st := proc_stat(pid)) and st[1] == sid]


def kill_pids(pids: Iterable[int]) -> None:
    """SIGKILL each process, by PID; one that is gone already is skipped."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL every process of the session `proc` leads (it was started with a new session), by PID."""
    kill_pids(session_pids(proc.pid))
    proc.wait(timeout=30)


class RayNode:
    """A `ray start ARGS --block` in its own session, its log, and the IP it took."""

    def __init__(self, args: list[str], log: Path, env: Mapping[str, str] | None = None,
                 timeout: float = 90) -> None:
        self.log = log
        self.proc = subprocess.Popen([str(RAY), "start", *args, "--block"], stdout=log.open("w"),
                                     stderr=subprocess.STDOUT, env=None if env is None else dict(env),
                                     start_new_session=True)
        deadline = time.time() + timeout
        while "Ray runtime started" not in log.read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                kill_session(self.proc)
                pytest.fail(f"ray start did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        self.ip = re.search(r"Local node IP: (\S+)", log.read_text()).group(1)

    def raylet_pid(self) -> int:
        for pid in session_pids(self.proc.pid):
            try:
                if "raylet/raylet" in Path(f"/proc/{pid}/cmdline").read_text():
                    return pid
            except OSError:
                pass
        raise LookupError(f"no raylet in session {self.proc.pid}")

    def stop(self) -> None:
        kill_session(self.proc)
