"""A real Slurm cluster on this machine runs the rendered batch script.

munged, slurmctld and two slurmd's (node names n1 and n2 on this host, Debian's Slurm) are
started by PID in a temp dir; `sweeper cluster slurm --submit` renders and submits
cluster/slurm/sweep.sbatch for a 2-node job with a tiny noop sweep. The test waits for the job
(scontrol), then checks what a user would: the job completed with the sweep's exit code, MLflow
holds every trial as finished, trials ran on both Ray nodes (each trial's worker PID, from Tune's
results, belongs to the Ray node of n1 or of n2: read from the processes' SLURMD_NODENAME while
the job runs), and the job left no Ray process, temp dir or token behind.

The job's log is copied to the test's tmp dir; its path is in every assertion message and printed.
Needs root and apt-get (Debian) to install the packages when they are missing; skips otherwise,
except under CI, where it fails.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import free_port, json_lines, kill_pids, mlflow_client, run_sweeper, sweeper_env, trial_runs
from .conftest import write_sweep

pytestmark = pytest.mark.slow

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["munged", "munge", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}
TRIALS = 4
SWEEP = f"""
name: slurm-noop
task: noop
base: {{train: {{epochs: 2, sleep_s: 2}}}}
search:
  x: {{uniform: [0.0, 1.0]}}
  y: {{uniform: [0.0, 1.0]}}
objective: {{metric: score, mode: max}}
search_alg: {{name: random, seed: 0}}
scheduler: {{name: fifo}}
budget: {{num_samples: {TRIALS}}}
resources: {{cpu: 1, gpu: 0}}
tracking: {{uri: sqlite:///mlruns.db}}
storage: runs
"""


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the Slurm test", pytrace=False)
    pytest.skip(reason)


def _ensure_slurm() -> None:
    """Install Debian's Slurm and munge when missing (about 10 s after apt-get update)."""
    if all(shutil.which(b) for b in BINARIES):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _unavailable(f"Slurm is not installed and cannot be installed here (needs root and apt-get): "
                     f"apt-get install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            _unavailable(f"{' '.join(cmd)} failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    missing = [b for b in BINARIES if not shutil.which(b)]
    if missing:
        _unavailable(f"installed {PACKAGES} but {missing} are still not on PATH")


SLURM_CONF = """\
ClusterName=sweepertest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.sock
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MailProg=/bin/true
KillWait=5
ReturnToService=2
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 Port={n1_port} CPUs={cpus}
NodeName=n2 NodeHostname={host} NodeAddr=127.0.0.1 Port={n2_port} CPUs={cpus}
PartitionName=debug Nodes=ALL Default=YES State=UP MaxTime=INFINITE
"""


def _stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    """A one-host Slurm cluster with nodes n1 and n2; yields the environment its clients need."""
    _ensure_slurm()
    if os.geteuid() != 0:
        _unavailable("the Slurm daemons of this test run as root (SlurmUser=root)")
    d = Path(tempfile.mkdtemp(prefix="slurm", dir="/tmp"))  # short: munge's socket path is limited
    for sub in ("state", "spool", "munge"):
        (d / sub).mkdir()
    key = d / "munge" / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    cpus = os.cpu_count() or 2
    (d / "slurm.conf").write_text(SLURM_CONF.format(
        host=socket.gethostname().split(".")[0], d=d, cpus=cpus, ctld_port=free_port(),
        n1_port=free_port(), n2_port=free_port()))
    env = {**os.environ, "SLURM_CONF": str(d / "slurm.conf")}
    procs: list[subprocess.Popen] = []

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=(d / f"{name}.out").open("w"), stderr=subprocess.STDOUT, env=env)
        procs.append(proc)
        return proc

    try:
        start("munged", ["munged", "-F", "--force", f"--key-file={key}", f"--socket={d}/munge.sock",
                         f"--pid-file={d}/munged.pid", f"--seed-file={d}/munge/seed", f"--log-file={d}/munged.log"])
        deadline = time.time() + 20
        while subprocess.run(f"munge -S {d}/munge.sock -n | unmunge -S {d}/munge.sock", shell=True,
                             capture_output=True).returncode != 0:
            assert time.time() < deadline and procs[0].poll() is None, (d / "munged.log").read_text()
            time.sleep(0.2)
        start("slurmctld", ["slurmctld", "-D", "-f", str(d / "slurm.conf")])
        for node in ("n1", "n2"):
            start(f"slurmd-{node}", ["slurmd", "-D", "-f", str(d / "slurm.conf"), "-N", node])
        deadline = time.time() + 60
        while True:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, env=env).stdout
            if sorted(out.split()) == sorted(["n1", "idle", "n2", "idle"]):
                break
            dead = [p.args[0] for p in procs if p.poll() is not None]
            assert time.time() < deadline and not dead, f"Slurm did not come up (dead: {dead}); sinfo: {out!r}; " \
                                                        f"logs in {d}"
            time.sleep(0.5)
        yield {"SLURM_CONF": str(d / "slurm.conf"), "dir": str(d)}
    finally:
        subprocess.run(["scancel", "--user=root"], env=env, capture_output=True)  # jobs of a failed test
        for proc in reversed(procs):  # slurmd's, slurmctld, then munged
            _stop(proc)
        shutil.rmtree(d, ignore_errors=True)


def _processes_with_env(key: str, value: str) -> dict[int, dict[str, str]]:
    """PID -> environment of every process whose environment has key=value."""
    found = {}
    needle = f"{key}={value}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/environ").read_bytes()
            if needle not in raw.split(b"\0"):
                continue
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        env = dict(v.split("=", 1) for v in raw.decode(errors="replace").split("\0") if "=" in v)
        found[int(entry)] = {**env, "_cmdline": cmd}
    return found


