"""`sweeper ui`: the leaderboard view and its URL (pure), the experiment tags a launch and the
command write on a real sqlite store, bad input (no store, unknown sweep, port in use), and
the server's lifecycle (ready, then stopped with its whole process group by SIGTERM).

The real MLflow UI in a real browser is tests/e2e/test_ui_browser.py.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from typer.testing import CliRunner

from sweeper import store, ui
from sweeper.cli import app
from sweeper.config import load_sweep

runner = CliRunner()

SWEEP = """
name: uisweep
task: noop
base: {train: {epochs: 2, sleep_s: 0.0}}
search:
  x: {uniform: [0.0, 1.0]}
  y: {uniform: [0.0, 1.0]}
objective: {metric: score, mode: max}
scheduler: {name: fifo}
budget: {num_samples: 3}
tracking: {uri: sqlite:///mlruns.db}
"""


# --------------------------------------------------------------------------- pure
def test_the_url_opens_the_runs_page_of_model_training_on_the_saved_view() -> None:
    url = ui.leaderboard_url(ui.server_url("127.0.0.1", 5123), "7")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "127.0.0.1:5123", "/")
    route, _, query = parts.fragment.partition("?")
    assert route == "/experiments/7/runs"
    # only these two: a search-facet parameter in the URL would stop MLflow applying the view
    assert parse_qs(query) == {"viewStateShareKey": [ui.VIEW_ID], "workflowType": ["machine_learning"]}


@pytest.mark.parametrize(("host", "base"), [
    ("127.0.0.1", "http://127.0.0.1:5000"), ("0.0.0.0", "http://127.0.0.1:5000"), ("::", "http://127.0.0.1:5000"),
    ("::1", "http://[::1]:5000"), ("gpu-box.lan", "http://gpu-box.lan:5000"),
])
def test_the_server_url_is_what_a_browser_here_can_reach(host: str, base: str) -> None:
    assert ui.server_url(host, 5000) == base


def test_a_trailing_slash_on_a_tracking_server_is_not_doubled() -> None:
    assert ui.leaderboard_url("http://mlflow.internal:5000/", "3").startswith("http://mlflow.internal:5000/#/")


def test_the_view_lists_one_launch_best_first_with_the_searched_values_as_columns() -> None:
    view = ui.leaderboard_view("P1", "score", "max", ["x", "train.lr"])
    assert view["searchFilter"] == "tags.`mlflow.parentRunId` = 'P1'"  # the trials, not their parent
    assert view["orderByKey"] == "metrics.`best_objective`" and view["orderByAsc"] is False
    cols = view["selectedColumns"]
    for col in ["metrics.`best_objective`", "metrics.`score`", "params.`x`", "params.`train.lr`",
                "tags.`sweeper.status`", "tags.`sweeper.stop_reason`", "metrics.`epoch`"]:
        assert col in cols
    assert cols.index("metrics.`best_objective`") < cols.index("params.`x`") < cols.index("tags.`sweeper.status`")
    assert view["columnOrder"][:2] == ["attributes.`Run Name`", "metrics.`best_objective`"]
    assert len(cols) == len(set(cols))
    assert ui.leaderboard_view("P1", "loss", "min", [])["orderByAsc"] is True


def test_an_ablation_view_shows_variant_and_seed_and_other_objectives() -> None:
    cols = ui.leaderboard_view("P", "a", "max", ["model.neck"], ["b"], ablation=True)["selectedColumns"]
    assert {"tags.`sweeper.variant`", "tags.`sweeper.seed`", "metrics.`b`", "params.`model.neck`"} <= set(cols)


def test_the_tags_hold_a_saved_view_envelope_mlflow_can_read() -> None:
    view = ui.leaderboard_view("P1", "score", "max", ["x"])
    tags = ui.experiment_tags(view, "max", now_ms=1234)
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.experiment.primaryMetric.name"] == "best_objective"
    assert tags["mlflow.experiment.primaryMetric.greaterIsBetter"] == "True"
    envelope = json.loads(tags[f"mlflow.sharedViewState.{ui.VIEW_ID}"])
    # the shape MLflow 3.17's decodeSavedViewEnvelope accepts: string name, number createdAt, string state
    assert envelope["name"] == ui.VIEW_NAME and envelope["createdAt"] == 1234 and isinstance(envelope["state"], str)
    assert json.loads(envelope["state"]) == view
    assert len(tags[ui.VIEW_TAG]) < 20000  # MLflow's limit on an experiment tag value


def test_the_ui_command_names_the_store_only_when_it_is_not_the_default() -> None:
    assert ui.ui_command("demo", "sqlite:////w/mlruns.db", "sqlite:////w/mlruns.db") == "sweeper ui demo"
    assert ui.ui_command("demo", "sqlite:////o/m.db", "sqlite:////w/mlruns.db") == \
        "sweeper ui demo --tracking-uri sqlite:////o/m.db"


def test_a_missing_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LookupError, match="no MLflow store at"):
        ui.check_store(f"sqlite:///{tmp_path / 'nope.db'}")
    with pytest.raises(LookupError):
        ui.check_store(str(tmp_path / "mlruns-dir"))
    with pytest.raises(LookupError, match="cannot be reached"):  # a server that does not answer
        ui.check_store(f"http://127.0.0.1:{_free_port()}")


def test_a_port_in_use_is_named_with_a_free_one() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ui.PortInUse, match=rf"port {port} on 127.0.0.1 is in use .*try --port \d+"):
            ui.check_port("127.0.0.1", port)
        suggested = int(str(pytest.raises(ui.PortInUse, ui.check_port, "127.0.0.1", port).value).split()[-1])
        assert suggested != port and not ui.port_in_use("127.0.0.1", suggested)


# --------------------------------------------------------------------------- on a real store
@pytest.fixture()
def launched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A sqlite store in tmp_path with one launch's parent run (as `sweeper launch` starts it) and
    three trial runs; the working directory is tmp_path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(SWEEP)
    sweep = load_sweep(tmp_path / "s.yaml", cwd=tmp_path)
    parent = store.start_sweep_run(sweep, "test")
    c = store.client(sweep.spec.tracking.uri)
    exp = c.get_experiment_by_name("uisweep").experiment_id
    for i, best in enumerate([0.2, 0.9, 0.5]):
        run = c.create_run(exp, run_name=f"t{i}", tags={"mlflow.parentRunId": parent, "sweeper.kind": "trial",
                                                          "sweeper.trial_id": f"t{i}", "sweeper.status": "finished"})
        c.log_param(run.info.run_id, "x", str(best))
        c.log_metric(run.info.run_id, "best_objective", best)
    return tmp_path


def test_every_launch_tags_its_experiment_for_the_ui(launched: Path) -> None:
    c = store.client(f"sqlite:///{launched / 'mlruns.db'}")
    exp = c.get_experiment_by_name("uisweep")
    parent = c.search_runs([exp.experiment_id], "tags.`sweeper.kind` = 'sweep'")[0]
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    state = json.loads(json.loads(exp.tags[ui.VIEW_TAG])["state"])
    assert state["searchFilter"] == f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    assert {"params.`x`", "params.`y`", "metrics.`score`"} <= set(state["selectedColumns"])


def test_ui_retags_an_experiment_made_before_the_tags_existed(launched: Path) -> None:
    uri = f"sqlite:///{launched / 'mlruns.db'}"
    c = store.client(uri)
    exp = c.get_experiment_by_name("uisweep")
    for key in exp.tags:
        if key.startswith("mlflow.") and key != "mlflow.note.content":
            c.delete_experiment_tag(exp.experiment_id, key)
    target = ui.mark(uri, None, "http://127.0.0.1:5000")  # no name: the sweep launched last
    assert (target.name, target.trials) == ("uisweep", 3)
    assert target.url == ui.leaderboard_url("http://127.0.0.1:5000", exp.experiment_id)
    tags = c.get_experiment(exp.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development" and ui.VIEW_TAG in tags


def test_a_launch_ends_with_the_ui_command_and_the_url_it_serves(launched: Path) -> None:
    from sweeper.cli import _ui_hint

    uri = f"sqlite:///{launched.resolve() / 'mlruns.db'}"
    exp = store.client(uri).get_experiment_by_name("uisweep").experiment_id
    url = ui.leaderboard_url("http://127.0.0.1:5000", exp)
    assert _ui_hint("uisweep", uri) == f"MLflow UI: sweeper ui uisweep  (serves {url})"
    other = f"sqlite:///{launched.resolve() / 'elsewhere.db'}"
    assert _ui_hint("uisweep", other).startswith(f"MLflow UI: sweeper ui uisweep --tracking-uri {other}  (serves ")


def test_ui_on_an_unknown_sweep_exits_2_listing_the_known_ones(launched: Path) -> None:
    res = runner.invoke(app, ["ui", "nosuch", "--port", str(_free_port())])
    assert res.exit_code == 2
    assert "no sweep named 'nosuch'" in res.output and "uisweep" in res.output
    assert "Traceback" not in res.output


def test_ui_without_a_store_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["ui", "demo"])
    assert res.exit_code == 2 and "no MLflow store at" in res.output and "--tracking-uri" in res.output
    assert not (tmp_path / "mlruns.db").exists()  # nothing created on the way


def test_ui_on_a_store_without_sweeps_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store.client(f"sqlite:///{tmp_path / 'mlruns.db'}").search_experiments()  # an empty store
    res = runner.invoke(app, ["ui"])
    assert res.exit_code == 2 and "no sweep in" in res.output


def test_ui_on_a_port_in_use_exits_2_before_starting_anything(launched: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        res = runner.invoke(app, ["ui", "uisweep", "--port", str(s.getsockname()[1])])
    assert res.exit_code == 2 and "is in use" in res.output and "try --port" in res.output
    assert "starting MLflow" not in res.output


def test_the_ui_path_loads_no_ray_or_optuna(launched: Path) -> None:
    code = (f"from sweeper import ui\nui.mark({'sqlite:///' + str(launched / 'mlruns.db')!r}, 'uisweep', 'http://x')\n"
            "import json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "mlflow" in loaded and not loaded & {"ray", "optuna", "torch"}


# --------------------------------------------------------------------------- the server's lifecycle
FAKE_SERVER = """
import http.server, subprocess, sys
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # a worker, as uvicorn's
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"OK")
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_serve_waits_for_the_server_and_sigterm_stops_its_whole_group(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    monkeypatch.setattr(ui, "server_command", lambda uri, host, p: [sys.executable, "-c", FAKE_SERVER, str(p)])
    seen: dict[str, int] = {}

    def ready() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # it answers
        seen["group"] = _group_of_listener(port)
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` or a test harness would stop `sweeper ui`

    assert ui.serve("sqlite:///unused.db", "127.0.0.1", port, on_ready=ready) == 0
    assert seen["group"]
    deadline = time.monotonic() + 10  # the worker got the SIGTERM too; it may take a moment to go
    while _pids_in_group(seen["group"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pids_in_group(seen["group"])  # the server and its worker are gone
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back
    assert not ui.port_in_use("127.0.0.1", port)


def test_serve_reports_a_server_that_dies_before_answering(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ui, "server_command", lambda uri, host, p: [sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="exited with code 3"):
        ui.serve("sqlite:///unused.db", "127.0.0.1", _free_port(), on_ready=lambda: None)


def test_the_server_runs_lean() -> None:
    cmd = ui.server_command("sqlite:////w/mlruns.db", "127.0.0.1", 5001)
    assert cmd[1:4] == ["-m", "mlflow", "server"] and cmd[cmd.index("--workers") + 1] == "1"
    assert cmd[cmd.index("--artifacts-destination") + 1] == "/w/mlartifacts"
    assert ui.server_env({})["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_in_group(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry))
    return pids


def _group_of_listener(port: int) -> int:
    """The process group of our child that serves `port` (the fake server leads its own group)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if str(port).encode() in cmdline and b"http.server" in b"".join(cmdline):
                return int(stat[stat.rindex(")") + 2:].split()[2])
    return 0
