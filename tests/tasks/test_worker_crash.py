"""A dead DataLoader worker is told apart from other errors (`worker_crash`), with its pid and
signal and what to look at. The workers here really die: the test hook SIGKILLs a worker process
as a segfaulting decoder or the out-of-memory killer would."""
from __future__ import annotations

import os
import threading
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from sweeper.tasks.training import (
    INJECT_WORKER_CRASH_ENV,
    DataLoaderWorkerError,
    check_injected_worker_crash,
    worker_crash,
)


class Items(Dataset):
    """Four tensors; loading one calls the fault hook as the detection dataset does."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 4

    def __getitem__(self, idx: int) -> torch.Tensor:
        check_injected_worker_crash(self.epoch)
        return torch.full((2,), float(idx))


def _iterate(loader: DataLoader, in_thread: bool) -> BaseException | None:
    """Read the whole loader, in this thread or (as Ray runs a trial) in another; the error, if any."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            for _ in loader:
                pass
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            caught.append(exc)

    if in_thread:
        t = threading.Thread(target=run)
        t.start()
        t.join(timeout=120)
        assert not t.is_alive(), "the loader hung after its worker died"
    else:
        run()
    return caught[0] if caught else None


@pytest.mark.parametrize("in_thread", [True, False], ids=["trial_thread", "main_thread"])
def test_a_killed_worker_is_reported_as_a_worker_crash(in_thread: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Off the main thread torch finds the dead worker itself ('pid(s) N exited unexpectedly', the
    signal read from the worker's exit code); on it, its SIGCHLD handler says 'killed by signal'."""
    monkeypatch.setenv(INJECT_WORKER_CRASH_ENV, "2")
    exc = _iterate(DataLoader(Items(epoch=2), batch_size=2, num_workers=1), in_thread)
    assert isinstance(exc, RuntimeError) and "DataLoader worker" in str(exc), repr(exc)
    crash = worker_crash(exc, "training epoch 2")
    assert isinstance(crash, DataLoaderWorkerError)
    msg = str(crash)
    assert msg.startswith("DataLoader worker crash: worker process (pid "), msg
    assert "died while training epoch 2, killed by signal SIGKILL" in msg and "out-of-memory killer" in msg, msg
    assert "Lower train.workers" in msg and "check the dataset's images" in msg and "\n" not in msg, msg


def test_the_hook_spares_other_epochs_and_the_trial_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INJECT_WORKER_CRASH_ENV, "2")
    batches = [b for b in DataLoader(Items(epoch=1), batch_size=2, num_workers=1)]  # another epoch
    assert len(batches) == 2
    batches = [b for b in DataLoader(Items(epoch=2), batch_size=2, num_workers=0)]  # no worker to kill
    assert torch.equal(torch.cat(batches)[:, 0], torch.arange(4.0))


CASES: list[tuple[str, Any, str | None]] = [
    # (what, the exception, words of the classified message or None: not a worker crash)
    ("sigchld_killed", RuntimeError("DataLoader worker (pid 5) is killed by signal: Killed. "),
     "killed by signal SIGKILL (Killed) (SIGKILL is often the kernel's out-of-memory killer)"),
    ("loader_check", RuntimeError("DataLoader worker (pid(s) 12, 13) exited unexpectedly"),
     "worker processes (pids 12, 13) died while training epoch 1, cause unknown"),
    ("sigchld_signal", RuntimeError("DataLoader worker (pid 77) is killed by signal: Segmentation fault. "),
     "worker process (pid 77) died while training epoch 1, killed by signal SIGSEGV (Segmentation fault). Lower"),
    ("sigchld_bus_error", RuntimeError("DataLoader worker (pid 77) is killed by signal: Bus error. It is possible "
                                       "that dataloader's workers are out of shared memory."),
     "killed by signal SIGBUS (Bus error). Lower"),
    ("sigchld_exit_code", RuntimeError("DataLoader worker (pid 9) exited unexpectedly with exit code 1. Details "
                                       "are lost due to multiprocessing."),
     "(pid 9) died while training epoch 1, exit code 1."),
    ("other_runtime_error", RuntimeError("CUDA error: device-side assert triggered"), None),
    ("timeout", RuntimeError("DataLoader timed out after 5 seconds"), None),
    ("worker_raised", ValueError("Caught ValueError in DataLoader worker process 0."), None),
]


@pytest.mark.parametrize("what, exc, words", CASES, ids=[c[0] for c in CASES])
def test_worker_crash_classification(what: str, exc: BaseException, words: str | None) -> None:
    crash = worker_crash(exc, "training epoch 1")
    if words is None:
        assert crash is None
    else:
        assert isinstance(crash, DataLoaderWorkerError) and words in str(crash), str(crash)


def test_the_hook_reads_only_its_own_variable() -> None:
    assert INJECT_WORKER_CRASH_ENV not in os.environ  # a leaked variable would kill real workers
