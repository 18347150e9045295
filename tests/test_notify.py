"""Webhook notifications without Ray: the messages, the redaction of the URL, and delivery
against a real local HTTP server (one that fails twice then succeeds, one that hangs)."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweeper import notify
from sweeper.cli import app
from sweeper.config import load_sweep, redact_webhook
from sweeper.config.trial import webhook_problem

SECRET = "T0000/B0000/s3cr3tXYZ"


class Hook:
    """A local webhook: records each POST's path and JSON body; `answer(n)` says how the n-th
    request (0-based) is answered: an HTTP status, or a number of seconds to hang first."""

    def __init__(self, answer: Callable[[int], tuple[int, float]]) -> None:
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                n = len(hook.bodies)
                hook.paths.append(self.path)
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                status, hang_s = answer(n)
                time.sleep(hang_s)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/{SECRET}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def hook_factory() -> Iterator[Callable[[Callable[[int], tuple[int, float]]], Hook]]:
    hooks: list[Hook] = []

    def make(answer: Callable[[int], tuple[int, float]]) -> Hook:
        hooks.append(Hook(answer))
        return hooks[-1]

    yield make
    for h in hooks:
        h.close()


# --------------------------------------------------------------------------- messages
def test_a_best_message_carries_trial_objective_params_link_and_slack_text() -> None:
    msg = notify.trial_message("demo", "best", "3f2a1b", "score", "max", 0.94123, {"x": 0.3, "opt": "sgd"},
                               "http://127.0.0.1:5000/#/experiments/1/runs", best=("3f2a1b", 0.94123, {"x": 0.3}))
    assert json.loads(json.dumps(msg)) == msg  # plain JSON
    assert (msg["sweep"], msg["event"], msg["trial"], msg["value"]) == ("demo", "best", "3f2a1b", 0.94123)
    assert msg["objective"] == {"metric": "score", "mode": "max"}
    assert msg["best"] == {"trial": "3f2a1b", "value": 0.94123, "params": {"x": 0.3}}
    assert msg["leaderboard_url"] == "http://127.0.0.1:5000/#/experiments/1/runs"
    assert msg["text"] == ("sweep demo: new best trial 3f2a1b: score 0.9412 (max) with x=0.3, opt=sgd. "
                           "Leaderboard: http://127.0.0.1:5000/#/experiments/1/runs")


def test_a_failure_message_says_the_error_and_the_best_so_far() -> None:
    msg = notify.trial_message("demo", "failure", "aa11", "train/loss", "min", None, {"lr": 0.1}, "URL",
                               error="RuntimeError: CUDA out of memory", best=None)
    assert msg["event"] == "failure" and msg["error"] == "RuntimeError: CUDA out of memory"
    assert msg["best"] is None and msg["value"] is None
    assert msg["text"].startswith("sweep demo: trial aa11 failed: RuntimeError: CUDA out of memory (lr=0.1)")


@pytest.mark.parametrize("interrupted, word", [(False, "finished"), (True, "was interrupted")])
def test_the_end_message_has_counts_and_the_best_trial(interrupted: bool, word: str) -> None:
    counts = {"finished": 2, "stopped": 1, "failed": 1, "trials": 4}
    msg = notify.end_message("demo", "score", "max", counts, interrupted, 12.34, ("t1", 0.9, {"x": 0.31}), "URL")
    assert msg["event"] == "end" and msg["counts"] == counts and msg["interrupted"] is interrupted
    assert msg["wall_s"] == 12.3 and msg["best"] == {"trial": "t1", "value": 0.9, "params": {"x": 0.31}}
    assert msg["text"] == (f"sweep demo {word}: 2 finished, 1 stopped early, 1 failed of 4 trials in 12 s; "
                           "best trial t1: score 0.9 (max) with x=0.31. Leaderboard: URL")
    assert "no trial reported" in notify.end_message("demo", "score", "max", counts, False, 1, None, "URL")["text"]


# --------------------------------------------------------------------------- redaction, refusal
@pytest.mark.parametrize("url, shown", [
    (f"https://hooks.slack.com/services/{SECRET}", "https://hooks.slack.com/..."),
    ("http://127.0.0.1:8080/hook?token=abc", "http://127.0.0.1:8080/..."),
    ("https://user:pw@example.com/x", "https://example.com/..."),
    ("https://example.com", "https://example.com"),
    ("http://[::1]:9000/h", "http://[::1]:9000/..."),
    ("http://host:port/x", "***"),
    ("no-scheme/secret", "***"),
])
def test_a_webhook_is_shown_as_scheme_and_host_only(url: str, shown: str) -> None:
    assert redact_webhook(url) == shown


@pytest.mark.parametrize("url, words", [
    (f"ftp://hooks.example/{SECRET}", "got scheme 'ftp'"),
    (f"hooks.example/{SECRET}", "got no scheme"),
    ("https://", "names no host"),
    (f"http://h:xx/{SECRET}", "not a valid URL"),
])
def test_a_webhook_that_is_not_http_is_refused_without_repeating_it(url: str, words: str) -> None:
    problem = webhook_problem(url)
    assert problem is not None and words in problem and SECRET not in problem
    assert webhook_problem(f"https://hooks.slack.com/services/{SECRET}") is None


def test_load_refuses_a_non_http_webhook_naming_the_field_and_accepts_yaml_on(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: t\ntask: noop\nsearch: {x: {uniform: [0, 1]}}\nobjective: {metric: score}\n"
                    f"notify: {{webhook: 'ftp://hooks.example/{SECRET}', on: [end]}}\n")
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 2 and f"{path}: notify.webhook: must be an http:// or https:// URL" in res.output
    assert SECRET not in res.output and "Traceback" not in res.output
    path.write_text(path.read_text().replace("ftp://", "https://"))
    sweep = load_sweep(path)  # a bare `on:` is YAML 1.1's true: still the events
    assert sweep.spec.notify is not None and sweep.spec.notify.on == ["end"]


def test_the_dry_run_shows_the_webhook_without_its_secret(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: t\ntask: noop\nsearch: {x: {uniform: [0, 1]}}\nobjective: {metric: score}\n"
                    f"notify: {{webhook: 'https://hooks.slack.com/services/{SECRET}', on: [end, best]}}\n")
    res = CliRunner().invoke(app, ["launch", str(path), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "notify: https://hooks.slack.com/... on end, best" in res.output and SECRET not in res.output


# --------------------------------------------------------------------------- delivery
def test_post_retries_a_failing_server_until_it_answers(hook_factory) -> None:  # noqa: ANN001
    hook = hook_factory(lambda n: (500 if n < 2 else 200, 0.0))
    message = {"event": "best", "text": "hello"}
    t0 = time.monotonic()
    tries = notify.post(hook.url, message, timeout_s=2, retries=3, backoff_s=0.05)
    assert tries == 3 and hook.bodies == [message] * 3
    assert hook.paths == [f"/services/{SECRET}"] * 3
    assert time.monotonic() - t0 < 2  # backoff 0.05 + 0.1 s


def test_post_gives_up_after_its_retries() -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(OSError):
        notify.post(f"http://127.0.0.1:{port}/x", {"event": "end"}, timeout_s=1, retries=2, backoff_s=0.05)
    assert time.monotonic() - t0 < 2


def test_a_hanging_server_times_out_and_never_holds_the_sender(hook_factory, capfd) -> None:  # noqa: ANN001
    hook = hook_factory(lambda n: (200, 3.0))  # answers only after 3 s
    sender = notify.Notifier(hook.url, ["best", "end"], timeout_s=0.3, retries=1, backoff_s=0.05)
    t0 = time.monotonic()
    sender.send({"event": "best", "text": "b"})
    sender.send({"event": "failure", "text": "not wanted"})  # not in `on`: dropped at once
    assert time.monotonic() - t0 < 0.1  # send never waits for the network
    assert not sender.flush(0.2)  # bounded: gives up waiting, the message is still in flight
    assert sender.flush(5)  # 2 tries x 0.3 s + 0.05 s backoff
    assert sender.sent == [] and sender.failed == ["best"] and len(hook.bodies) == 2
    err = capfd.readouterr().err
    assert err.count("sweeper: notify:") == 1 and "'best'" in err and "after 2 tries" in err
    assert "http://127.0.0.1:" in err and SECRET not in err


def test_a_notifier_delivers_in_order_and_flush_all_waits_for_it(hook_factory) -> None:  # noqa: ANN001
    hook = hook_factory(lambda n: (500 if n == 0 else 200, 0.0))
    sender = notify.Notifier(hook.url, ["best", "end"], backoff_s=0.05)
    for i in range(3):
        sender.send({"event": "best", "n": i})
    sender.send({"event": "end", "n": 3})
    notify.flush_all(10)
    assert sender.sent == ["best", "best", "best", "end"] and sender.failed == []
    assert [b["n"] for b in hook.bodies] == [0, 0, 1, 2, 3]  # the first retried once, then in order
