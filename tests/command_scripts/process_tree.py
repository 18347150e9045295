"""A script whose processes try to outlive its trial, for the process-tree tests.

    python process_tree.py --mode hang|daemon|final_save --epochs 2 --pid_file PIDS [--save PATH]

hang: reports its last epoch, then never exits (and ignores SIGTERM with --ignore_term).
daemon: starts a daemon that calls setsid() (leaving the process group) and keeps stdout open,
    then reports its epochs and exits 0.
final_save: reports its last epoch, then takes `--save_s` seconds to write its final model to
    `--save` before exiting 0 by itself.
Every process it starts appends its pid to `--pid_file`. Standard library only (starts fast).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time


def report(epoch: int, score: float) -> None:
    print("SWEEPER_METRICS " + json.dumps({"epoch": epoch, "score": score}), flush=True)


def note_pid(path: str) -> None:
    with open(path, "a") as fh:
        fh.write(f"{os.getpid()}\n")


def start_daemon(pid_file: str) -> None:
    """The classic double fork with setsid(): a new session, reparented to init, stdout kept."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            note_pid(pid_file)
            while True:
                print("daemon: still here", flush=True)
                time.sleep(0.5)
        os._exit(0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["hang", "daemon", "final_save"], required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--pid_file", required=True)
    ap.add_argument("--save", default="", help="where the final model goes (default: $SWEEPER_TRIAL_DIR/final.pt)")
    ap.add_argument("--save_s", type=float, default=1.5)
    ap.add_argument("--ignore_term", type=str, default="false")
    args = ap.parse_args()
    note_pid(args.pid_file)
    if args.ignore_term == "true":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.mode == "daemon":
        start_daemon(args.pid_file)
        time.sleep(0.2)
    for epoch in range(1, args.epochs + 1):
        time.sleep(0.1)
        report(epoch, 0.1 * epoch)
    if args.mode == "hang":
        while True:
            time.sleep(1)
    if args.mode == "final_save":
        time.sleep(args.save_s)  # writing the final model
        with open(args.save or os.path.join(os.environ["SWEEPER_TRIAL_DIR"], "final.pt"), "w") as fh:
            fh.write("final model\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
