"""Start a command trial's process group so that nothing outlives the trial.

    python -S command_guard.py WORKER_PID GRACE_S -- /bin/sh -c "python train.py lr=0.01"

Run by `sweeper.tasks.command.CommandProcess` as a new session (its own process group). It forks
a *sentinel* into the group, then becomes the command (exec, so the command keeps this pid and the
exit code is the command's). The sentinel is double-forked, so it is not a child of the Ray worker:
when the worker dies without cleaning up (SIGKILL, an out-of-memory kill, Ray killing the actor
and its direct children, a lost driver), the sentinel sends the group SIGTERM, waits `GRACE_S`
and sends SIGKILL. It also ends the group once the command itself has exited, so a script's
stray children (data-loader workers, `nohup` helpers) do not linger.

The group is not the whole tree: a daemon that calls `setsid()` leaves it. So the command runs
with a per-trial marker in its environment (`TOKEN_VAR`, given here as `--token`, set only for the
command, not for the sentinel), which every process it starts inherits whatever group or session
it moves to; `trial_pids` finds the group, the leader's descendants (walking /proc parent links)
and every process whose /proc/PID/environ carries the marker, and `end_pids` ends them all.

Standard library only: it must start in milliseconds in any Python.
"""
from __future__ import annotations

import os
import signal
import sys
import time


def _alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


#: the environment variable that marks every process of one trial (its value is unique per trial)
TOKEN_VAR = "SWEEPER_TRIAL_TOKEN"


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every live (non-zombie) process; {} without /proc."""
    out: dict[int, tuple[int, int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X"):
            out[int(name)] = (int(fields[1]), int(fields[2]))
    return out


def _has_token(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return marker in fh.read().split(b"\0")
    except OSError:  # gone, or not ours to read
        return False


def trial_pids(leader: int, pgid: int, token: str | None) -> set[int]:
    """Every live process of the trial except the caller and the sentinel: the command's process
    group, the leader and its descendants (by parent links), and every process whose environment
    carries `TOKEN_VAR=token` (what a `setsid()` daemon, reparented to init, still has)."""
    procs = _processes()
    me = os.getpid()
    marker = f"{TOKEN_VAR}={token}".encode() if token else None
    found = {p for p, (_, g) in procs.items() if g == pgid}
    if leader in procs:
        found.add(leader)
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(p)
    stack = list(found)
    while stack:  # descendants of the group's members, wherever they moved
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    if marker is not None:
        found |= {p for p in procs if p not in found and _has_token(p, marker)}
        stack = list(found)
        while stack:  # and the descendants of the marked ones (an `env -i` grandchild)
            for child in children.get(stack.pop(), []):
                if child not in found:
                    found.add(child)
                    stack.append(child)
    found.discard(me)
    return {p for p in found if not (p != leader and procs.get(p, (0, 0))[1] == pgid and _is_sentinel(p))}


def _is_sentinel(pid: int) -> bool:
    """The sentinel ignores SIGTERM and is ended last, by the group's SIGKILL; told by its argv."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"command_guard.py" in fh.read()
    except OSError:
        return False


def _signal(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def end_pids(leader: int, pgid: int, token: str | None, grace: float, *, term: bool = True) -> None:
    """End the trial's processes: SIGTERM (if `term`), up to `grace` seconds for them to exit, then
    SIGKILL to whatever is left, scanning again each round (a dying process may still fork)."""
    deadline = time.monotonic() + grace
    pids = trial_pids(leader, pgid, token)
    if term:
        _signal(pids, signal.SIGTERM)
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = trial_pids(leader, pgid, token)
    for _ in range(5):
        if not pids:
            break
        _signal(pids, signal.SIGKILL)
        time.sleep(0.05)
        pids = trial_pids(leader, pgid, token)


def _sentinel(worker: int, leader: int, grace: float, token: str | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM is for the command
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pgid = os.getpgid(0)
    while _alive(worker) and _alive(leader):
        time.sleep(0.5)
    try:
        end_pids(leader, pgid, token, grace)
    finally:
        os.killpg(pgid, signal.SIGKILL)  # ends this sentinel too


def main(argv: list[str]) -> None:
    token = None
    if argv[:1] == ["--token"]:
        token, argv = argv[1], argv[2:]
    worker, grace, sep, *command = argv
    if sep != "--" or not command:
        sys.exit("usage: command_guard.py [--token TOKEN] WORKER_PID GRACE_S -- COMMAND...")
    leader = os.getpid()
    first = os.fork()
    if first == 0:  # first child: fork the sentinel and leave, so init adopts it
        if os.fork() == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)  # never hold the command's output pipes open
            os.closerange(3, 4096)
            try:
                _sentinel(int(worker), leader, float(grace), token)
            finally:
                os._exit(0)
        os._exit(0)
    os.waitpid(first, 0)  # reap the first child; the sentinel lives on
    env = dict(os.environ)
    if token:
        env[TOKEN_VAR] = token  # for the command and all it starts; the sentinel's environment lacks it
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main(sys.argv[1:])
