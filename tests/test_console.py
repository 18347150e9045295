"""The console's tally on fabricated trial events: what counts as finished, stopped and failed,
which end is a new best, and the time-left estimate (the live view and plain lines read it)."""
from __future__ import annotations

import pytest

from sweeper.console import Tally, fmt_duration, fmt_params
from sweeper.results import ASHA, BEST_OBJECTIVE, EPOCH, EPOCHS_TOTAL, PATIENCE, STOP_REASON


def _result(epoch: int, score: float, best: float, total: int = 4, **extra: object) -> dict:
    return {EPOCH: epoch, EPOCHS_TOTAL: total, "score": score, BEST_OBJECTIVE: best, **extra}


def test_ends_are_classified_as_the_leaderboard_does() -> None:
    t = Tally("score", "max", num_trials=5, max_t=4)
    for tid in "abcd":
        t.started(tid, {"x": 0.5})
    assert t.counts() == {"running": 4, "finished": 0, "stopped": 0, "failed": 0, "pending": 1}
    t.ended("a", _result(4, 0.6, 0.7))  # ran its course
    t.ended("b", _result(1, 0.5, 0.5, **{STOP_REASON: ASHA}))  # cut by ASHA
    t.ended("c", _result(2, 0.4, 0.8, **{STOP_REASON: PATIENCE}))  # ended itself: finished
    t.ended("d", None, error="ValueError: boom")
    assert t.counts() == {"running": 0, "finished": 2, "stopped": 1, "failed": 1, "pending": 1}
    assert t.reasons("finished") == {"completed": 1, "patience": 1} and t.reasons("stopped") == {"asha": 1}
    assert t.trials["d"].reason == "ValueError: boom"


@pytest.mark.parametrize("mode, finals, new_bests", [
    ("max", [0.5, 0.7, 0.6, 0.9], [True, True, False, True]),
    ("min", [0.5, 0.7, 0.2, 0.2], [True, False, True, False]),  # a tie is not a new best
])
def test_a_new_best_is_an_end_that_beats_every_earlier_end(mode: str, finals: list[float],
                                                           new_bests: list[bool]) -> None:
    t = Tally("score", mode, num_trials=len(finals), max_t=4)
    got = []
    for i, value in enumerate(finals):
        t.started(f"t{i}", {})
        got.append(t.ended(f"t{i}", _result(4, value, value)).new_best)
    assert got == new_bests
    assert t.best_ended is not None and t.best_ended.best == (max if mode == "max" else min)(finals)


def test_the_best_so_far_includes_running_trials_and_uses_their_best_objective() -> None:
    t = Tally("score", "max", num_trials=3, max_t=4)
    t.started("a", {"x": 0.1})
    t.ended("a", _result(4, 0.6, 0.6))
    t.started("b", {"x": 0.2})
    t.reported("b", _result(1, 0.9, 0.9))
    t.reported("b", _result(2, 0.3, 0.9))  # latest 0.3, best 0.9
    assert (t.trials["b"].latest, t.trials["b"].best, t.trials["b"].epoch) == (0.3, 0.9, 2)
    assert t.best() is t.trials["b"] and t.best_ended is t.trials["a"]
    t.reported("b", {EPOCH: 3, "score": 0.95})  # no best_objective reported: the tally keeps one
    assert t.trials["b"].best == 0.95


def test_a_failed_trial_never_becomes_the_new_best_and_a_retry_runs_again() -> None:
    t = Tally("score", "max", num_trials=2, max_t=4)
    t.started("a", {})
    t.reported("a", _result(1, 0.99, 0.99))
    assert t.ended("a", None, error="OSError").new_best is False and t.best_ended is None
    t.started("b", {})
    t.retried("b")
    assert t.trials["b"].retries == 1 and t.trials["b"].status == "running"


def test_time_left_counts_running_trials_by_their_epochs() -> None:
    t = Tally("score", "max", num_trials=4, max_t=4)
    assert t.eta_s(10.0) is None  # no progress yet
    t.started("a", {})
    t.ended("a", _result(4, 0.5, 0.5))
    t.started("b", {})
    t.reported("b", _result(2, 0.5, 0.5))  # half done
    assert t.progress() == pytest.approx(1.5)
    assert t.eta_s(30.0) == pytest.approx(30.0 * 2.5 / 1.5)


