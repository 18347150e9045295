"""Multi-node Ray on one machine: a head and a second raylet started with `ray start`, a sweep
launched with `--address`, trials on both nodes; the storage pre-flight refusing a node-local
directory; and the second raylet killed mid-sweep, its trials retried from their last checkpoint.

The two nodes share this machine's hostname, so they are told apart by IP: the head takes this
machine's address and the second raylet `--node-ip-address 127.0.0.2` (any 127.x address is
loopback on Linux). Ray records the node's IP with every result (`node_ip` in result.json).
Every process a test starts is killed by PID at the end (each `ray start` leads its own session).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import RayNode, all_pids, free_port, kill_pids, mlflow_client, proc_stat, ray_results
from .conftest import start_sweeper, sweeper_env, trial_runs, write_sweep

pytestmark = pytest.mark.slow

NODE_B_IP = "127.0.0.2"
# a dead raylet is noticed after period x threshold: ~3 s instead of Ray's default ~15 s
FAST_HEALTH_CHECK = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
                     "RAY_health_check_timeout_ms": "1000"}


def descendants(pid: int) -> list[int]:
    parents = {p: st[0] for p in all_pids() if (st := proc_stat(p))}
    out, frontier = [], {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier}
        out += sorted(frontier)
    return out


def _ports(*flags: str) -> list[str]:
    return [f"--{flag}={free_port()}" for flag in flags]


@pytest.fixture(scope="module")
def cluster_env() -> Iterator[dict[str, str]]:
    """Environment for the nodes and drivers: the session's Ray token, token auth on."""
    env = sweeper_env(RAY_AUTH_MODE="token", **FAST_HEALTH_CHECK)
    env.pop("RAY_ADDRESS", None)
    yield env


