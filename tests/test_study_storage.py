"""The Optuna study kept in a database (`search_alg.storage`): where it goes, what is refused,
and a searcher restored from an older checkpoint than its database (a crash between Tune's
experiment checkpoints) neither duplicating nor losing a trial. Real Optuna, real sqlite files."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from sweeper import study
from sweeper.config import SweepConfigError, load_sweep
from sweeper.config.study_storage import resolve_storage, sqlite_path, storage_problem
from sweeper.optuna_ui import find_study, storage_for
from sweeper.search import PrunedAwareOptunaSearch, build_searcher

SWEEP = """name: st
task: noop
base: {train: {epochs: 2}}
search:
  x: {uniform: [0, 1]}
  y: {uniform: [0, 1]}
objective: {metric: score, mode: max}
scheduler: {name: fifo}
budget: {num_samples: 4}
"""


def _sweep(tmp_path: Path, *sets: str):  # noqa: ANN202 - a Sweep
    (tmp_path / "s.yaml").write_text(SWEEP)
    return load_sweep(tmp_path / "s.yaml", ["tracking.uri=sqlite:///mlruns.db", *sets], cwd=tmp_path)


def _done(epoch: int = 2, score: float = 0.5) -> dict:
    return {"score": score, "epoch": epoch, "epochs_total": 2}


def test_the_study_goes_beside_the_tracking_store_by_default(tmp_path: Path) -> None:
    assert _sweep(tmp_path).spec.search_alg.storage == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert _sweep(tmp_path, "search_alg.storage=sqlite:///studies/s.db").spec.search_alg.storage == \
        f"sqlite:///{tmp_path / 'studies' / 's.db'}"
    assert _sweep(tmp_path, "search_alg.storage=memory").spec.search_alg.storage == "memory"
    url = "postgresql://me:pw@db.example/optuna"
    assert _sweep(tmp_path, f"search_alg.storage={url}").spec.search_alg.storage == url
    # a tracking server: the launch directory
    assert resolve_storage(None, "http://mlflow:5000", tmp_path) == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert sqlite_path(f"sqlite:///{tmp_path}/x.db") == tmp_path / "x.db" and sqlite_path("memory") is None


@pytest.mark.parametrize("value, words", [
    ("optuna.db", "is not a database URL"),
    ("sqlite:/optuna.db", "is not a database URL"),
    ("sqlite://", "a sqlite URL needs a file"),
    ("redis://localhost/0", "scheme 'redis' is not a database"),
    ("s3://bucket/optuna", "scheme 's3'"),
])
def test_storages_optuna_cannot_use_are_refused_naming_the_field(tmp_path: Path, value: str, words: str) -> None:
    assert storage_problem(value) is not None
    with pytest.raises(SweepConfigError) as exc:
        _sweep(tmp_path, f"search_alg.storage={value}")
    assert exc.value.field == "search_alg.storage" and words in exc.value.message


def test_a_password_in_the_storage_url_is_never_in_the_message() -> None:
    assert "hunter2" not in (storage_problem("redis://me:hunter2@host/0") or "")


def test_a_restored_searcher_behind_its_database_neither_duplicates_nor_loses_trials(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    searcher = build_searcher(sweep, 2).searcher
    first = {tid: searcher.suggest(tid) for tid in ("a", "b")}
    searcher.on_trial_result("a", {"score": 0.4, "epoch": 1})
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's experiment checkpoint
    # after the checkpoint: a reports again and finishes, c is asked; then the driver dies
    searcher.on_trial_result("a", {"score": 0.6, "epoch": 2})
    searcher.on_trial_complete("a", _done(score=0.6))
    lost = searcher.suggest("c")

    restored = PrunedAwareOptunaSearch.__new__(PrunedAwareOptunaSearch)  # as a new driver process loads it
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert sorted(restored._ot_trials) == ["a", "b"]
    assert restored.suggest("d") == lost  # the trial Tune never recorded is handed out, not a new one
    restored.on_trial_result("a", {"score": 0.6, "epoch": 2})  # Tune replays a's last epoch: no error
    restored.on_trial_complete("a", _done(score=0.6))  # finished in the database already: not told twice
    for tid, score in (("b", 0.3), ("d", 0.2)):
        restored.on_trial_result(tid, {"score": score, "epoch": 1})
        restored.on_trial_complete(tid, _done(score=score))

    stored = optuna.load_study(study_name="st", storage=sweep.spec.search_alg.storage).get_trials()
    assert [t.state.name for t in stored] == ["COMPLETE"] * 3
    assert [t.params for t in stored] == [first["a"], first["b"], lost]
    assert stored[0].value == 0.6 and stored[0].intermediate_values == {1: 0.4, 2: 0.6}


def test_a_fresh_start_sets_an_earlier_study_of_the_name_aside(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    old = build_searcher(sweep, 1).searcher
    old.suggest("a")
    old.on_trial_complete("a", _done())
    new = build_searcher(sweep, 1).searcher  # e.g. runs/ deleted, or --fresh
    assert new.study_set_aside and new.study_set_aside.startswith("st.")
    storage = study.open_storage(sweep.spec.search_alg.storage)
    assert study.counts(storage, new.study_set_aside) == {"COMPLETE": 1}
    assert study.counts(storage, "st") == {} and new.study.study_name == "st"


def test_the_dashboard_finds_the_study_or_says_what_the_storage_has(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    url = sweep.spec.search_alg.storage
    with pytest.raises(LookupError, match="no Optuna study store at .*optuna.db"):
        find_study(url, "st", "http://127.0.0.1:8080")
    build_searcher(sweep, 1).searcher.suggest("a")
    board = find_study(url, "st", "http://127.0.0.1:8080")
    assert board.trials == 1 and board.url == f"http://127.0.0.1:8080/dashboard/studies/{board.study_id}"
    with pytest.raises(LookupError, match="no Optuna study named 'other' in .*; it has: st"):
        find_study(url, "other", "http://127.0.0.1:8080")
    with pytest.raises(LookupError, match="search_alg.storage: memory"):
        find_study("memory", "st", "http://127.0.0.1:8080")
    # no launch recorded in MLflow: the default beside the tracking store; --storage wins
    assert storage_for("st", f"sqlite:///{tmp_path / 'mlruns.db'}", None, tmp_path) == url
    assert storage_for("st", f"sqlite:///{tmp_path / 'mlruns.db'}", "sqlite:///o.db", tmp_path) == \
        f"sqlite:///{tmp_path / 'o.db'}"


def test_a_password_in_the_storage_url_is_not_pickled(tmp_path: Path) -> None:
    """Tune pickles the searcher (tuner.pkl, searcher state): the storage goes in with its password
    masked and connects again where the real URL is known (a resume reads it from the sweep file)."""
    import pickle

    storage = study.open_storage(f"sqlite:///{tmp_path / 'o.db'}")
    assert pickle.loads(pickle.dumps(storage)).url == storage.url  # a plain URL round-trips
    url = "postgresql://user:hunter2@db.example/optuna"
    storage.url = url  # as a PostgreSQL storage would hold it (no server here to connect to)
    state = storage.__getstate__()
    assert "hunter2" not in pickle.dumps(state).decode("latin-1") and state["url"] == "postgresql://user:***@db.example/optuna"
    study.remember(url)
    assert study.unmasked(state["url"]) == url
    study._REAL_URLS.clear()  # a process that was never told it
    with pytest.raises(RuntimeError, match="needs its password"):
        study.unmasked(state["url"])
