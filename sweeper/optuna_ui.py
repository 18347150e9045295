"""`sweeper ui NAME --optuna`: optuna-dashboard over the sweep's stored Optuna study, live.

The study is in `search_alg.storage` (default `optuna.db` beside the tracking store's
`mlruns.db`; see `sweeper.config.study_storage` and `sweeper.study`). The dashboard shows its
trials, their intermediate values (one per epoch or step, as ASHA judged them), pruned trials and
parameter importances, and refreshes while the sweep runs. It is served on 127.0.0.1 by
optuna-dashboard's WSGI app on a threaded wsgiref server without an access log, in a child
process (its own process group: Ctrl-C stops it whole), like `sweeper ui`'s MLflow server.

Which storage: `--storage URL` when given; else the one the sweep's latest launch recorded
(parent-run tag `sweeper.optuna_storage`) unless a password in it was redacted; else the default
beside the tracking store.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from sweeper.config.study_storage import MEMORY, resolve_storage, sqlite_path
from sweeper.config.trial import REDACTED, redact_uri

DEFAULT_PORT = 8080
#: the child process reads the storage URL here, not from its command line (`ps` shows that)
STORAGE_ENV = "SWEEPER_OPTUNA_STORAGE"


@dataclass
class Dashboard:
    """The study a dashboard opens on."""

    name: str
    storage: str  # the URL (may hold a password: show it with redact_uri)
    study_id: int
    trials: int
    url: str


def storage_for(name: str, tracking_uri: str, given: str | None, cwd: Path) -> str:
    """The storage URL holding sweep `name`'s study (see the module docstring for the order)."""
    if given:
        return resolve_storage(given, tracking_uri, cwd)
    recorded = _recorded_storage(tracking_uri, name)
    if recorded and REDACTED not in recorded:
        return recorded
    return resolve_storage(None, tracking_uri, cwd)


def _recorded_storage(tracking_uri: str, name: str) -> str | None:
    """The storage the sweep's latest launch tagged its parent run with (None if unknown)."""
    from sweeper import store, ui

    try:
        ui.check_store(tracking_uri)  # MLflow would create an empty store to look in
        board = store.leaderboard(tracking_uri, name)
        tags = store.client(tracking_uri).get_run(board["parent_run_id"]).data.tags
    except Exception:  # noqa: BLE001 - no such sweep in MLflow: the default storage is tried
        return None
    return tags.get(store.OPTUNA_STORAGE_TAG)


def find_study(storage_url: str, name: str, base_url: str) -> Dashboard:
    """Sweep `name`'s study in `storage_url`; LookupError naming what the storage has instead."""
    if storage_url == MEMORY:
        raise LookupError(f"sweep {name!r} keeps its Optuna study in Ray's searcher state (search_alg.storage: "
                          "memory): there is nothing for a dashboard to read; launch with a storage")
    path = sqlite_path(storage_url)
    if path is not None and not path.is_file():
        raise LookupError(f"no Optuna study store at {path}: launch the sweep from this directory first, or pass "
                          "--storage URL (its search_alg.storage)")
    from sweeper import study

    storage = study.open_storage(storage_url)
    assert storage is not None
    study_id = study.study_id(storage, name)
    if study_id is None:
        known = sorted(s.study_name for s in storage.get_all_studies())
        raise LookupError(f"no Optuna study named {name!r} in {redact_uri(storage_url)}; it has: "
                          f"{', '.join(known) if known else 'none'}")
    trials = len(storage.get_all_trials(study_id, deepcopy=False))
    return Dashboard(name, storage_url, study_id, trials, study_url(base_url, study_id))


def study_url(base_url: str, study_id: int) -> str:
    """The dashboard page of one study."""
    return f"{base_url.rstrip('/')}/dashboard/studies/{study_id}"


def server_command(host: str, port: int) -> list[str]:
    """This module run as the dashboard's server process (the storage comes in STORAGE_ENV)."""
    return [sys.executable, "-m", "sweeper.optuna_ui", host, str(port)]


def serve(storage_url: str, host: str, port: int, on_ready: Callable[[], None]) -> int:
    """Run the dashboard until Ctrl-C (or SIGTERM); `on_ready` once it answers. Returns the
    server's exit code (0 when stopped by the user)."""
    from sweeper import ui

    env = {**os.environ, STORAGE_ENV: storage_url}
    return ui.serve_process(server_command(host, port), env, f"{ui.server_url(host, port)}/api/meta", on_ready,
                            "optuna-dashboard")


class _QuietHandler(WSGIRequestHandler):
    """No line per request: the terminal stays readable while the dashboard polls."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return None


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def main(argv: list[str]) -> None:
    """The server process: optuna-dashboard's WSGI app over the storage in STORAGE_ENV."""
    from optuna_dashboard import wsgi

    from sweeper import study

    host, port = argv[0], int(argv[1])
    app = wsgi(study.open_storage(os.environ[STORAGE_ENV]))
    server = make_server(host, port, app, server_class=_ThreadedServer, handler_class=_QuietHandler)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
