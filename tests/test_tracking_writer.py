"""The MLflow trial logger writes on a background thread: in order, without holding up Tune's loop,
consistent when Tune pickles it, and loud but not fatal when a write fails.

Real MLflow (a sqlite store in tmp_path) and Ray's own Trial objects; no Ray runtime is needed
because the callback methods are called as Tune's controller would call them.
"""
from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial

from sweeper import store, tracking
from sweeper.config import load_sweep

SWEEP = """
name: writer
task: noop
base: {train: {epochs: 3, sleep_s: 0.0}}
search:
  x: {uniform: [0.0, 1.0]}
  y: {uniform: [0.0, 1.0]}
objective: {metric: score, mode: max}
scheduler: {name: fifo}
budget: {num_samples: 4}
tracking: {uri: sqlite:///mlruns.db}
"""


@pytest.fixture()
def logger(tmp_path: Path) -> tracking.MLflowTrialLogger:
    (tmp_path / "s.yaml").write_text(SWEEP)
    sweep = load_sweep(tmp_path / "s.yaml", cwd=tmp_path)
    parent = store.start_sweep_run(sweep, "test")
    return tracking.MLflowTrialLogger(sweep, parent)


def _trial(tmp_path: Path, trial_id: str) -> Trial:
    return Trial("noop", config={"x": 0.25, "y": 0.5}, trial_id=trial_id, stub=True,
                 storage=StorageContext(str(tmp_path / "ray"), "writer", trial_dir_name=f"trial_{trial_id}"))


def _run_trial(logger: tracking.MLflowTrialLogger, trial: Trial, epochs: int = 3) -> None:
    logger.on_trial_start(0, [], trial)
    for epoch in range(1, epochs + 1):
        result = {"score": 0.1 * epoch, "train/loss": 1.0 / epoch, "epoch": epoch, "epochs_total": 3,
                  "best_objective": 0.1 * epoch, "training_iteration": epoch}
        trial.update_last_result(result)
        logger.on_trial_result(epoch, [], trial, result)
    logger.on_trial_complete(epochs, [], trial)


@contextmanager
def _writer_held(logger: tracking.MLflowTrialLogger) -> Iterator[None]:
    """The writer thread busy on a write that takes as long as the block: what a slow commit or
    a tracking-server round trip looks like to Tune's loop."""
    gate = threading.Event()
    logger._submit("a slow write", gate.wait)
    try:
        yield
    finally:
        gate.set()


def _trial_runs(logger: tracking.MLflowTrialLogger) -> list:
    return tracking.client(logger.uri).search_runs([logger.experiment_id], "tags.`sweeper.kind` = 'trial'")


def test_results_are_written_in_order_once_flushed(logger: tracking.MLflowTrialLogger, tmp_path: Path) -> None:
    for i in range(3):
        _run_trial(logger, _trial(tmp_path, f"t{i}"))
    assert logger.flush() == []
    runs = _trial_runs(logger)
    assert sorted(r.data.tags["sweeper.trial_id"] for r in runs) == ["t0", "t1", "t2"]
    c = tracking.client(logger.uri)
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["sweeper.status"] == "finished"
        assert run.data.params["x"] == "0.25"
        history = sorted((m.step, round(m.value, 6)) for m in c.get_metric_history(run.info.run_id, "score"))
        assert history == [(1, 0.1), (2, 0.2), (3, 0.3)]


def test_callbacks_return_while_the_store_is_busy(logger: tracking.MLflowTrialLogger, tmp_path: Path) -> None:
    """Tune's loop never waits for MLflow: with the writer held up, a whole trial's callbacks
    still return, and the writes land once it is free."""
    done = threading.Event()
    with _writer_held(logger):
        worker = threading.Thread(target=lambda: (_run_trial(logger, _trial(tmp_path, "busy")), done.set()))
        worker.start()
        assert done.wait(timeout=30), "the callbacks waited for the store"
        assert _trial_runs(logger) == []
    assert logger.flush() == []
    assert [r.data.tags["sweeper.status"] for r in _trial_runs(logger)] == ["finished"]


def test_a_backlog_goes_out_as_one_batch_per_trial(logger: tracking.MLflowTrialLogger, tmp_path: Path) -> None:
    """Results that waited for the store are written together with the trial's end: the run
    holds every epoch and the status, from one metrics batch instead of one per report."""
    batches = []
    real = logger.c.log_batch
    logger.c.log_batch = lambda run_id, **kw: (batches.append(kw), real(run_id, **kw))[1]  # counts, then writes
    with _writer_held(logger):
        _run_trial(logger, _trial(tmp_path, "late"))
    assert logger.flush() == []
    with_metrics = [b for b in batches if b.get("metrics")]
    assert len(with_metrics) == 1 and {m.step for m in with_metrics[0]["metrics"]} == {1, 2, 3}
    assert [t.key for t in with_metrics[0]["tags"]] == ["sweeper.status", "sweeper.stop_reason"]
    run = _trial_runs(logger)[0]
    assert run.info.status == "FINISHED" and run.data.tags["sweeper.status"] == "finished"
    assert run.data.tags["sweeper.stop_reason"] == "completed"
    history = tracking.client(logger.uri).get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [(1, 1.0), (2, 0.5), (3, round(1 / 3, 6))]


