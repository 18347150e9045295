"""A sweep's Optuna study in a database (`search_alg.storage`, see `sweeper.config.study_storage`).

Ray's searcher keeps the study inside its pickled state (`searcher-state-*.pkl`), where nothing
else can read it. Kept in a database instead, `optuna-dashboard` shows its trials, intermediate
values and importances while the sweep runs (`sweeper ui NAME --optuna`), and the study is there
after the Ray experiment is gone. The study is named after the sweep.

- A launch that starts a sweep afresh (no Ray experiment to continue) finds any study of that
  name in the database already and sets it aside as `NAME.YYYYmmdd-HHMMSS` (copied, then
  deleted), as `--fresh` sets the old experiment aside: the new study starts empty, the old
  one stays readable.
- A resumed sweep uses the stored study; `sweeper.search` reconciles the restored searcher with
  it (the database may be ahead of the searcher state Tune saved).
- Tune pickles the searcher, and with it the storage, into `tuner.pkl` and its searcher state.
  A password in the URL (`postgresql://user:PASSWORD@host/db`) is not pickled: the pickle holds
  the URL with the password masked, and the driver that loads it again has registered the real
  URL first (`remember`, from the sweep file it resumes).
"""
from __future__ import annotations

import time
from typing import Any

import optuna

from sweeper.config.study_storage import MEMORY
from sweeper.config.trial import REDACTED, redact_uri

#: masked URL -> the real one, for storages this process opened or was told of (`remember`)
_REAL_URLS: dict[str, str] = {}


def remember(url: str) -> None:
    """Let a pickled storage whose URL was masked connect again in this process."""
    _REAL_URLS[redact_uri(url)] = url


class MaskedRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage, pickled with the password of its URL masked (see the module docstring)."""

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["url"] = redact_uri(state["url"])
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__({**state, "url": unmasked(state["url"])})


def unmasked(url: str) -> str:
    """The real URL of a storage URL pickled masked; RuntimeError when this process was not told it."""
    real = _REAL_URLS.get(url, url)
    if real == url and f"{REDACTED}@" in url:
        raise RuntimeError(f"the Optuna study storage {url} needs its password: resume from the sweep file "
                           "that names it (search_alg.storage)")
    return real


def open_storage(url: str) -> optuna.storages.BaseStorage | None:
    """The storage at `url` (tables created on first use); None for `memory`. A sqlite file waits
    up to 30 s for a lock, so a dashboard reading it never fails the sweep's writes."""
    if url == MEMORY:
        return None
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}
    remember(url)
    return MaskedRDBStorage(url, engine_kwargs=kwargs)


def study_id(storage: optuna.storages.BaseStorage, name: str) -> int | None:
    """The id of study `name` in `storage`, None if it has none of that name."""
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None


def set_aside(storage: optuna.storages.BaseStorage, name: str) -> str | None:
    """Move study `name` (if there is one) to `NAME.TIMESTAMP`; returns the new name, or None when
    there was nothing to move. An empty study is just deleted."""
    if study_id(storage, name) is None:
        return None
    old = optuna.load_study(study_name=name, storage=storage)
    aside = None
    if old.get_trials(deepcopy=False):
        stamp = aside = f"{name}.{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while study_id(storage, aside) is not None:  # two fresh starts within a second
            n += 1
            aside = f"{stamp}-{n}"
        optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=storage, to_study_name=aside)
    optuna.delete_study(study_name=name, storage=storage)
    return aside


def counts(storage: optuna.storages.BaseStorage, name: str) -> dict[str, int]:
    """Trials of study `name` by state (`COMPLETE`, `PRUNED`, `RUNNING`, ...)."""
    out: dict[str, int] = {}
    for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out
