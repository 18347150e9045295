"""Webhook notifications (`notify: {webhook: URL, on: [end, failure, best]}`): a JSON POST per event.

    notifier = Notifier("https://hooks.slack.com/services/T0/B0/XXXX", ["end", "best"])
    notifier.send(trial_message("demo", "best", "3f2a1b", "score", "max", 0.94, {"x": 0.3}, url))
    notifier.flush(FLUSH_S)                       # at the end of a launch, bounded

Events: `best` (a trial ended with a better best objective than every trial before it),
`failure` (a trial failed after its retries), `end` (the launch finished or was interrupted;
sent by the runner with the counts and the best trial MLflow recorded: `announce_end`). Every
message has `sweep`, `event`, `objective` ({metric, mode}), `best` ({trial, value, params} or
null), `leaderboard_url` and a Slack-compatible `text`; trial events add `trial`, `value` and,
for failures, `error`; `end` adds `counts`, `interrupted` and `wall_s`.

Sending never holds the sweep up: messages go out in order from one background thread, each
with a 5 s timeout and 3 retries (0.5, 1, 2 s apart); one that still fails is logged once, to
stderr, and dropped. The end of a launch waits at most FLUSH_S for what is still queued. A
webhook's path is its credential (Slack's), so the URL is only ever shown as scheme://host/...
(`sweeper.config.redact_webhook`). Standard library only.
"""
from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections import deque
from typing import Any

from sweeper.config import Sweep, redact_uri, redact_webhook

#: seconds one POST may take (connect, send, answer)
TIMEOUT_S = 5.0
#: tries after the first failed one
RETRIES = 3
#: seconds before the first retry, doubled before each next one
BACKOFF_S = 0.5
#: the most the end of a launch waits for messages still being sent, seconds
FLUSH_S = 15.0
#: senders of this process, so the end of a launch can wait for all of them (Tune restores its own)
_LIVE: "weakref.WeakSet[Notifier]" = weakref.WeakSet()


# --------------------------------------------------------------------------- messages
def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "-" if value is None else str(value)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _best(best: tuple[str, float | None, dict[str, Any]] | None) -> dict[str, Any] | None:
    if best is None:
        return None
    trial, value, params = best
    return {"trial": trial, "value": value, "params": {k: _plain(v) for k, v in params.items()}}


