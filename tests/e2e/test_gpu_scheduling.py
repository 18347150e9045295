"""GPU scheduling on a CPU machine, with Ray's logical GPUs: one cluster per module, a head started
with `ray start --num-gpus 2` (GPUs Ray counts and assigns, no CUDA behind them) and a second
raylet with `--num-gpus 0` on 127.0.0.2, joined by every launch with `--address`.

Real noop sweeps at `resources.gpu` 1, 0.5 and 0.25 run as many trials at once as the two GPUs
pack (2, 4, 8: overlap of the trials' start/end times in Ray's result.json), all on the GPU node,
each seeing the GPU id Ray assigned as CUDA_VISIBLE_DEVICES (the trial logs `runtime.gpu_ids`
and `runtime.cuda_visible_devices`), fractional trials sharing ids; `budget.max_concurrent`
defaults from the GPUs. A detection trial given a (logical) GPU finds no CUDA and fails with
the error naming the node and CUDA_VISIBLE_DEVICES, without training. A sweep asking for more
GPUs than a node has, or for any on a machine without GPUs (the local Ray of a launch without
--address), is refused before dispatch with exit 2.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import RayNode, free_port, mlflow_client, ray_results, run_sweeper, sweeper_env, trial_runs
from .conftest import write_sweep

pytestmark = pytest.mark.slow

HEAD_IP, NODE_B_IP = "127.0.0.1", "127.0.0.2"
#: the trial config's key in Ray's result.json (sweeper.results.TRIAL_CONFIG)
TRIAL_CONFIG = "sweeper/trial_config"
#: Ray's result timestamps are whole seconds: intervals are trimmed by this much at each end before
#: counting overlaps, so trials one after the other never count as concurrent
SLACK_S = 0.6


def _ports(*flags: str) -> list[str]:
    return [f"--{flag}={free_port()}" for flag in flags]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], Path, str]]:
    """(address, environment for launches, working directory, the head's node IP): the head with 8
    logical CPUs and 2 logical GPUs, node B with 4 CPUs and no GPUs; the directory is declared
    shared storage. The head's IP, as Ray records it with results, is the one its log names."""
    work = tmp_path_factory.mktemp("gpu")
    env = sweeper_env(RAY_AUTH_MODE="token", SWEEPER_SHARED_STORAGE=str(work))
    env.pop("RAY_ADDRESS", None)
    tmp = tempfile.mkdtemp(prefix="rgpu", dir="/tmp")  # short: Ray's unix sockets live under it
    port = free_port()
    common = ["--memory=2000000000", "--object-store-memory=100000000"]
    head = RayNode(["--head", f"--port={port}", "--num-cpus=8", "--num-gpus=2", f"--node-ip-address={HEAD_IP}",
                    "--include-dashboard=false", f"--temp-dir={tmp}", "--disable-usage-stats", *common,
                    *_ports("dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                            "runtime-env-agent-port", "metrics-export-port")], Path(tmp) / "head.log", env)
    node_b = None
    try:
        node_b = RayNode([f"--address={HEAD_IP}:{port}", "--num-cpus=4", "--num-gpus=0",
                          f"--node-ip-address={NODE_B_IP}", *common,
                          *_ports("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                  "runtime-env-agent-port", "metrics-export-port")], work / "node_b.log", env)
        assert head.ip != NODE_B_IP
        yield f"{HEAD_IP}:{port}", env, work, head.ip
    finally:
        if node_b is not None:
            node_b.stop()
        head.stop()
        subprocess.run(["rm", "-rf", tmp], check=False)


def _noop(name: str, gpu: float, trials: int, sleep_s: float) -> str:
    return f"""
        name: {name}
        task: noop
        base: {{train: {{epochs: 1, sleep_s: {sleep_s}}}}}
        search: {{x: {{uniform: [0.0, 1.0]}}}}
        objective: {{metric: score, mode: max}}
        search_alg: {{name: random, seed: 0}}
        scheduler: {{name: fifo}}
        budget: {{num_samples: {trials}}}
        resources: {{cpu: 0.5, gpu: {gpu}}}
    """


def _launch(cwd: Path, file: str, address: str | None, env: dict[str, str], timeout: float = 300):  # noqa: ANN202
    args = ["launch", file, *(["--address", address] if address else [])]
    return run_sweeper(args, cwd, timeout=timeout, env=env)


def peak(intervals: dict[str, tuple[float, float]]) -> tuple[int, set[str]]:
    """The most intervals (start, end) that overlap at one moment, and which: each trimmed by
    SLACK_S at both ends (whole-second timestamps), checked at every trimmed start."""
    trimmed = {k: (a + SLACK_S, b - SLACK_S) for k, (a, b) in intervals.items()}
    best: set[str] = set()
    for t, _ in trimmed.values():
        now = {k for k, (a, b) in trimmed.items() if a <= t < b}
        best = max(best, now, key=len)
    return len(best), best


def test_gpu_trials_pack_as_the_fractions_allow_on_the_gpu_node_only(cluster) -> None:  # noqa: ANN001
    address, env, work, head_ip = cluster
    table = {}
    for gpu, trials, expect, sleep_s in [(1, 4, 2, 4.0), (0.5, 8, 4, 4.0), (0.25, 8, 8, 8.0)]:
        name = f"pack-{str(gpu).replace('.', '')}"
        write_sweep(work / f"{name}.yaml", _noop(name, gpu, trials, sleep_s))
        t0 = time.time()
        proc = _launch(work, f"{name}.yaml", address, env)
        wall = time.time() - t0
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        assert f"{trials} finished, 0 stopped early by ASHA, 0 failed of {trials} trials" in out, out[-4000:]
        results = ray_results(work / "runs" / name)
        assert len(results) == trials
        spans, ids = {}, {}
        for trial, rows in results.items():
            last = rows[-1]
            assert {r["node_ip"] for r in rows} == {head_ip}, (trial, rows)  # node B has no GPU
            runtime = json.loads(rows[0][TRIAL_CONFIG])["runtime"]
            assert len(runtime["gpu_ids"]) == 1 and runtime["gpu_ids"][0] in ("0", "1"), runtime
            assert runtime["cuda_visible_devices"] == runtime["gpu_ids"][0], runtime  # as Ray set it
            assert runtime["device"] == "cpu" and f"({head_ip})" in runtime["node"]  # noop needs no CUDA
            spans[trial] = (last["timestamp"] - last["time_total_s"], last["timestamp"])
            ids[trial] = runtime["gpu_ids"][0]
        most, together = peak(spans)
        assert most == expect, (gpu, spans)
        # the trials running together share the 2 GPUs evenly: 1/gpu of them on each id
        assert sorted(Counter(ids[t] for t in together).values()) == [int(expect / 2)] * 2, (together, ids)
        table[gpu] = (most, trials, wall)
        # MLflow has the same record: `runtime.gpu_ids` and `runtime.cuda_visible_devices` params
        runs = trial_runs(work, name)
        assert sorted(r.data.params["runtime.cuda_visible_devices"] for r in runs) == sorted(ids.values())

    # budget.max_concurrent's default, as launch computes it on this cluster: the GPUs bound it
    code = ("import sys, ray; from sweeper.config import load_sweep; from sweeper.runner import max_concurrent; "
            f"ray.init(address={address!r}, log_to_driver=False); "
            "print([max_concurrent(load_sweep(f)) for f in sys.argv[1:]])")
    files = [f"pack-{g}.yaml" for g in ("1", "05", "025")]
    got = subprocess.run([sys.executable, "-c", code, *files], cwd=work, env=env, capture_output=True, text=True,
                         timeout=120)
    assert got.returncode == 0, got.stderr[-3000:]
    assert got.stdout.strip().splitlines()[-1] == "[2, 4, 8]", got.stdout + got.stderr[-2000:]
    print("\nlogical GPUs (2 on the head): resources.gpu -> most trials at once / trials, launch wall time: "
          + "; ".join(f"{g} -> {m}/{n} in {w:.0f} s" for g, (m, n, w) in table.items()))


DETECTION = """
name: no-cuda
task: detection
data: {train: data/train.json, val: data/val.json, images: data/images, synth: {images: 4, size: 64, seed: 1}}
base:
  model: {arch: retinanet, backbone: resnet18, fpn_channels: 16}
  train: {epochs: 1, batch_size: 2, resolution: 64, warmup_epochs: 0}
objective: {metric: map50}
scheduler: {name: fifo}
budget: {num_samples: 1}
resources: {cpu: 1, gpu: 0.5}
"""


def test_a_torch_trial_given_a_gpu_without_cuda_fails_saying_where(cluster) -> None:  # noqa: ANN001
    address, env, work, head_ip = cluster
    write_sweep(work / "no-cuda.yaml", DETECTION)
    proc = _launch(work, "no-cuda.yaml", address, env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]  # a failed trial is reported, as any failed trial
    assert "0 finished, 0 stopped early by ASHA, 1 failed of 1 trials" in out, out[-4000:]
    assert "no CUDA on node" in out, out[-4000:]
    (run,) = trial_runs(mlflow_client(work), "no-cuda")
    error = run.data.tags["sweeper.error"]
    assert run.data.tags["sweeper.status"] == "failed", run.data.tags
    assert error.startswith("sweeper.devices.NoCudaError: no CUDA on node "), error
    assert f"({head_ip})" in error and "resources.gpu 0.5" in error, error
    assert "CUDA_VISIBLE_DEVICES='0'" in error or "CUDA_VISIBLE_DEVICES='1'" in error, error
    assert "NVIDIA driver" in error and "not trained on the CPU" in error, error
    assert "train/loss" not in run.data.metrics  # nothing trained on the CPU


def test_a_sweep_no_node_can_hold_is_refused_before_dispatch(cluster) -> None:  # noqa: ANN001
    address, env, work, _ = cluster
    # the cluster: 2 GPUs on one node, a trial asking for 3
    write_sweep(work / "too-big.yaml", _noop("too-big", 3, 1, 0.0))
    proc = _launch(work, "too-big.yaml", address, env, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "too-big.yaml: resources.gpu:" in out and "at most 2 GPU on one node" in out, out[-3000:]
    assert not list((work / "runs").glob("too-big/trial_*")) and trial_runs(work, "too-big") == []

    # no --address: the local Ray of this machine, which has no GPUs
    if shutil.which("nvidia-smi") or Path("/proc/driver/nvidia").exists():
        pytest.skip("this machine has NVIDIA GPUs: its local Ray would hold the trial")
    local_env = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "SWEEPER_SHARED_STORAGE")}
    write_sweep(work / "no-gpus.yaml", _noop("no-gpus", 0.5, 1, 0.0))
    t0 = time.time()
    proc = _launch(work, "no-gpus.yaml", None, local_env, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "no-gpus.yaml: resources.gpu:" in out and "no GPUs at all" in out, out[-3000:]
    assert "this machine's Ray" in out and "resources.gpu lower" in out, out[-3000:]
    assert not list((work / "runs").glob("no-gpus/trial_*")) and trial_runs(work, "no-gpus") == []
    print(f"\nrefused without GPUs in {time.time() - t0:.1f} s")
