"""`sweeper ui` in a real browser: a real 3-trial sweep, a real `sweeper ui` (MLflow's server),
and headless Chromium (Debian's, driven by Playwright) looking at what a user sees: the three
trials by name, best objective first, the searched values as columns, no GenAI overview.
Then `sweeper report`'s report.html in the same browser.

Screenshots and the measurements (time from `sweeper ui` to a rendered leaderboard, the memory
of its process tree) are written to the test's tmp dir. `SWEEPER_DOCS_SCREENSHOTS=1` also copies
the screenshots to docs/mlflow-ui.png and docs/report.png (the README's pictures).

Without Chromium or Playwright the test skips locally, and fails under CI (env `CI` set).
"""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import free_port, kill_session, launch_sweep, proc_stat, run_sweeper, start_sweeper, trial_runs

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "docs"
NAME = "uibrowser"
SWEEP = f"""
name: {NAME}
task: noop
base: {{train: {{epochs: 2, sleep_s: 0}}}}
search:
  x: {{uniform: [0.0, 1.0]}}
  y: {{uniform: [0.0, 1.0]}}
objective: {{metric: score, mode: max}}
search_alg: {{name: random, seed: 0}}
scheduler: {{name: fifo}}
budget: {{num_samples: 3, max_concurrent: 2}}
resources: {{cpu: 1}}
"""
#: what MLflow's GenAI overview shows and the runs page does not
GENAI_OVERVIEW = ["Token Usage", "Tokens per Trace", "Cost Breakdown"]


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, with Playwright to drive it; skips (fails under CI) without them."""
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright is not installed (make install: it is a dev extra)"
    if exe is None:
        reason = "Debian's chromium is not installed (apt-get install -y chromium; .ci/run does it)"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must provide it", pytrace=False)
        pytest.skip(reason)
    return exe


def test_sweeper_ui_opens_on_the_leaderboard_in_a_real_browser(tmp_path: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    launched = launch_sweep(tmp_path, SWEEP)
    assert f"MLflow UI: sweeper ui {NAME}  (serves http://127.0.0.1:5000/#/experiments/" in launched.stdout
    runs = trial_runs(tmp_path, NAME)
    expected = sorted(runs, key=lambda r: -r.data.metrics["best_objective"])
    assert len(expected) == 3

    port = free_port()
    t0 = time.monotonic()
    proc = start_sweeper(["ui", NAME, "--port", str(port)], tmp_path, start_new_session=True)
    lines = _lines(proc)
    measured: dict[str, Any] = {}
    try:
        url = _wait_for(lines, rf"(http://127\.0\.0\.1:{port}/#/experiments/\S+)", timeout=180)
        measured["sweeper_ui_to_url_s"] = round(time.monotonic() - t0, 2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                                                        "--disable-dev-shm-usage"])
            # a fresh profile, on a screen wide enough that the grid renders every column it has
            page = browser.new_context(viewport={"width": 1920, "height": 900}).new_page()
            page.goto(url)
            page.wait_for_function("n => document.querySelectorAll('.ag-center-cols-container .ag-row').length >= n",
                                   arg=3, timeout=120_000)
            page.wait_for_timeout(500)  # the last cells of the first paint
            measured["sweeper_ui_to_rendered_leaderboard_s"] = round(time.monotonic() - t0, 2)
            page.screenshot(path=str(tmp_path / "mlflow-ui-fresh-profile.png"))
            body = page.inner_text("body")
            close = page.locator("button[aria-label='Close']")  # MLflow's assistant panel (stays closed once closed)
            if close.count():
                close.first.click()
                page.wait_for_timeout(500)
            table = _table(page)

            # what a user sees: the three trials, best objective first, with their searched values
            names = [row["attributes.`Run Name`"].splitlines()[-1] for row in table]  # after its colour chip
            assert names == [r.info.run_name for r in expected]
            shown = [float(row["metrics.`best_objective`"]) for row in table]
            assert shown == sorted(shown, reverse=True)
            assert shown == pytest.approx([r.data.metrics["best_objective"] for r in expected], abs=1e-3)
            for row, run in zip(table, expected):
                assert float(row["params.`x`"]) == pytest.approx(float(run.data.params["x"]), abs=1e-3)
                assert float(row["params.`y`"]) == pytest.approx(float(run.data.params["y"]), abs=1e-3)
                assert (row["tags.`sweeper.status`"], row["tags.`sweeper.stop_reason`"]) == ("finished", "completed")
                assert row["metrics.`epoch`"] == "2"
            headers = page.eval_on_selector_all(".ag-header-cell", "cs => cs.map(c => c.innerText.trim())")
            assert {"x", "y", "best_objective", "score", "sweeper.status", "sweeper.stop_reason", "epoch"} <= set(headers)
            assert "/runs" in page.url and not any(word in body for word in GENAI_OVERVIEW)
            page.set_viewport_size({"width": 1600, "height": 560})
            page.wait_for_timeout(500)
            page.screenshot(path=str(tmp_path / "mlflow-ui.png"))
            measured.update(_memory(proc.pid))

            # against a tracking server (this one), `sweeper ui` points at its UI and starts nothing
            pointed = run_sweeper(["ui", NAME, "--tracking-uri", f"http://127.0.0.1:{port}"], tmp_path, timeout=120,
                                  check=True)
            assert url in pointed.stdout and "Ctrl-C" not in pointed.stdout

            # the report, as `sweeper report` writes it, in the same browser
            run_sweeper(["report", NAME], tmp_path, check=True)
            page.set_viewport_size({"width": 1100, "height": 900})
            page.goto((tmp_path / "reports" / NAME / "report.html").as_uri())
            page.wait_for_load_state("load")
            text = page.inner_text("body")
            assert all(r.info.run_name in text for r in expected)
            page.screenshot(path=str(tmp_path / "report.png"))
            browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)  # `sweeper ui` stops its server's process group itself
        try:
            proc.wait(timeout=30)
        finally:
            kill_session(proc)  # whatever is left (nothing, normally)
    (tmp_path / "ui-measurements.json").write_text(json.dumps(measured, indent=2))
    print(f"\nsweeper ui measurements: {measured}; screenshots in {tmp_path}")
    if os.environ.get("SWEEPER_DOCS_SCREENSHOTS"):
        DOCS.mkdir(exist_ok=True)
        shutil.copy(tmp_path / "mlflow-ui.png", DOCS / "mlflow-ui.png")
        shutil.copy(tmp_path / "report.png", DOCS / "report.png")


def _lines(proc: Any) -> queue.Queue:
    """The process's output lines, read on a thread (so waiting for one can time out)."""
    out: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            out.put(line)
        out.put(None)

    threading.Thread(target=read, daemon=True).start()
    return out