def _job_state(job_id: str, env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, env=env).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


@pytest.fixture()
def ray_tmp(slurm: dict[str, str]) -> Iterator[str]:
    """The job's node-local Ray dir (short: Ray puts sockets in it). Afterwards, whatever happened:
    cancel the test's jobs, then kill by PID any process the job's Ray left, and remove the dir."""
    path = tempfile.mkdtemp(prefix="sray", dir="/tmp")
    os.rmdir(path)  # the job creates it and must remove it
    yield path
    env = {**os.environ, "SLURM_CONF": slurm["SLURM_CONF"]}
    subprocess.run(["scancel", "--user=root"], env=env, capture_output=True)
    deadline = time.time() + 30
    while time.time() < deadline and subprocess.run(["squeue", "-h"], env=env, capture_output=True,
                                                    text=True).stdout.strip():
        time.sleep(0.5)
    kill_pids(_processes_with_env("SWEEPER_RAY_TMP", path))
    shutil.rmtree(path, ignore_errors=True)


def _wait_for_job(job_id: str, env: dict[str, str], ray_tmp: str,
                  timeout: float) -> tuple[dict[str, str], dict[int, str]]:
    """Poll scontrol until the job ends; meanwhile note which Slurm node each Ray worker runs on."""
    node_of_pid: dict[int, str] = {}
    state: dict[str, str] = {}
    deadline = time.time() + timeout
    while time.time() < deadline:
        for pid, penv in _processes_with_env("SWEEPER_RAY_TMP", ray_tmp).items():
            if penv["_cmdline"].startswith("ray::") and "SLURMD_NODENAME" in penv:
                node_of_pid[pid] = penv["SLURMD_NODENAME"]
        state = _job_state(job_id, env)
        if state.get("JobState") in TERMINAL:
            break
        time.sleep(0.5)
    return state, node_of_pid


def _keep_log(log: Path, tmp_path: Path, job_id: str, state: dict[str, str], t0: float) -> tuple[str, str]:
    """Copy the job's log into the test's tmp dir; returns its text and a suffix for assertion messages."""
    kept = tmp_path / f"slurm-job-{job_id}.log"
    if log.is_file():
        shutil.copy(log, kept)
    text = kept.read_text() if kept.is_file() else f"(no job log at {log})"
    print(f"Slurm job {job_id}: {state.get('JobState')} exit {state.get('ExitCode')} after {time.time() - t0:.0f} s; "
          f"log {kept}")
    return text, f"(job {job_id}, log {kept}):\n{text[-4000:]}"


