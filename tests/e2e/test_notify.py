"""`notify` end to end: a real noop sweep POSTs its events to a local HTTP server in this test;
the messages agree with MLflow, and the webhook's secret path is printed and logged nowhere."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .conftest import launch_sweep, mlflow_client, run_sweeper, trial_runs, write_sweep

pytestmark = pytest.mark.slow

SECRET = "T0AAA/B0BBB/n0tF0rY0urEyes"
SWEEP = """
name: hooked
task: noop
base: {{train: {{epochs: 2, sleep_s: 0.05}}}}
search:
  x: {{uniform: [0.0, 1.0]}}
  y: {{uniform: [0.0, 1.0]}}
objective: {{metric: score, mode: max}}
scheduler: {{name: fifo}}
budget: {{num_samples: 3, max_concurrent: 1}}
notify: {{webhook: "{url}", on: [end, failure, best]}}
"""


@pytest.fixture()
def webhook():  # noqa: ANN201 - (url, received messages)
    received: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/services/{SECRET}", received
    finally:
        server.shutdown()
        server.server_close()


def test_a_sweep_posts_its_bests_and_its_end_as_mlflow_records_them(tmp_path: Path, webhook) -> None:  # noqa: ANN001
    url, received = webhook
    port = url.split(":")[2].split("/")[0]
    write_sweep(tmp_path / "sweep.yaml", SWEEP.format(url=url))
    dry = run_sweeper(["launch", "sweep.yaml", "--dry-run"], tmp_path, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert f"notify: http://127.0.0.1:{port}/... on end, failure, best" in dry.stdout and SECRET not in dry.stdout
    assert received == []  # a dry run sends nothing

    proc = launch_sweep(tmp_path, SWEEP.format(url=url))
    assert SECRET not in proc.stdout + proc.stderr
    assert {path for path, _ in received} == {f"/services/{SECRET}"}
    messages = [body for _, body in received]
    events = [m["event"] for m in messages]
    assert events[-1] == "end" and events.count("end") == 1 and "failure" not in events
    assert set(events[:-1]) == {"best"}

    c = mlflow_client(tmp_path)
    runs = {r.data.tags["sweeper.trial_id"]: r for r in trial_runs(c, "hooked")}
    exp_id = c.get_experiment_by_name("hooked").experiment_id
    top = max(runs.values(), key=lambda r: r.data.metrics["best_objective"])
    values = []
    for m in messages:
        assert m["sweep"] == "hooked" and m["objective"] == {"metric": "score", "mode": "max"}
        assert f"/#/experiments/{exp_id}/runs" in m["leaderboard_url"] and m["leaderboard_url"] in m["text"]
        assert m["text"].startswith("sweep hooked")
    for m in messages[:-1]:  # each new best: the trial's best objective as MLflow has it, rising
        run = runs[m["trial"]]
        assert m["value"] == pytest.approx(run.data.metrics["best_objective"])
        assert m["params"] == pytest.approx({k: float(v) for k, v in run.data.params.items() if k in ("x", "y")})
        assert f"new best trial {m['trial']}: score {m['value']:.4g} (max)" in m["text"]
        values.append(m["value"])
    assert values == sorted(values) and len(set(values)) == len(values)
    assert messages[-2]["trial"] == top.data.tags["sweeper.trial_id"]

    end = messages[-1]
    assert end["counts"] == {"finished": 3, "stopped": 0, "failed": 0, "trials": 3} and end["interrupted"] is False
    assert end["best"]["trial"] == top.data.tags["sweeper.trial_id"]
    assert end["best"]["value"] == pytest.approx(top.data.metrics["best_objective"])
    assert {k: float(v) for k, v in end["best"]["params"].items()} == pytest.approx(
        {k: float(top.data.params[k]) for k in ("x", "y")})
    assert "sweep hooked finished: 3 finished, 0 stopped early, 0 failed of 3 trials" in end["text"]

    # the launch's records in MLflow hold the sweep file, with the webhook redacted
    parent = trial_runs(c, "hooked", kind="sweep")[0]
    for name in ("sweep.yaml", "sweep.resolved.json"):
        text = Path(c.download_artifacts(parent.info.run_id, name, str(tmp_path))).read_text()
        assert SECRET not in text and "notify" in text