def _plain(value: Any) -> Any:
    """A JSON-safe value (numbers, text, booleans as they are; anything else as text)."""
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def trial_message(sweep: str, event: str, trial: str, metric: str, mode: str, value: float | None,
                  params: dict[str, Any], leaderboard_url: str, *, error: str | None = None,
                  best: tuple[str, float | None, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The message of a trial event: `best` (the trial is the new best) or `failure` (`error`:
    the last line of its traceback). `best`: (trial, value, params) of the best trial so far."""
    if event == "best":
        text = (f"sweep {sweep}: new best trial {trial}: {metric} {_fmt(value)} ({mode})"
                + (f" with {_params_text(params)}" if params else "") + f". Leaderboard: {leaderboard_url}")
    else:
        text = (f"sweep {sweep}: trial {trial} failed: {error}"
                + (f" ({_params_text(params)})" if params else "") + f". Leaderboard: {leaderboard_url}")
    message = {"sweep": sweep, "event": event, "text": text, "trial": trial, "value": value,
               "objective": {"metric": metric, "mode": mode}, "params": {k: _plain(v) for k, v in params.items()},
               "best": _best(best), "leaderboard_url": leaderboard_url}
    if error is not None:
        message["error"] = error
    return message


def end_message(sweep: str, metric: str, mode: str, counts: dict[str, int], interrupted: bool, wall_s: float,
                best: tuple[str, float | None, dict[str, Any]] | None, leaderboard_url: str) -> dict[str, Any]:
    """The message at the end of a launch: counts (finished, stopped, failed, trials), whether it
    was interrupted, and the best trial."""
    how = "was interrupted" if interrupted else "finished"
    tally = (f"{counts.get('finished', 0)} finished, {counts.get('stopped', 0)} stopped early, "
             f"{counts.get('failed', 0)} failed of {counts.get('trials', 0)} trials in {wall_s:.0f} s")
    if best is not None:
        top = f"best trial {best[0]}: {metric} {_fmt(best[1])} ({mode})" + (
            f" with {_params_text(best[2])}" if best[2] else "")
    else:
        top = "no trial reported the objective"
    return {"sweep": sweep, "event": "end", "text": f"sweep {sweep} {how}: {tally}; {top}. Leaderboard: "
            f"{leaderboard_url}", "objective": {"metric": metric, "mode": mode}, "counts": dict(counts),
            "interrupted": interrupted, "wall_s": round(wall_s, 1), "best": _best(best),
            "leaderboard_url": leaderboard_url}


# --------------------------------------------------------------------------- sending
def post(url: str, message: dict[str, Any], timeout_s: float = TIMEOUT_S, retries: int = RETRIES,
         backoff_s: float = BACKOFF_S) -> int:
    """POST `message` as JSON to `url`, retrying failures (a connection error, a timeout, an HTTP
    error status); returns the tries it took, raises the last error when all failed."""
    body = json.dumps(message, default=str).encode()
    for attempt in range(retries + 1):
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "sweeper"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - http(s) only (load)
                response.read()
            return attempt + 1
        except (urllib.error.URLError, OSError, ValueError):  # HTTPError, timeouts, refused, reset
            if attempt == retries:
                raise
            time.sleep(backoff_s * 2 ** attempt)
    raise AssertionError("unreachable")


class Notifier:
    """Sends the messages of the events in `on` to `url`, in order, from a background thread."""

    def __init__(self, url: str, on: list[str], *, timeout_s: float = TIMEOUT_S, retries: int = RETRIES,
                 backoff_s: float = BACKOFF_S) -> None:
        self.url, self.on = url, set(on)
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.shown = redact_webhook(url)
        self.sent: list[str] = []    # events delivered
        self.failed: list[str] = []  # events given up on (each logged once)
        self._queue: deque[dict[str, Any]] = deque()
        self._busy = 0  # messages queued or being sent
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def wants(self, event: str) -> bool:
        return event in self.on

    def send(self, message: dict[str, Any]) -> None:
        """Queue `message` if its event is wanted; returns at once."""
        if not self.wants(message.get("event", "")):
            return
        with self._cond:
            self._queue.append(message)
            self._busy += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="sweeper-notify", daemon=True)
                self._thread.start()
                _LIVE.add(self)
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                message = self._queue.popleft()
            try:
                post(self.url, message, self.timeout_s, self.retries, self.backoff_s)
                self.sent.append(message["event"])
            except Exception as exc:  # noqa: BLE001 - a webhook must never end the sweep
                self.failed.append(message["event"])
                why = f"{type(exc).__name__}: {exc}".replace(self.url, self.shown)[:300]
                print(f"sweeper: notify: the webhook {self.shown} did not take the {message['event']!r} "
                      f"message after {self.retries + 1} tries ({why}); the sweep goes on", file=sys.stderr, flush=True)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def flush(self, timeout_s: float = FLUSH_S) -> bool:
        """Wait until every queued message was sent or given up on, at most `timeout_s`;
        True if nothing is left."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


def flush_all(timeout_s: float = FLUSH_S) -> None:
    """Wait (at most `timeout_s` in all) for the messages every sender of this process holds;
    what is still unsent then is said once and dropped."""
    deadline = time.monotonic() + timeout_s
    for notifier in list(_LIVE):
        if not notifier.flush(max(0.0, deadline - time.monotonic())):
            print(f"sweeper: notify: gave up waiting for the webhook {notifier.shown} after {timeout_s:.0f} s; "
                  "unsent messages are dropped", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the runner's end
def leaderboard_link(tracking_uri: str, experiment_id: str | None) -> str:
    """The URL of the sweep's leaderboard in MLflow's UI (as `sweeper ui` serves it, or on the
    tracking server), with no password in it."""
    from sweeper import ui

    base = redact_uri(tracking_uri).rstrip("/") if ui.is_server(tracking_uri) else ui.server_url()
    return ui.leaderboard_url(base, experiment_id) if experiment_id else base


def announce_end(sweep: Sweep, outcome: Any, leaderboard_url: str) -> None:
    """Send the `end` message of a launch (`outcome`: runner.Outcome) if the sweep asks for it,
    then wait, bounded, for every message still queued. The best trial and counts are MLflow's."""
    notify = sweep.spec.notify
    if notify is None:
        return
    if "end" in notify.on:
        best = None
        if outcome.best is not None:
            row = next((r for r in (outcome.board or {}).get("rows", []) if r.get("run_id") == outcome.best["run_id"]),
                       {})
            searched = (outcome.board or {}).get("searched", [])
            best = (outcome.best["trial_id"], outcome.best["value"], {k: row.get(k) for k in searched if k in row})
        counts = {"finished": outcome.finished, "stopped": outcome.stopped, "failed": outcome.failed,
                  "trials": outcome.num_trials}
        objective = sweep.spec.objective
        Notifier(notify.webhook, list(notify.on)).send(end_message(
            sweep.name, objective.metric, objective.mode, counts, outcome.interrupted, outcome.wall_s, best,
            leaderboard_url))
    flush_all()
