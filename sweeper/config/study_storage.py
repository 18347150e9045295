"""Where a sweep's Optuna study is kept (`search_alg.storage`), resolved before anything runs.

The study lives in a database, not only inside Ray's pickled searcher state, so that
`optuna-dashboard` (`sweeper ui NAME --optuna`) can show its trials, intermediate values and
parameter importances while the sweep runs, and so that the study outlives the Ray experiment.

- unset (the default): a sqlite file `optuna.db` beside the tracking store's `mlruns.db`, or in
  the launch directory when the tracking store is a server or another database;
- a SQLAlchemy URL (`sqlite:///studies.db`, `postgresql://user:pass@host/db`, `mysql://...`):
  that database (a relative sqlite path is resolved from the launch directory, as tracking.uri is);
- `memory`: no database; the study exists only in Ray's searcher state (no dashboard).

Pure string work: no Optuna, no SQLAlchemy import (config imports neither).
"""
from __future__ import annotations

import re
from pathlib import Path

MEMORY = "memory"
DEFAULT_FILE = "optuna.db"
#: databases Optuna's RDBStorage writes (SQLAlchemy dialects, optionally `dialect+driver`)
SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")


def storage_problem(url: str) -> str | None:
    """Why `url` cannot hold the study; None if it can. The message never repeats the URL,
    which may carry a password."""
    if url == MEMORY:
        return None
    scheme, sep, rest = url.partition("://")
    if not sep:
        return ("is not a database URL: write sqlite:///optuna.db (three slashes), "
                "postgresql://USER@HOST/DB, or `memory` to keep the study in Ray's state only")
    if scheme.split("+", 1)[0].lower() not in SCHEMES:
        return (f"scheme {scheme!r} is not a database Optuna stores studies in "
                f"(use one of {', '.join(SCHEMES)}, or `memory`)")
    if scheme.startswith("sqlite") and (not rest.startswith("/") or rest == "/"):
        return "a sqlite URL needs a file: sqlite:///optuna.db (relative) or sqlite:////abs/path/optuna.db"
    return None


def resolve_storage(storage: str | None, tracking_uri: str, cwd: Path) -> str:
    """The study's storage URL: `storage` made absolute, or the default beside the tracking store
    (`tracking_uri` already resolved by `resolve_tracking_uri`)."""
    if storage is None:
        if tracking_uri.startswith("sqlite:////"):
            return "sqlite:///" + str(Path(tracking_uri[len("sqlite:///"):]).parent / DEFAULT_FILE)
        return "sqlite:///" + str((cwd / DEFAULT_FILE).resolve())
    if re.match(r"sqlite(\+\w+)?:///[^/]", storage):  # relative to the sweep file's directory
        scheme, _, path = storage.partition(":///")
        return f"{scheme}:///" + str((cwd / path).resolve())
    return storage


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite storage URL (None for another database or `memory`)."""
    m = re.match(r"sqlite(\+\w+)?:///(/.*)$", url)
    return Path(m.group(2)) if m else None