def test_a_pickled_logger_continues_the_same_runs(logger: tracking.MLflowTrialLogger, tmp_path: Path) -> None:
    """Tune pickles the callback into its experiment state; the restored copy finds each trial's
    run by tag (it may have been created after the snapshot) and logs no epoch twice."""
    trial = _trial(tmp_path, "t0")
    logger.on_trial_start(0, [], trial)
    first = {"score": 0.1, "epoch": 1, "epochs_total": 3, "training_iteration": 1}
    logger.on_trial_result(1, [], trial, first)
    snapshot = pickle.dumps(logger)  # may be taken with writes still in flight
    assert logger.flush() == []

    restored = pickle.loads(snapshot)
    assert restored._fresh is False and restored._pool is None
    restored.on_trial_result(1, [], trial, first)  # replayed after the restore: not logged again
    _run_trial(restored, trial)
    assert restored.flush() == []
    runs = _trial_runs(restored)
    assert len(runs) == 1
    steps = [m.step for m in tracking.client(logger.uri).get_metric_history(runs[0].info.run_id, "score")]
    assert sorted(steps) == [1, 2, 3]


def test_a_failed_write_is_reported_and_the_next_ones_still_land(
        logger: tracking.MLflowTrialLogger, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gone = _trial(tmp_path, "gone")
    logger.on_trial_start(0, [], gone)
    logger.flush()
    tracking.client(logger.uri).delete_run(logger.runs["gone"])  # someone deleted the run mid-sweep
    logger.on_trial_result(1, [], gone, {"score": 0.5, "epoch": 1, "training_iteration": 1})
    _run_trial(logger, _trial(tmp_path, "ok"))
    errors = logger.flush()
    assert len(errors) == 1 and "writing the results of trial gone failed" in errors[0]
    assert "writing the results of trial gone failed" in capsys.readouterr().err
    assert tracking.flush_all() == errors  # what the runner prints after the sweep
    statuses = {r.data.tags["sweeper.trial_id"]: r.data.tags["sweeper.status"] for r in _trial_runs(logger)}
    assert statuses == {"ok": "finished"}


def test_a_store_that_keeps_failing_is_not_printed_write_by_write(
        logger: tracking.MLflowTrialLogger, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gone = _trial(tmp_path, "gone")
    logger.on_trial_start(0, [], gone)
    logger.flush()
    tracking.client(logger.uri).delete_run(logger.runs["gone"])
    failures = tracking.MAX_PRINTED_ERRORS + 3
    for epoch in range(1, failures + 1):
        logger.on_trial_result(epoch, [], gone, {"score": 0.5, "epoch": epoch, "training_iteration": epoch})
        logger.flush()  # one write per result
    assert len(logger.flush()) == failures
    err = capsys.readouterr().err
    assert err.count("writing the results of trial gone failed") == tracking.MAX_PRINTED_ERRORS
    assert err.count("not printing them") == 1


def test_pickling_does_not_wait_for_a_write_in_progress(logger: tracking.MLflowTrialLogger, tmp_path: Path) -> None:
    """Tune snapshots its callbacks from its loop; a write stuck on the store must not hold that up."""
    done = threading.Event()
    with _writer_held(logger):  # a write in progress
        worker = threading.Thread(target=lambda: (pickle.dumps(logger), done.set()))
        worker.start()
        assert done.wait(timeout=30), "pickling waited for the writer"


def test_a_backlog_larger_than_one_mlflow_batch_is_split(logger: tracking.MLflowTrialLogger, tmp_path: Path) -> None:
    """MLflow's store takes at most 1000 metrics and tags per call: a backlog of 1,203 metrics
    (3 epochs) plus the status tag still lands whole."""
    trial = _trial(tmp_path, "wide")
    with _writer_held(logger):
        logger.on_trial_start(0, [], trial)
        for epoch in (1, 2, 3):
            result = {**{f"ap/c{i}": i / 1000 for i in range(400)}, "epoch": epoch, "training_iteration": epoch}
            trial.update_last_result(result)
            logger.on_trial_result(epoch, [], trial, result)
        logger.on_trial_complete(3, [], trial)
    assert logger.flush() == []
    run = _trial_runs(logger)[0]
    assert run.data.tags["sweeper.status"] == "finished"
    c = tracking.client(logger.uri)
    for name in ("ap/c0", "ap/c399"):
        assert sorted(m.step for m in c.get_metric_history(run.info.run_id, name)) == [1, 2, 3]