def test_rendered_sbatch_runs_a_sweep_on_two_slurm_nodes(slurm: dict[str, str], ray_tmp: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    write_sweep(work / "noop.yaml", SWEEP)
    env = sweeper_env(SLURM_CONF=slurm["SLURM_CONF"], HF_HUB_OFFLINE="1",
                      SWEEPER_JOB_DIR=str(tmp_path / "job"),   # the token's directory, "shared" by both nodes
                      SWEEPER_RAY_TMPDIR=ray_tmp,
                      # two raylets on one machine would each claim all of its memory
                      SWEEPER_RAY_START_ARGS="--memory=2000000000 --object-store-memory=150000000",
                      SWEEPER_SHARED_STORAGE=str(work))          # both "nodes" see this machine's disk
    cpus = os.cpu_count() or 2
    t0 = time.time()
    proc = run_sweeper(["cluster", "slurm", "noop.yaml", "--nodes", "2", "--cpus-per-node", str(cpus), "--time",
                        "10:00", "--out", "job.sbatch", "--submit"], work, timeout=60, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = proc.stdout.strip()
    assert job_id.isdigit(), proc.stdout
    script = (work / "job.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and f"DEFAULT_ARGS=({work / 'noop.yaml'})" in script

    state, node_of_pid = _wait_for_job(job_id, env, ray_tmp, timeout=240)
    text, where = _keep_log(work / f"slurm-sweeper-slurm-noop-{job_id}.out", tmp_path, job_id, state, t0)

    assert state.get("JobState") == "COMPLETED" and state.get("ExitCode") == "0:0", \
        f"job state {state.get('JobState')} exit {state.get('ExitCode')} {where}"
    assert "2 of 2 Ray nodes joined" in text, where
    assert f"slurm-noop: {TRIALS} finished, 0 stopped early by ASHA, 0 failed of {TRIALS} trials" in text, where

    client = mlflow_client(work)
    assert client.get_experiment_by_name("slurm-noop") is not None, where
    trials = trial_runs(client, "slurm-noop")
    assert len(trials) == TRIALS, where
    assert sorted(r.data.tags["sweeper.status"] for r in trials) == ["finished"] * TRIALS, where
    assert all(r.data.metrics.get("epoch") == 2 and "score" in r.data.metrics for r in trials), where

    # Each trial's worker PID (Tune's result.json) belongs to the Ray node of n1 or n2.
    trial_pids = {}
    for result in (work / "runs" / "slurm-noop").glob("trial_*/result.json"):
        trial_pids[result.parent.name] = {r["pid"] for r in json_lines(result.read_text())}
    assert len(trial_pids) == TRIALS, f"{sorted(trial_pids)} {where}"
    nodes = {node_of_pid[p] for pids in trial_pids.values() for p in pids if p in node_of_pid}
    print(f"trial worker PIDs by node: {node_of_pid}; trials: {trial_pids}")
    assert nodes == {"n1", "n2"}, f"trials ran on {nodes} (worker PIDs {trial_pids}, seen {node_of_pid}) {where}"

    # Nothing of the job is left: no Ray process, no node temp dir, no token.
    leftover = _processes_with_env("SWEEPER_RAY_TMP", ray_tmp)  # the ray_tmp fixture kills them
    assert not leftover, f"Ray processes outlived the job: {[v['_cmdline'][:80] for v in leftover.values()]} {where}"
    assert not Path(ray_tmp).exists(), f"{ray_tmp} left behind {where}"
    assert not (tmp_path / "job").exists(), f"the job's token dir {tmp_path / 'job'} left behind {where}"


def test_checked_in_sbatch_by_hand_fails_with_the_sweeps_exit_code(slurm: dict[str, str], ray_tmp: str,
                                                                   tmp_path: Path) -> None:
    """`sbatch cluster/slurm/sweep.sbatch SWEEP` (no rendering, one node): a sweep file the driver
    rejects makes the job fail with the driver's exit code 2 and its one-line error in the log."""
    work = tmp_path / "work"
    work.mkdir()
    write_sweep(work / "bad.yaml", SWEEP.replace("num_samples", "num_sample"))
    env = {**os.environ, "SLURM_CONF": slurm["SLURM_CONF"], "SWEEPER_JOB_DIR": str(tmp_path / "job"),
           "SWEEPER_RAY_TMPDIR": ray_tmp, "SWEEPER_BIN_DIR": str(Path(sys.executable).parent),
           "SWEEPER_RAY_START_ARGS": "--memory=2000000000 --object-store-memory=150000000"}
    template = Path(__file__).resolve().parents[2] / "cluster" / "slurm" / "sweep.sbatch"
    t0 = time.time()
    proc = subprocess.run(["sbatch", "--parsable", "--nodes=1", f"--cpus-per-task={os.cpu_count() or 2}",
                           "--gpus-per-task=0", str(template), "bad.yaml"],
                          cwd=work, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    state, _ = _wait_for_job(job_id, env, ray_tmp, timeout=120)
    text, where = _keep_log(work / f"slurm-sweeper-{job_id}.out", tmp_path, job_id, state, t0)
    assert state.get("JobState") == "FAILED" and state.get("ExitCode") == "2:0", \
        f"job state {state.get('JobState')} exit {state.get('ExitCode')} {where}"
    assert "1 of 1 Ray nodes joined" in text, where
    assert "budget.num_sample: unknown key" in text and "sweep finished with exit code 2" in text, where
    assert not _processes_with_env("SWEEPER_RAY_TMP", ray_tmp), f"Ray processes outlived the job {where}"
    assert not Path(ray_tmp).exists() and not (tmp_path / "job").exists(), f"temp dir or token left {where}"
