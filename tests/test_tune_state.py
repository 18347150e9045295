"""The guard on Tune's experiment state (sweeper.tune_state), on fabricated experiment dirs:
which states Tune could restore from, the copy sweeper keeps, and a resume's check that
recovers from it or refuses. The real launches are in tests/e2e/test_resume_safety.py."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sweeper import tune_state
from sweeper.config import SweepConfigError

GOOD = json.dumps({"trial_data": [[{"trial_id": "a"}, {"status": "TERMINATED"}]], "runner_data": {},
                   "stats": {"start_time": 1.0}}).encode()


@pytest.mark.parametrize("data, why", [
    (GOOD, None),
    (json.dumps({"trial_data": [], "runner_data": {}}).encode(), None),
    (None, "missing"),
    (b"", "damaged (Expecting value"),
    (GOOD[:40], "damaged (Unterminated"),
    (b"\xff\xfe", "damaged ("),
    (b"[]", "damaged (no runner_data)"),
    (json.dumps({"runner_data": {}}).encode(), "damaged (no list of trials"),
    (json.dumps({"runner_data": {}, "trial_data": [{"a": 1}]}).encode(), "damaged (no list of trials"),
])
def test_problem_says_what_tune_could_not_restore(data: bytes | None, why: str | None) -> None:
    got = tune_state.problem(data)
    assert (got is None) if why is None else (got or "").startswith(why), got


def experiment(tmp_path: Path, *states: tuple[str, bytes]) -> Path:
    exp = tmp_path / "runs" / "s"
    exp.mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"pickle")
    for session, data in states:
        (exp / f"experiment_state-{session}.json").write_bytes(data)
    return exp


def test_the_copy_follows_the_newest_good_state_only(tmp_path: Path) -> None:
    exp = experiment(tmp_path, ("2026-01-01_00-00-00", GOOD))
    seen = tune_state.keep_copy(str(exp))
    assert [p.name for p in (exp / "state_copy").iterdir()] == ["experiment_state-2026-01-01_00-00-00.json"]
    assert tune_state.keep_copy(str(exp), seen) == seen  # unchanged: not read again
    (exp / "experiment_state-2026-01-02_00-00-00.json").write_bytes(GOOD[:30])  # a newer session, half-written
    assert tune_state.keep_copy(str(exp), seen) == seen
    assert [p.name for p in (exp / "state_copy").iterdir()] == ["experiment_state-2026-01-01_00-00-00.json"]
    (exp / "experiment_state-2026-01-02_00-00-00.json").write_bytes(GOOD)
    tune_state.keep_copy(str(exp), seen)
    assert [p.name for p in (exp / "state_copy").iterdir()] == ["experiment_state-2026-01-02_00-00-00.json"]


def test_a_sound_state_is_left_alone(tmp_path: Path) -> None:
    exp = experiment(tmp_path, ("2026-01-01_00-00-00", b"{}"), ("2026-01-02_00-00-00", GOOD))
    assert tune_state.check_before_restore(str(exp), "s.yaml") is None  # only the newest is what Tune reads


@pytest.mark.parametrize("damage", [b"", GOOD[:50], None])
def test_a_damaged_or_missing_state_is_replaced_by_the_copy(tmp_path: Path, damage: bytes | None) -> None:
    exp = experiment(tmp_path, ("2026-01-01_00-00-00", GOOD))
    tune_state.keep_copy(str(exp))
    state = exp / "experiment_state-2026-01-01_00-00-00.json"
    if damage is None:
        state.unlink()
    else:
        state.write_bytes(damage)
    note = tune_state.check_before_restore(str(exp), "s.yaml")
    assert note and "restored the copy sweeper kept" in note and ("missing" if damage is None else "damaged") in note
    assert state.read_bytes() == GOOD and tune_state.check_before_restore(str(exp), "s.yaml") is None
    assert len(list(exp.glob("*.damaged-*"))) == (0 if damage is None else 1)


@pytest.mark.parametrize("copy", [None, b"{"])
def test_no_good_copy_refuses_naming_the_file(tmp_path: Path, copy: bytes | None) -> None:
    exp = experiment(tmp_path, ("2026-01-01_00-00-00", GOOD[:20]))
    if copy is not None:
        (exp / "state_copy").mkdir()
        (exp / "state_copy" / "experiment_state-2026-01-01_00-00-00.json").write_bytes(copy)
    with pytest.raises(SweepConfigError) as err:
        tune_state.check_before_restore(str(exp), "s.yaml")
    assert err.value.file == f"{exp}/experiment_state-2026-01-01_00-00-00.json"
    assert "sweeper launch s.yaml --fresh" in err.value.message and "finished trials again" in err.value.message
    assert ("is damaged" in err.value.message) == (copy is not None)
    assert (exp / "experiment_state-2026-01-01_00-00-00.json").read_bytes() == GOOD[:20]  # nothing touched


def test_an_experiment_at_a_uri_is_guarded_the_same_way() -> None:
    pytest.importorskip("fsspec")
    exp = "memory://bucket/runs/s"
    fs, path = tune_state._fs(exp)
    fs.create_dir(path, recursive=True)
    tune_state._write(fs, f"{path}/experiment_state-2026-01-01_00-00-00.json", GOOD)
    tune_state.keep_copy(exp)
    tune_state._write(fs, f"{path}/experiment_state-2026-01-01_00-00-00.json", b"")
    assert "restored the copy" in (tune_state.check_before_restore(exp, "s.yaml") or "")
    assert tune_state.problem(tune_state._read(fs, f"{path}/experiment_state-2026-01-01_00-00-00.json")) is None


def test_rays_silent_restart_becomes_an_error() -> None:
    tune_state.refuse_silent_restart("runs/s", "s.yaml")
    log = logging.getLogger("ray.tune.execution.tune_controller")
    log.info("Restoring the run from the latest experiment state file: x.json")  # other records pass
    try:
        with pytest.raises(SweepConfigError, match="would start the sweep over"):
            try:
                raise EOFError("pickle data was truncated")
            except EOFError:
                log.exception(tune_state.RESTORE_FAILED)
    finally:
        for f in list(log.filters):
            log.removeFilter(f)