@pytest.fixture(scope="module")
def head(cluster_env: dict[str, str]) -> Iterator[tuple[RayNode, str]]:
    """The head node (1 CPU, resource `node_a`) with its own short temp dir and ports."""
    tmp = tempfile.mkdtemp(prefix="rmn", dir="/tmp")  # short: Ray's unix sockets live under it
    port = free_port()
    node = RayNode(["--head", f"--port={port}", "--num-cpus=1", '--resources={"node_a": 1}',
                   "--node-ip-address=127.0.0.1", "--include-dashboard=false", f"--temp-dir={tmp}",
                   "--memory=2000000000", "--object-store-memory=100000000", "--disable-usage-stats",
                   *_ports("dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                           "runtime-env-agent-port", "metrics-export-port")],
                  Path(tmp) / "head.log", cluster_env)
    try:
        yield node, f"127.0.0.1:{port}"
    finally:
        node.stop()
        subprocess.run(["rm", "-rf", tmp], check=False)


@pytest.fixture()
def node_b(head: tuple[RayNode, str], cluster_env: dict[str, str], tmp_path: Path) -> Iterator[RayNode]:
    """A second raylet (1 CPU, resource `node_b`) joining the head on 127.0.0.2."""
    _, address = head
    node = RayNode([f"--address={address}", "--num-cpus=1", '--resources={"node_b": 1}',
                   f"--node-ip-address={NODE_B_IP}", "--memory=2000000000", "--object-store-memory=100000000",
                   *_ports("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                           "metrics-export-port")],
                  tmp_path / "node_b.log", cluster_env)
    try:
        yield node
    finally:
        node.stop()


def _sweep(tmp_path: Path, name: str, epochs: int, sleep_s: float, extra: str = "") -> Path:
    return write_sweep(tmp_path / f"{name}.yaml", f"""
        name: {name}
        task: noop
        base: {{train: {{epochs: {epochs}, sleep_s: {sleep_s}}}}}
        search: {{x: {{uniform: [0.0, 1.0]}}, y: {{uniform: [0.0, 1.0]}}}}
        objective: {{metric: score, mode: max}}
        search_alg: {{name: random, seed: 0}}
        scheduler: {{name: fifo}}
        budget: {{num_samples: 4}}
        resources: {{cpu: 1}}
        checkpoint: {{min_interval_s: 0}}
    """, extra)


def _launch(tmp_path: Path, sweep: Path, address: str, env: dict[str, str]) -> subprocess.Popen:
    return start_sweeper(["launch", sweep.name, "--address", address], tmp_path, env=env)


def _trial_runs(tmp_path: Path, name: str) -> tuple:  # (MlflowClient, trial runs)
    c = mlflow_client(tmp_path)
    return c, trial_runs(c, name)


def test_trials_spread_over_both_nodes_and_local_storage_is_refused(
        tmp_path: Path, head: tuple[RayNode, str], node_b: RayNode, cluster_env: dict[str, str]) -> None:
    head_node, address = head
    assert head_node.ip != node_b.ip == NODE_B_IP
    sweep = _sweep(tmp_path, "spread", epochs=2, sleep_s=1.0)

    # pre-flight: `storage: runs` is this machine's disk, the cluster has 2 nodes -> exit 2, no trial
    t0 = time.time()
    refused = _launch(tmp_path, sweep, address, cluster_env)
    out = refused.communicate(timeout=120)[0]
    refused_s = time.time() - t0
    assert refused.returncode == 2, out[-3000:]
    assert "spread.yaml: storage:" in out and "the Ray cluster has 2 nodes" in out, out[-3000:]
    assert "SWEEPER_SHARED_STORAGE" in out and "s3://" in out
    assert not list((tmp_path / "runs").glob("spread/trial_*"))
    _, runs = _trial_runs(tmp_path, "spread")
    assert runs == []

    # both "nodes" see this machine's disk: declare it shared, and the sweep runs on both
    t0 = time.time()
    proc = _launch(tmp_path, sweep, address, {**cluster_env, "SWEEPER_SHARED_STORAGE": str(tmp_path)})
    out = proc.communicate(timeout=300)[0]
    wall = time.time() - t0
    assert proc.returncode == 0, out[-4000:]
    assert "Started a local Ray instance" not in out
    assert "4 finished, 0 stopped early by ASHA, 0 failed of 4 trials" in out
    results = ray_results(tmp_path / "runs" / "spread")
    nodes = {trial: {r["node_ip"] for r in rows} for trial, rows in results.items()}
    assert set().union(*nodes.values()) == {head_node.ip, NODE_B_IP}, nodes
    c, runs = _trial_runs(tmp_path, "spread")
    assert len(runs) == 4 and all(r.data.tags["sweeper.status"] == "finished" for r in runs)
    print(f"\nmulti-node: refused in {refused_s:.1f} s; 4 trials in {wall:.1f} s; trial -> node: "
          + ", ".join(f"{t}: {'/'.join(sorted(ips))}" for t, ips in nodes.items()))


def _trial_on(node: RayNode) -> str | None:
    """The trial a node's worker runs now: Tune runs each trial in its own working directory
    (`.../working_dirs/trial_<id>`), so the worker process's cwd names it."""
    for pid in descendants(node.raylet_pid()):
        try:
            found = re.search(r"/(trial_\w+)$", os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            continue
        if found:
            return found.group(1)
    return None


def _epochs_saved(trial_dir: Path) -> int:
    """Epochs a trial has checkpointed (checkpoint_000000 is epoch 1; older ones get pruned)."""
    return max((int(c.name.split("_")[1]) + 1 for c in trial_dir.glob("checkpoint_*")), default=0)


def test_killed_raylet_trials_resume_from_their_checkpoints_on_the_surviving_node(
        tmp_path: Path, head: tuple[RayNode, str], node_b: RayNode, cluster_env: dict[str, str]) -> None:
    head_node, address = head
    epochs = 4
    sweep = _sweep(tmp_path, "fault", epochs=epochs, sleep_s=1.0, extra="budget: {num_samples: 4, max_failures: 2}\n")
    exp_dir = tmp_path / "runs" / "fault"
    t0 = time.time()
    proc = _launch(tmp_path, sweep, address, {**cluster_env, "SWEEPER_SHARED_STORAGE": str(tmp_path)})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    # mid-trial: the trial on node B has checkpointed at least two of its four epochs
    while True:
        assert proc.poll() is None, "".join(lines)[-4000:]
        assert time.time() - t0 < 180, "no trial on node B checkpointed 2 epochs in 180 s"
        on_b = _trial_on(node_b)
        if on_b and 2 <= _epochs_saved(exp_dir / on_b) < epochs:
            break
        time.sleep(0.2)
    saved_at_kill = _epochs_saved(exp_dir / on_b)
    raylet = node_b.raylet_pid()
    workers = descendants(raylet)  # before the kill: they are re-parented once the raylet is gone
    os.kill(raylet, signal.SIGKILL)
    t_kill = time.time()
    kill_pids(workers)
    proc.wait(timeout=300)
    reader.join(timeout=30)
    t_end = time.time()
    out = "".join(lines)
    assert proc.returncode == 0, out[-4000:]
    assert "4 finished, 0 stopped early by ASHA, 0 failed of 4 trials" in out, out[-4000:]

    # MLflow: one run per trial, all finished, every epoch logged once, with the time it arrived
    c, runs = _trial_runs(tmp_path, "fault")
    assert len(runs) == 4 and len({r.data.tags["sweeper.trial_id"] for r in runs}) == 4  # no duplicates
    logged = {}
    for r in runs:
        assert r.data.tags["sweeper.status"] == "finished" and r.info.status == "FINISHED"
        history = sorted((int(m.step), m.timestamp / 1000) for m in c.get_metric_history(r.info.run_id, "epoch"))
        assert [step for step, _ in history] == list(range(1, epochs + 1))
        logged[f"trial_{r.data.tags['sweeper.trial_id']}"] = dict(history)
    # Ray's result log says where each report came from and whether the process was fresh
    # (iterations_since_restore 1). It can miss the last report before the node died (the copy
    # restored with the trial predates it), so the epochs done before the kill come from MLflow.
    results = ray_results(exp_dir)
    assert set(results) == set(logged)
    retried = {}
    for trial, rows in results.items():
        # Ray's log holds each epoch once, but for the one in flight when the node died: its
        # checkpoint may be on disk without Ray having registered it, so it is trained again
        # (MLflow still logs it once, checked above)
        seen = [r["epoch"] for r in rows]
        assert rows[-1]["epoch"] == epochs and sorted(set(seen)) == list(range(1, epochs + 1)), rows
        assert len(seen) - len(set(seen)) <= 1 and seen == sorted(seen), rows
        if rows[0]["node_ip"] != NODE_B_IP:
            continue
        before = max((e for e, ts in logged[trial].items() if ts < t_kill), default=0)
        after = [r for r in rows if r["node_ip"] != NODE_B_IP]
        if before < epochs:
            # resumed on the head from its last checkpoint (every epoch checkpoints), not from epoch 1
            # (or, for the report in flight at the kill, from the checkpoint before it)
            assert after and after[0]["epoch"] in (before, before + 1) and after[0]["epoch"] > 1, rows
            assert after[0]["iterations_since_restore"] == 1, rows
            error = (exp_dir / trial / "error.txt").read_text().strip().splitlines()
            retried[trial] = (before, after[0], error[-1] if error else "")
    assert on_b in retried and retried[on_b][0] >= saved_at_kill - 1, (on_b, saved_at_kill, retried, results)

    def at(ts: float) -> str:
        return f"+{ts - t0:.1f} s"

    def where(trial: str, epoch: int) -> str:
        row = next((r for r in results[trial] if r["epoch"] == epoch), None)
        if row is None:  # missing from Ray's log: reported on the node the trial started on
            row = results[trial][0]
        return "node B" if row["node_ip"] == NODE_B_IP else "head"

    timeline = [f"multi-node fault test (t = 0: `sweeper launch --address`; head {head_node.ip} and node B "
                f"{NODE_B_IP}, 1 CPU each; 4 trials x {epochs} epochs of 1 s, checkpoint every epoch, max_failures 2):"]
    events = []
    for trial, epochs_at in logged.items():
        spans: list[list] = []
        for epoch, ts in sorted(epochs_at.items()):
            node = where(trial, epoch)
            if spans and spans[-1][0] == node:
                spans[-1][3:] = [epoch, ts]
            else:
                spans.append([node, epoch, ts, epoch, ts])
        for node, first, ts_first, last, ts_last in spans:
            events.append((ts_first, f"{trial}: epochs {first}-{last} on {node} ({at(ts_first)} .. {at(ts_last)})"))
    events.append((t_kill, f"raylet of node B (pid {raylet}) SIGKILLed, then its {len(workers)} child processes "
                           f"(trial worker, agents); {on_b} was running there with {saved_at_kill} epochs checkpointed"))
    for trial, (before, first, error) in retried.items():
        events.append((logged[trial][first["epoch"]] - 0.001, f"{trial}: retried on the head from its epoch-{before} checkpoint, "
                                           f"first report epoch {first['epoch']} (Ray's error: {error[:120]})"))
    events.append((t_end, f"sweep done, exit {proc.returncode}: 4 of 4 trials finished, {len(retried)} retried from a "
                          f"checkpoint, 0 failed; MLflow: {len(runs)} trial runs, all FINISHED, each epoch logged once"))
    timeline += [f"  {at(ts):>9}  {text}" for ts, text in sorted(events, key=lambda e: e[0])]
    print("\n" + "\n".join(timeline))
