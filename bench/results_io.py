"""How every benchmark records a result: the figures plus where and when they were measured
(the commit, the time, the machine and library versions), written as JSON under bench/results/
and echoed to stdout. Also how the benchmarks run a child process (`sweeper launch` as a user
would, via common.launch_sweep): timed from start to exit, with its peak memory read from /proc."""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def environment() -> dict[str, Any]:
    """The machine and the library versions a figure depends on (without importing them)."""
    versions = {}
    for name in ("torch", "torchvision", "timm", "ray", "optuna", "mlflow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"machine": f"{platform.machine()} {os.cpu_count()} CPUs", "python": platform.python_version(),
            "versions": versions, "load_avg_1m": round(os.getloadavg()[0], 2)}


def write_result(result: dict[str, Any], out: Path) -> None:
    """Write `result` to `out` with the commit (short and full; `dirty` when the tree had
    uncommitted changes, so the figures may not match that commit exactly) and the time."""
    result = {**result, "git": _git("rev-parse", "--short", "HEAD"), "commit": _git("rev-parse", "HEAD"),
              "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
              "when": time.strftime("%Y-%m-%d %H:%M")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def bench_env() -> dict[str, str]:
    """The environment of a benchmark's child processes: offline, unbuffered, and a short
    private RAY_TMPDIR (Ray's socket paths must stay under 107 bytes)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray", dir="/tmp")}


def peak_rss_mb(pid: int) -> float | None:
    """The process's high-water RSS (VmHWM), MB; None once it is gone (Linux /proc only).
    Also read by tests/e2e/test_load.py."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_child(argv: list[str], cwd: Path, env: dict[str, str] | None = None, poll_s: float = 0.2) -> dict[str, Any]:
    """Run a command to its end; returns wall_s (start to exit), peak_rss_mb of the process
    itself (the Ray driver, for a sweep), returncode and the output. Raises on a non-zero exit."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env or bench_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
        time.sleep(poll_s)
    wall = time.perf_counter() - t0
    reader.join(timeout=30)
    text = "".join(out)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} (in {cwd}) exited {proc.returncode}:\n{text[-4000:]}")
    return {"wall_s": wall, "peak_rss_mb": round(peak, 1), "returncode": proc.returncode, "output": text}


def remove_work(work: Path, keep: bool) -> None:
    """Remove a benchmark's temporary directory once its result is written (a sweep's checkpoints
    take gigabytes), unless asked to keep it; a failed run leaves it for inspection."""
    if keep:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
