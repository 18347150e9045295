"""Start a command trial's process group so that nothing outlives the trial.

    python -S command_guard.py WORKER_PID GRACE_S -- /bin/sh -c "python train.py lr=0.01"

Run by `sweeper.tasks.command.CommandProcess` as a new session (its own process group). It forks
a *sentinel* into the group, then becomes the command (exec, so the command keeps this pid and the
exit code is the command's). The sentinel is double-forked, so it is not a child of the Ray worker:
when the worker dies without cleaning up (SIGKILL, an out-of-memory kill, Ray killing the actor
and its direct children, a lost driver), the sentinel sends the group SIGTERM, waits `GRACE_S`
and sends SIGKILL. It also ends the group once the command itself has exited, so a script's
stray children (data-loader workers, `nohup` helpers) do not linger.

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


def _others_in_group(pgid: int) -> bool:
    me = os.getpid()
    try:
        names = os.listdir("/proc")
    except OSError:
        return True  # cannot tell: wait the whole grace period
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _sentinel(worker: int, leader: int, grace: float) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM is for the command
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pgid = os.getpgid(0)
    while _alive(worker) and _alive(leader):
        time.sleep(0.5)
    try:
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _others_in_group(pgid):
            time.sleep(0.1)
    finally:
        os.killpg(pgid, signal.SIGKILL)  # ends this sentinel too


def main(argv: list[str]) -> None:
    worker, grace, sep, *command = argv
    if sep != "--" or not command:
        sys.exit("usage: command_guard.py WORKER_PID GRACE_S -- COMMAND...")
    leader = os.getpid()
    first = os.fork()
    if first == 0:  # first child: fork the sentinel and leave, so init adopts it
        if os.fork() == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)  # never hold the command's output pipes open
            os.closerange(3, 4096)
            try:
                _sentinel(int(worker), leader, float(grace))
            finally:
                os._exit(0)
        os._exit(0)
    os.waitpid(first, 0)  # reap the first child; the sentinel lives on
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