@pytest.mark.parametrize("seconds, text", [(None, "?"), (4.4, "4s"), (65, "1m05s"), (3725, "1h02m")])
def test_durations_read_as_a_person_writes_them(seconds: float | None, text: str) -> None:
    assert fmt_duration(seconds) == text


def test_params_are_short() -> None:
    assert fmt_params({"x": 0.312345, "opt": "sgd"}) == "x=0.3123 opt=sgd"
    assert len(fmt_params({f"k{i}": 1.0 for i in range(50)}, limit=40)) == 40


# --------------------------------------------------------------------------- the callback's output
def _callback(tmp_path, url: str | None = None):  # noqa: ANN001, ANN202 - (SweepConsole, trial factory)
    from types import SimpleNamespace

    from sweeper.config import load_sweep
    from sweeper.console import SweepConsole

    path = tmp_path / "s.yaml"
    path.write_text("name: c\ntask: noop\nbase: {train: {epochs: 4}}\nsearch: {x: {uniform: [0, 1]}}\n"
                    "objective: {metric: score}\nbudget: {num_samples: 3}\n"
                    + (f"notify: {{webhook: '{url}', on: [failure, best]}}\n" if url else ""))
    cb = SweepConsole(load_sweep(path), "http://127.0.0.1:5000/#/experiments/1/runs")

    def trial(tid: str, x: float, last: dict | None = None, error: str | None = None) -> SimpleNamespace:
        error_file = None
        if error:
            error_file = tmp_path / f"{tid}.txt"
            error_file.write_text(f"Traceback (most recent call last):\n  ...\n{error}\n")
        return SimpleNamespace(trial_id=tid, config={"x": x}, last_result=last or {}, error_file=error_file,
                               status="RUNNING")

    return cb, trial


def test_piped_output_is_one_line_per_event(tmp_path, capsys) -> None:  # noqa: ANN001
    cb, trial = _callback(tmp_path)
    cb.setup()  # stdout is not a terminal under pytest: plain lines
    a, b, c = trial("a", 0.25), trial("b", 0.5), trial("c", 0.75)
    for t in (a, b, c):
        cb.on_trial_start(0, [], t)
    cb.on_trial_result(0, [], a, _result(1, 0.9, 0.9))  # results print nothing
    a.last_result = _result(4, 0.8, 0.9)
    cb.on_trial_complete(0, [], a)
    b.last_result = _result(1, 0.5, 0.5, **{STOP_REASON: ASHA})
    cb.on_trial_complete(0, [], b)
    c.error_file = tmp_path / "c.txt"
    c.error_file.write_text("Traceback\n  File x\nValueError: bad x\n")
    cb.on_trial_error(0, [], c)
    lines = [line.split("] ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert lines == ["trial a started: x=0.25", "trial b started: x=0.5", "trial c started: x=0.75",
                     "trial a finished (completed) at epoch 4: score 0.9",
                     "new best: trial a score 0.9 (max): x=0.25",
                     "trial b stopped (asha) at epoch 1: score 0.5",
                     "trial c failed before its first report: ValueError: bad x"]


def test_the_callback_sends_failures_and_bests_and_pickles_without_its_runtime(tmp_path) -> None:  # noqa: ANN001
    import json
    import pickle
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cb, trial = _callback(tmp_path, f"http://127.0.0.1:{server.server_address[1]}/hook/secret")
        cb.setup()
        a, b = trial("a", 0.25, _result(4, 0.7, 0.8)), trial("b", 0.5, error="RuntimeError: CUDA out of memory")
        cb.on_trial_start(0, [], a)
        cb.on_trial_complete(0, [], a)
        cb.on_trial_start(0, [], b)
        cb.on_trial_error(0, [], b)
        assert cb._notifier.flush(10)
        restored = pickle.loads(pickle.dumps(cb))  # as Tune saves it in the experiment state
        assert restored._notifier is None and restored.tally.trials == {}
        # the pickle lands in tuner.pkl: the webhook (a secret) is given back on resume (console.adopt)
        assert restored.notify == (None, cb.notify[1]) and b"hook/secret" not in pickle.dumps(cb)
    finally:
        server.shutdown()
        server.server_close()
    assert [(m["event"], m["trial"], m["value"]) for m in got] == [("best", "a", 0.8), ("failure", "b", None)]
    assert got[1]["error"] == "RuntimeError: CUDA out of memory" and got[1]["best"]["trial"] == "a"
