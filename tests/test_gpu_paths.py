"""Every GPU-only decision, run on a CPU machine: they are pure functions of flags and device
strings, so each branch is tested here, table-driven, whether or not a GPU exists.

- which device a trial trains on, and the no-CUDA error of a trial Ray gave a GPU (`sweeper.devices`)
- AMP and channels_last on CUDA only (`training.device_settings`, what the tasks log as `runtime`)
- a GPU trial's data loader: `train.workers: auto` from its CPUs, pinned memory, non-blocking copies
- the out-of-memory fallback's next micro-batch count (`trainable.oom_micro_batches`)
- `gpu_seconds` and `gpu/peak_mem_gib` absent on CPU, not 0
- how many trials the cluster's GPUs pack (`runner.trials_that_fit`, `budget.max_concurrent`'s
  default) and the refusal of a sweep no node can hold (`runner.resources_problem`)

The e2e side (real Ray with logical GPUs) is tests/e2e/test_gpu_scheduling.py.
"""
from __future__ import annotations

import pytest
import torch

from sweeper.devices import NoCudaError, Placement, gpu_share, trial_device
from sweeper.registry import get_spec
from sweeper.runner import resources_problem, trials_that_fit
from sweeper.tasks.training import device_settings, loader_settings, run_epoch
from sweeper.time_budget import TrialClock
from sweeper.trainable import oom_micro_batches

HERE = Placement("gpu-node-7", "10.0.0.7", ("1",), "1")


@pytest.mark.parametrize("gpus, uses_cuda, cuda, expected", [
    (0, True, False, "cpu"),     # a CPU trial
    (0, True, True, "cpu"),      # a CPU trial on a GPU machine stays off the GPU it did not ask for
    (1, True, True, "cuda"),
    (0.25, True, True, "cuda"),  # a fraction of a GPU is still CUDA
    (1, False, False, "cpu"),    # noop / command: no CUDA needed, whatever Ray assigned
    (0.5, False, True, "cpu"),
])
def test_the_trial_device_follows_resources_task_and_cuda(gpus: float, uses_cuda: bool, cuda: bool,
                                                          expected: str) -> None:
    assert trial_device(gpus, uses_cuda=uses_cuda, cuda_available=cuda, placement=HERE) == expected


@pytest.mark.parametrize("torch_cuda, build", [
    ("13.0", "built for CUDA 13.0, so the driver is the likely cause"),
    (None, "a CPU-only build: install a CUDA build of torch on that node"),
])
def test_a_gpu_trial_without_cuda_fails_naming_the_node_and_cuda_visible_devices(torch_cuda: str | None,
                                                                                  build: str) -> None:
    with pytest.raises(NoCudaError) as err:
        trial_device(0.5, uses_cuda=True, cuda_available=False, placement=HERE, torch_cuda=torch_cuda)
    text = str(err.value)
    assert text.startswith("no CUDA on node gpu-node-7 (10.0.0.7): Ray gave this trial GPU 1 (resources.gpu 0.5, "
                           "CUDA_VISIBLE_DEVICES='1')"), text
    assert build in text and "NVIDIA driver" in text and "resources.gpu: 0" in text, text
    assert "not trained on the CPU" in text
    unset = Placement("n", "1.2.3.4")  # Ray did not set the variable (a driver outside Ray)
    with pytest.raises(NoCudaError, match=r"GPU \(none\) \(resources.gpu 1, CUDA_VISIBLE_DEVICES=unset\)"):
        trial_device(1, uses_cuda=True, cuda_available=False, placement=unset)


def test_the_placement_reads_what_ray_set_and_is_logged_with_the_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    where = Placement.here([0, 1], node_ip="10.1.2.3")
    assert where.gpu_ids == ("0", "1") and where.cuda_visible_devices == "0,1" and where.node_ip == "10.1.2.3"
    assert where.runtime() == {"node": f"{where.hostname} (10.1.2.3)", "gpu_ids": ["0", "1"],
                               "cuda_visible_devices": "0,1"}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert Placement.here().cuda_visible_devices is None and Placement.here().node_ip  # an IP, or "unknown"


def test_torch_tasks_need_cuda_noop_and_command_do_not() -> None:
    assert {n: get_spec(n).uses_cuda for n in ("detection", "dbnet", "noop", "command")} == \
        {"detection": True, "dbnet": True, "noop": False, "command": False}


@pytest.mark.parametrize("device, amp, channels_last, expected", [
    ("cpu", True, True, {"device": "cpu", "amp": False, "channels_last": False}),  # CPU: neither, whatever asked
    ("cpu", False, False, {"device": "cpu", "amp": False, "channels_last": False}),
    ("cuda", True, True, {"device": "cuda", "amp": True, "channels_last": True}),  # detection on a GPU
    ("cuda:1", False, True, {"device": "cuda", "amp": False, "channels_last": True}),  # train.amp: false
    ("cuda", True, False, {"device": "cuda", "amp": True, "channels_last": False}),  # DBNet on a GPU
    (torch.device("cuda", 0), True, True, {"device": "cuda", "amp": True, "channels_last": True}),
])
def test_amp_and_channels_last_are_on_cuda_only(device: object, amp: bool, channels_last: bool,
                                                 expected: dict) -> None:
    assert device_settings(device, amp=amp, channels_last=channels_last) == expected


