"""The console of a real launch (real Ray, Optuna, MLflow; the noop task, seconds per trial).

Piped (CI, `| tee`, this test's pipe): one plain line per trial event, the values MLflow records,
and none of Ray's tables. On a terminal (a pseudo-terminal here): the live view's headings.
"""
from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from .conftest import SWEEPER, launch_sweep, sweeper_env, trial_runs, write_sweep

pytestmark = pytest.mark.slow

SWEEP = """
name: {name}
task: noop
base: {{train: {{epochs: 2, sleep_s: 0.05}}}}
search:
  x: {{uniform: [0.0, 1.0]}}
  y: {{uniform: [0.0, 1.0]}}
objective: {{metric: score, mode: max}}
scheduler: {{name: fifo}}
budget: {{num_samples: 3, max_concurrent: 1}}
"""
#: what Ray's own console prints (its experiment box, trial table, result panels)
RAY_MARKERS = ("Trial status", "│ Trial name", "Trial name", "Configuration for experiment",
               "View detailed results here", "Trial progress")
EVENT = re.compile(r"^\[\s*[0-9hms]+\] (.*)$")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


def test_a_piped_launch_prints_one_line_per_trial_event_and_no_ray_table(tmp_path: Path) -> None:
    proc = launch_sweep(tmp_path, SWEEP.format(name="plain"))
    out = proc.stdout
    for marker in RAY_MARKERS:
        assert marker not in out + proc.stderr, marker
    assert "\x1b[" not in out  # no live view, no colours in a pipe
    events = [m.group(1) for line in out.splitlines() if (m := EVENT.match(line))]
    runs = {r.data.tags["sweeper.trial_id"]: r for r in trial_runs(tmp_path, "plain")}
    assert len(runs) == 3

    started = [re.fullmatch(r"trial (\w+) started: x=\S+ y=\S+", e) for e in events if " started: " in e]
    assert sorted(m.group(1) for m in started if m) == sorted(runs)
    ends = [re.fullmatch(r"trial (\w+) finished \(completed\) at epoch 2: score (\S+)", e)
            for e in events if " finished " in e]
    assert sorted(m.group(1) for m in ends if m) == sorted(runs)
    for m in ends:  # the value MLflow records as the trial's best objective
        assert m.group(2) == f"{runs[m.group(1)].data.metrics['best_objective']:.4g}"
    bests = [re.fullmatch(r"new best: trial (\w+) score (\S+) \(max\): x=\S+ y=\S+", e)
             for e in events if e.startswith("new best")]
    assert bests and all(bests)
    values = [float(m.group(2)) for m in bests]
    assert values == sorted(values) and len(set(values)) == len(values)  # each beats the one before
    top = max(runs.values(), key=lambda r: r.data.metrics["best_objective"])
    assert bests[-1].group(1) == top.data.tags["sweeper.trial_id"]
    assert len(events) == 3 + 3 + len(bests)  # started, finished, new bests: nothing per epoch
    logged = (tmp_path / "runs" / "plain" / "console.log").read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in logged] == [line for line in out.splitlines() if EVENT.match(line)]
    # the summary and leaderboard the CLI printed before stay
    assert "plain: 3 finished, 0 stopped early by ASHA, 0 failed of 3 trials" in out
    assert "plain: best max score first" in out


def _run_in_pty(args: list[str], cwd: Path, timeout: float = 400) -> tuple[int, str]:
    """Run `sweeper ARGS` with a 120x40 pseudo-terminal as its stdin, stdout and stderr, as a
    person's terminal would be; returns its exit code and everything it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([*SWEEPER, *args], cwd=cwd, stdin=slave, stdout=slave, stderr=slave,
                            env=sweeper_env(TERM="xterm-256color"), start_new_session=True)
    os.close(slave)
    chunks, deadline = [], time.time() + timeout
    try:
        while time.time() < deadline:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, b"".join(chunks).decode(errors="replace")


def test_a_launch_on_a_terminal_shows_the_live_view(tmp_path: Path) -> None:
    write_sweep(tmp_path / "sweep.yaml", SWEEP.format(name="live"))
    code, raw = _run_in_pty(["launch", "sweep.yaml"], tmp_path)
    text = ANSI.sub("", raw)
    assert code == 0, text[-4000:]
    assert "\x1b[" in raw  # the view is redrawn in place
    for heading in ("sweep live", "elapsed", "left ~", "trials done", "running ", "finished ", "stopped ",
                    "failed ", "pending ", "best score (max):", "score (latest)"):
        assert heading in text, heading
    assert re.search(r"\d/3 trials done", text)
    for marker in RAY_MARKERS:
        assert marker not in text, marker
    assert "live: 3 finished, 0 stopped early by ASHA, 0 failed of 3 trials" in text  # the summary after it
    assert len(trial_runs(tmp_path, "live")) == 3
    logged = (tmp_path / "runs" / "live" / "console.log").read_text()  # what the view showed, kept
    assert logged.count(" started: ") == 3 and logged.count(" finished (completed) ") == 3
