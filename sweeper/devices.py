"""Where a trial trains: the device it picks from what Ray assigned it, as pure functions of flags.

Ray schedules `resources.gpu` as a number: it hands a trial GPU ids and sets `CUDA_VISIBLE_DEVICES`
in its process, whether or not the node really has those GPUs (`ray start --num-gpus 2` on a
machine without any declares logical ones) or a working driver. A torch task given GPUs but no
CUDA must not fall back to the CPU: it would train 10-100x slower while holding a GPU slot, and
the sweep's numbers would be silently wrong. So the decision is one function of what the trial
asked, what its task needs and what torch sees, tested table-driven on a CPU machine::

    where = Placement.here(ray.get_gpu_ids())         # node, GPU ids, CUDA_VISIBLE_DEVICES
    device = trial_device(spec.resources.gpu, uses_cuda=task.uses_cuda,
                          cuda_available=torch.cuda.is_available(), placement=where)

This module imports neither torch nor Ray (the caller passes what they said).
"""
from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: Ray sets this in every worker it starts for a task holding GPUs (empty for a CPU-only one)
CUDA_ENV = "CUDA_VISIBLE_DEVICES"


class NoCudaError(RuntimeError):
    """Ray assigned a trial GPUs but CUDA is not usable in its process (a driver problem on the
    node, a CPU-only torch build, or logical GPUs declared with `ray start --num-gpus`)."""


@dataclass(frozen=True)
class Placement:
    """Where a trial's process runs, as the error and the trial's logged config name it."""

    hostname: str
    node_ip: str
    gpu_ids: tuple[str, ...] = ()  # Ray's ids for the GPUs this trial holds (shared ids for fractions)
    cuda_visible_devices: str | None = None  # as Ray set it in this process; None: not set

    @classmethod
    def here(cls, gpu_ids: Iterable[Any] = (), node_ip: str | None = None) -> "Placement":
        """This process's placement; `gpu_ids` from `ray.get_gpu_ids()`, `node_ip` from Ray when known."""
        host = socket.gethostname()
        if node_ip is None:
            try:
                node_ip = socket.gethostbyname(host)
            except OSError:
                node_ip = "unknown"
        return cls(host, node_ip, tuple(str(g) for g in gpu_ids), os.environ.get(CUDA_ENV))

    def runtime(self) -> dict[str, Any]:
        """What the trial logs with its config (`runtime.gpu_ids`, `runtime.node`, ...)."""
        return {"node": f"{self.hostname} ({self.node_ip})", "gpu_ids": list(self.gpu_ids),
                "cuda_visible_devices": self.cuda_visible_devices}


def trial_device(gpus: float, *, uses_cuda: bool, cuda_available: bool, placement: Placement,
                 torch_cuda: str | None = None) -> str:
    """"cuda" or "cpu" for a trial that asked for `gpus` (`resources.gpu`).

    A trial without GPUs, or of a task that does not use CUDA (noop, command: the script picks its
    own device from CUDA_VISIBLE_DEVICES), runs on "cpu". A torch task holding GPUs runs on "cuda";
    if torch sees no CUDA there it raises NoCudaError naming the node, the GPU ids and
    CUDA_VISIBLE_DEVICES, rather than train on the CPU. `torch_cuda` is `torch.version.cuda` (None:
    a CPU-only build), which tells a build problem from a driver one.
    """
    if gpus <= 0 or not uses_cuda:
        return "cpu"
    if cuda_available:
        return "cuda"
    build = (f"this torch is built for CUDA {torch_cuda}, so the driver is the likely cause" if torch_cuda
             else "this torch is a CPU-only build: install a CUDA build of torch on that node")
    visible = "unset" if placement.cuda_visible_devices is None else repr(placement.cuda_visible_devices)
    raise NoCudaError(
        f"no CUDA on node {placement.hostname} ({placement.node_ip}): Ray gave this trial GPU "
        f"{', '.join(placement.gpu_ids) or '(none)'} (resources.gpu {gpus:g}, CUDA_VISIBLE_DEVICES={visible}) but "
        f"torch.cuda.is_available() is false there; {build}. Check the NVIDIA driver on that node (`nvidia-smi`), "
        "that its `ray start --num-gpus` counts real GPUs (a machine without them only has logical ones), or "
        "set resources.gpu: 0 to train on CPUs. The trial was not trained on the CPU instead.")


def gpu_share(device: str, gpus: float) -> float:
    """The GPUs a trial's time is counted on (`gpu_seconds`): `resources.gpu` on CUDA, else 0,
    which makes the metric absent (a CPU trial used no GPU time; 0 would read as a free GPU trial)."""
    return float(gpus) if str(device).startswith("cuda") else 0.0