def test_a_gpu_trial_loads_with_workers_from_its_cpus_into_pinned_memory() -> None:
    """What the trainable resolves for a GPU trial (`train.workers: auto`, 4 CPUs -> 3 workers, one
    core left to the trial), and the loader and copies that follow, run here: on a machine without
    an accelerator torch skips the pinning (with a warning) and the non-blocking copy is a copy."""
    from sweeper.tasks.detection.data import make_loader

    device = trial_device(1, uses_cuda=True, cuda_available=True, placement=HERE)
    assert loader_settings("auto", device=device, cpus=4) == {"num_workers": 3, "pin_memory": True}
    assert loader_settings("auto", device=trial_device(0, uses_cuda=True, cuda_available=True, placement=HERE),
                           cpus=4) == {"num_workers": 0, "pin_memory": False}  # a CPU trial's cores train
    items = [(torch.full((3, 8, 8), float(i)), {"boxes": torch.zeros(0, 4)}) for i in range(4)]
    loader = make_loader(items, batch_size=2, shuffle=False, seed=0, workers=0, pin_memory=True)
    with pytest.warns(UserWarning, match="pin_memory"):
        batches = list(loader)
    copied = [im.to("cpu", non_blocking=True) for images, _ in batches for im in images]
    assert [float(im[0, 0, 0]) for im in copied] == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("micro, batch, retries, budget, expected", [
    (1, 8, 0, 2, 2),      # first OOM: twice the micro-batches, same effective batch
    (2, 8, 1, 2, 4),
    (4, 8, 2, 2, None),   # retries spent: the trial fails saying what to change
    (4, 6, 0, 3, 6),      # never more micro-batches than images
    (8, 8, 0, 3, None),   # one image per micro-batch already: nothing left to split
])
def test_the_out_of_memory_fallback_doubles_micro_batches_within_its_budget(
        micro: int, batch: int, retries: int, budget: int, expected: int | None) -> None:
    assert oom_micro_batches(micro, batch, retries, budget) == expected


def test_gpu_seconds_and_peak_gpu_memory_are_absent_on_cpu_not_zero() -> None:
    assert gpu_share("cuda", 0.5) == 0.5 and gpu_share("cuda:0", 2) == 2.0
    assert gpu_share("cpu", 1) == 0.0  # a GPU was asked for but the trial runs on CPU (noop)
    assert "gpu_seconds" in TrialClock(10.0, gpu_share("cuda", 0.5)).metrics()
    assert TrialClock(10.0, gpu_share("cpu", 0.5)).metrics() == {}
    model = torch.nn.Linear(2, 1)

    class Opt:  # the smallest optimizer run_epoch steps
        lr = 0.1

        def zero_grad(self) -> None: ...
        def backward(self, loss: torch.Tensor) -> None: loss.backward()
        def update(self) -> None: ...

    batches = [(torch.ones(2, 2), torch.zeros(2, 1))]
    metrics = run_epoch(model, batches, lambda x, y: {"loss": ((model(x) - y) ** 2).mean()}, Opt(), epoch=1,
                        prepare=lambda b: b)
    assert "train/loss" in metrics and "gpu/peak_mem_gib" not in metrics


def _node(cpu: float, gpu: float = 0) -> dict[str, float]:
    return {"CPU": cpu, **({"GPU": gpu} if gpu else {})}


@pytest.mark.parametrize("cpu, gpu, nodes, expected", [
    (0.5, 1, [_node(8, 2), _node(4)], 2),        # the e2e cluster: GPUs bound it, node B holds none
    (0.5, 0.5, [_node(8, 2), _node(4)], 4),
    (0.5, 0.25, [_node(8, 2), _node(4)], 8),
    (1, 0.1, [_node(32, 2)], 20),                # 10 per GPU in Ray's units (2 // 0.1 is 19.0)
    (1, 0.4, [_node(32, 2)], 4),                 # 2 per GPU: a fraction never spans two GPUs
    (4, 0.25, [_node(8, 2)], 2),                 # the CPUs bound it
    (1, 2, [_node(16, 1), _node(16, 1)], 0),     # 2 GPUs in the cluster, but not on one node
    (1, 2, [_node(16, 4), _node(16, 8)], 6),
    (0.25, 0, [_node(2), _node(1)], 12),         # CPU trials: every node's CPUs
])
def test_trials_that_fit_count_node_by_node_as_ray_packs(cpu: float, gpu: float, nodes: list, expected: int) -> None:
    assert trials_that_fit(cpu, gpu, nodes) == expected


def test_a_sweep_no_node_can_hold_is_refused_saying_what_is_missing() -> None:
    assert resources_problem(1, 0.5, [_node(8, 2)]) is None
    field, text = resources_problem(1, 0.5, [_node(2)], local=True)
    assert field == "resources.gpu" and "this machine's Ray" in text and "no GPUs at all" in text, text
    assert "resources.gpu lower (0: train on CPUs)" in text
    field, text = resources_problem(1, 4, [_node(8, 2), _node(8, 1)])
    assert field == "resources.gpu" and "at most 2 GPU on one node" in text and "ray start --num-gpus" in text
    field, text = resources_problem(16, 0, [_node(8), _node(8)])
    assert field == "resources" and "16 CPU and 0 GPU" in text and "8 CPU/0 GPU, 8 CPU/0 GPU" in text