def _wait_for(lines: queue.Queue, pattern: str, timeout: float) -> str:
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if m := re.search(pattern, line):
            return m.group(1)
    pytest.fail(f"no line matching {pattern!r} from sweeper ui:\n{''.join(seen)[-4000:]}")


def _table(page: Any) -> list[dict[str, str]]:
    """The runs table as shown: one dict per row, in display order, cell text by column id (the
    grid splits each row into its pinned-left and its scrolling part)."""
    cells = page.eval_on_selector_all(".ag-row[row-index]", """rows => rows.map(r => ({
        index: Number(r.getAttribute('row-index')),
        cells: Array.from(r.querySelectorAll('.ag-cell[col-id]')).map(c => [c.getAttribute('col-id'), c.innerText.trim()])
    }))""")
    rows: dict[int, dict[str, str]] = {}
    for part in cells:
        rows.setdefault(part["index"], {}).update(dict(part["cells"]))
    return [rows[i] for i in sorted(rows)]


def _memory(root: int) -> dict[str, Any]:
    """RSS (MiB) of `sweeper ui` and of the MLflow server under it (its process tree)."""
    tree, parents = {root}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := proc_stat(int(entry))):
            parents[int(entry)] = st[0]
    grew = True
    while grew:
        new = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= new
        grew = bool(new)
    rss = {pid: _rss_mib(pid) for pid in tree}
    return {"processes": len(tree), "rss_mib_total": round(sum(rss.values())),
            "rss_mib_server": round(sum(v for pid, v in rss.items() if pid != root)),
            "rss_mib_sweeper_ui": round(rss.get(root, 0.0))}


def _rss_mib(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    m = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(m.group(1)) / 1024 if m else 0.0
