"""`NAME:best` checkpoint references, resolved on a real MLflow store and a fabricated trial directory."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import Field

from sweeper.checkpoints import _best_in_trial, resolve_checkpoint_refs
from sweeper.config import SweepConfigError, load_sweep
from sweeper.registry import Strict, TaskSpec, TrainBase, register


class RefBase(Strict):
    train: TrainBase = TrainBase()
    x: float = 0.5
    init_from: str | None = Field(None, description="checkpoint")


register(TaskSpec(name="reftask", base=RefBase, entry="nowhere:Task", metrics=("score",),
                  checkpoint_keys=("init_from",)))


def _store(tmp_path: Path, name: str, task: str, trial: str, objective: float | None) -> None:
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = c.create_experiment(name)
    parent = c.create_run(exp, tags={"sweeper.kind": "sweep", "sweeper.task": task, "sweeper.objective": "score",
                                     "sweeper.mode": "max", "sweeper.searched": "[]"})
    run = c.create_run(exp, tags={"sweeper.kind": "trial", "sweeper.trial_id": trial, "sweeper.status": "finished",
                                  "mlflow.parentRunId": parent.info.run_id})
    if objective is not None:
        c.log_metric(run.info.run_id, "best_objective", objective)


def _trial_dir(root: Path, records: list[dict]) -> Path:
    root.mkdir(parents=True)
    for r in records:
        if r.get("checkpoint_dir_name"):
            (root / r["checkpoint_dir_name"]).mkdir()
            (root / r["checkpoint_dir_name"] / "trial_state.pt").write_bytes(b"x")
    (root / "result.json").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"cut by a cra')
    return root


def test_the_best_scored_checkpoint_of_a_trial_is_chosen(tmp_path: Path) -> None:
    trial = _trial_dir(tmp_path / "t", [
        {"epoch": 1, "score": 0.2, "checkpoint_dir_name": "checkpoint_000000"},
        {"epoch": 2, "score": 0.9, "checkpoint_dir_name": None},  # best, but no checkpoint saved
        {"epoch": 3, "score": 0.5, "checkpoint_dir_name": "checkpoint_000001"},
        {"epoch": 4, "score": 0.4, "checkpoint_dir_name": "checkpoint_000002"},
    ])
    assert _best_in_trial(trial, "score", "max") == trial / "checkpoint_000001" / "trial_state.pt"
    assert _best_in_trial(trial, "score", "min") == trial / "checkpoint_000000" / "trial_state.pt"
    assert _best_in_trial(tmp_path / "nowhere", "score", "max") is None


def _sweep(tmp_path: Path, init_from: str):  # noqa: ANN202
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\ntask: reftask\nbase: {{init_from: '{init_from}'}}\nobjective: {{metric: score}}\n"
                    "budget: {num_samples: 1}\n")
    return load_sweep(path, cwd=tmp_path)


def test_a_reference_resolves_to_the_best_trials_checkpoint(tmp_path: Path) -> None:
    _store(tmp_path, "earlier", "reftask", "abc", 0.7)
    _trial_dir(tmp_path / "runs" / "earlier" / "trial_abc", [{"epoch": 1, "score": 0.7,
                                                               "checkpoint_dir_name": "checkpoint_000000"}])
    sweep = resolve_checkpoint_refs(_sweep(tmp_path, "earlier:best"))
    assert sweep.base["init_from"] == str(tmp_path / "runs" / "earlier" / "trial_abc" / "checkpoint_000000"
                                          / "trial_state.pt")


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "no MLflow store at"),
    (lambda p: _store(p, "other", "reftask", "t", 0.5), "no sweep named 'earlier'"),
    (lambda p: _store(p, "earlier", "noop", "t", 0.5), "sweep 'earlier' trained task 'noop', not 'reftask'"),
    (lambda p: _store(p, "earlier", "reftask", "t", None), "has no trial with a value of 'score'"),
    (lambda p: _store(p, "earlier", "reftask", "t", 0.5), "the best trial t of sweep 'earlier' has no checkpoint"),
])
def test_a_bad_reference_is_refused_naming_the_field(tmp_path: Path, setup, message: str) -> None:  # noqa: ANN001
    setup(tmp_path)
    with pytest.raises(SweepConfigError, match=r"base\.init_from: earlier:best: ") as err:
        resolve_checkpoint_refs(_sweep(tmp_path, "earlier:best"))
    assert message in str(err.value)


def test_a_plain_path_is_made_absolute_and_must_exist(tmp_path: Path) -> None:
    (tmp_path / "w.pt").write_bytes(b"x")
    assert _sweep(tmp_path, "w.pt").base["init_from"] == str(tmp_path / "w.pt")
    with pytest.raises(SweepConfigError, match="base.init_from: .*missing.pt not found"):
        _sweep(tmp_path, "missing.pt")
