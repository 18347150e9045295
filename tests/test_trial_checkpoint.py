"""Bad trial checkpoints (truncated, not ours, another task's, another model's) fail with an error
naming the file and what is wrong, instead of an unpickling traceback or a page of missing keys."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sweeper.tasks.noop import NoopTask
from sweeper.trainable import STATE_FILE, CheckpointError, load_trial_state, restore_task


def _save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def test_truncated_checkpoint_names_the_file(tmp_path: Path) -> None:
    path = _save(tmp_path / STATE_FILE, {"task": {"w": torch.zeros(1000)}, "epoch": 3, "task_name": "noop"})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=rf"{path}: cannot read the trial checkpoint \(truncated"):
        load_trial_state(path, "noop", "cpu")


def test_a_text_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read the trial checkpoint"):
        load_trial_state(path, "noop", "cpu")


def test_a_foreign_state_dict_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / STATE_FILE, {"conv1.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="not a sweeper trial checkpoint"):
        load_trial_state(path, "noop", "cpu")


def test_another_tasks_checkpoint_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / STATE_FILE, {"task": {}, "epoch": 2, "task_name": "dbnet"})
    with pytest.raises(CheckpointError, match="saved by task 'dbnet', but this trial runs task 'detection'"):
        load_trial_state(path, "detection", "cpu")


def test_a_checkpoint_of_another_model_is_refused_clearly(tmp_path: Path) -> None:
    from sweeper.tasks.dbnet.model import build_dbnet

    task = _detection_like_task()
    saved = {"task": {"model": build_dbnet({"backbone": "resnet18", "channels": 16}).state_dict()}, "epoch": 1}
    with pytest.raises(CheckpointError, match=r"does not fit this trial's model .* --fresh"):
        restore_task(task, saved)


def test_a_good_checkpoint_round_trips(tmp_path: Path) -> None:
    task = NoopTask({"x": 0.1, "y": 0.2, "train": {"epochs": 2, "sleep_s": 0.0, "seed": 0}})
    path = _save(tmp_path / STATE_FILE, {"task": task.state_dict(), "epoch": 1, "task_name": "noop"})
    saved = load_trial_state(path, "noop", "cpu")
    restore_task(task, saved)
    assert saved["epoch"] == 1


def _detection_like_task() -> object:
    """A task whose state is a torch model (load_state_dict is strict, as the real tasks')."""

    class Task:
        model = torch.nn.Linear(4, 2)

        def load_state_dict(self, state: dict) -> None:
            self.model.load_state_dict(state["model"])

    return Task()
