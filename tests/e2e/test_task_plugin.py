"""A task sweeper has never heard of, declared once in its own module, runs through the real CLI.

The test writes a tiny task package (its spec, its schema, a train/evaluate that return numbers)
into a temp directory, names it in `SWEEPER_TASKS`, and runs `validate`, `--dry-run` and a
1-trial launch (real Ray, real MLflow) without touching any file of sweeper: the registry is the
only place a task is declared. It also checks that MLflow logs the config the trial really ran
with (`train.workers: auto` resolved to a number), not the one the driver would rebuild.
"""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from .conftest import mlflow_client, run_sweeper, sweeper_env, trial_runs

pytestmark = pytest.mark.slow

TASK_MODULE = '''
"""A task outside sweeper: fits one number `w` to 0.25 by gradient steps."""
from pydantic import Field

from sweeper.registry import Strict, TaskSpec, TrainBase


class TinyTrain(TrainBase):
    lr: float = Field(0.5, gt=0, description="step size")


class TinyBase(Strict):
    w0: float = Field(2.0, description="starting value")
    init_from: str | None = Field(None, description="a trial checkpoint to start w from")
    train: TinyTrain = TinyTrain()


class TinyTask:
    def __init__(self, config, device="cpu"):
        self.w, self.lr = config.w0, config.train.lr
        self.runtime = {"device": device, "steps": config.train.batch_size, "init_from": config.init_from}
        if config.init_from:
            import torch

            self.w = float(torch.load(config.init_from, weights_only=True)["task"]["w"])

    def train_one_epoch(self, epoch):
        self.w -= self.lr * 2 * (self.w - 0.25)
        return {"train/loss": (self.w - 0.25) ** 2}

    def evaluate(self):
        return {"closeness": 1.0 / (1.0 + abs(self.w - 0.25))}

    def state_dict(self):
        return {"w": self.w}

    def load_state_dict(self, state):
        self.w = state["w"]


SPEC = TaskSpec(name="tiny", base=TinyBase, entry="tinytask:TinyTask", description="fits w",
                metrics=("closeness", "train/loss"), leaderboard_columns=("train/loss",),
                checkpoint_keys=("init_from",))
'''

SWEEP = """
name: tiny-sweep
task: tiny
base:
  train: {epochs: 2}
search:
  train.lr: {uniform: [0.1, 0.4]}
objective: {metric: closeness, mode: max}
scheduler: {name: fifo}
budget: {num_samples: 1}
resources: {cpu: 1}
"""


def test_a_task_declared_outside_sweeper_validates_dry_runs_and_launches(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "tinytask.py").write_text(textwrap.dedent(TASK_MODULE))
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(SWEEP)
    env = sweeper_env(SWEEPER_TASKS="tiny=tinytask:SPEC",
                      PYTHONPATH=os.pathsep.join([str(tmp_path / "plugins"), os.environ.get("PYTHONPATH", "")]))

    res = run_sweeper(["validate", str(sweep)], tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert "ok (1 trials, 1 searched keys)" in res.stdout

    res = run_sweeper(["launch", str(sweep), "--dry-run"], tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert "task=tiny" in res.stdout and "train.lr" in res.stdout and "w0" in res.stdout

    res = run_sweeper(["tasks"], tmp_path, env=env)
    assert res.returncode == 0 and "tiny" in res.stdout and "closeness" in res.stdout

    res = run_sweeper(["launch", str(sweep)], tmp_path, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "1 finished" in res.stdout

    c = mlflow_client(tmp_path)
    (run,) = trial_runs(c, "tiny-sweep")
    assert run.data.tags["sweeper.status"] == "finished"
    assert int(run.data.metrics["epoch"]) == 2 and 0 < run.data.metrics["closeness"] <= 1
    lr = float(run.data.params["train.lr"])
    w = 2.0
    for _ in range(2):
        w -= lr * 2 * (w - 0.25)
    assert run.data.metrics["closeness"] == pytest.approx(1.0 / (1.0 + abs(w - 0.25)))
    # what the trial trained with: `auto` resolved by the worker (0 loader workers on a CPU trial)
    assert run.data.params["train.workers"] == "0" and run.data.params["train.epochs"] == "2"
    logged = json.loads(Path(c.download_artifacts(run.info.run_id, "trial_config.json", str(tmp_path))).read_text())
    assert logged["train"]["workers"] == 0 and logged["task"] == "tiny"
    assert logged["runtime"]["device"] == "cpu" and "torch" in logged["runtime"]

    res = run_sweeper(["leaderboard", "tiny-sweep"], tmp_path, env=env)
    assert res.returncode == 0 and "closeness" in res.stdout and "train/loss" in res.stdout


def test_init_from_an_earlier_sweeps_best_checkpoint(tmp_path: Path) -> None:
    """`init_from: NAME:best` starts every trial from the best checkpoint of sweep NAME (same
    store, same storage); a sweep that does not exist is refused before anything runs."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "tinytask.py").write_text(textwrap.dedent(TASK_MODULE))
    env = sweeper_env(SWEEPER_TASKS="tiny=tinytask:SPEC",
                      PYTHONPATH=os.pathsep.join([str(tmp_path / "plugins"), os.environ.get("PYTHONPATH", "")]))
    (tmp_path / "tiny.yaml").write_text(SWEEP)
    run_sweeper(["launch", "tiny.yaml"], tmp_path, env=env, check=True)
    (tmp_path / "again.yaml").write_text(SWEEP.replace("name: tiny-sweep", "name: again")
                                         .replace("train: {epochs: 2}", "train: {epochs: 1}\n  init_from: tiny-sweep:best"))
    res = run_sweeper(["validate", "again.yaml", "--set", "init_from=nosuch:best"], tmp_path, env=env)
    assert res.returncode == 2 and "base.init_from: nosuch:best: no sweep named 'nosuch'" in res.stderr
    run_sweeper(["launch", "again.yaml"], tmp_path, env=env, check=True)

    c = mlflow_client(tmp_path)
    (first,) = trial_runs(c, "tiny-sweep")
    (second,) = trial_runs(c, "again")
    lr_a, lr_b = float(first.data.params["train.lr"]), float(second.data.params["train.lr"])
    w = 2.0
    for _ in range(2):  # the first sweep's best (and only) checkpoint: its last epoch
        w -= lr_a * 2 * (w - 0.25)
    w -= lr_b * 2 * (w - 0.25)  # one epoch on from there
    assert second.data.metrics["closeness"] == pytest.approx(1.0 / (1.0 + abs(w - 0.25)))
    logged = json.loads(Path(c.download_artifacts(second.info.run_id, "trial_config.json", str(tmp_path))).read_text())
    assert logged["init_from"].endswith("trial_state.pt") and "/tiny-sweep/trial_" in logged["init_from"]
