"""Cluster job files for a sweep: a Slurm batch script and KubeRay manifests.

The templates are the checked-in files under `cluster/` (usable by hand); rendering fills in
the user's sizes and sweep and nothing else, so what runs is what the files say:

    sweeper cluster slurm sweeps/dbnet.yaml --nodes 4 --gpus-per-node 8 --partition gpu --submit
    sweeper cluster k8s sweeps/dbnet.yaml --workers 4 --gpus-per-worker 1 --image REG/sweeper:TAG > rayjob.yaml

The sweep file is loaded (and so checked) before anything is rendered: a bad sweep fails here,
with exit code 2, not hours later in a queue. No Ray or torch is imported.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from sweeper.config import SECRET_NAME, Sweep, SweepConfigError, flatten, load_sweep

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "cluster"
SLURM_TEMPLATE = CLUSTER_DIR / "slurm" / "sweep.sbatch"
KUBERAY_TEMPLATES = {"rayjob": CLUSTER_DIR / "kuberay" / "rayjob.yaml",
                     "raycluster": CLUSTER_DIR / "kuberay" / "raycluster.yaml"}
#: where the rendered pods mount the sweep file (a ConfigMap) and the shared volume
SWEEP_MOUNT = "/etc/sweeper"
SHARED_MOUNT = "/mnt/shared"


class ClusterOptionError(ValueError):
    """A bad `sweeper cluster` option (a size, a name, a time); the message names the option."""

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        super().__init__(f"{option}: {message}")


# --------------------------------------------------------------------------- shared
def load_for_cluster(sweep_file: str | Path, overrides: list[str] | None = None, *, check_data: bool = True) -> Sweep:
    """Load and check the sweep as `sweeper validate` does. Data paths are checked only when
    asked (Slurm: the login node sees the cluster's filesystems; Kubernetes pods read their data
    from a volume this machine does not see) and when nothing generates the data (`data.synth`)."""
    sweep = load_sweep(sweep_file, overrides, check_data=False)
    if check_data and sweep.spec.data is not None and sweep.spec.data.synth is None:
        sweep = load_sweep(sweep_file, overrides)
    return sweep


def _check_fits(sweep: Sweep, cpus: int, gpus: int, unit: str) -> None:
    """A trial that no node can hold would wait in the queue forever: refuse it here.
    `unit` is "node" (Slurm) or "worker" (KubeRay): it names the options in the message."""
    res = sweep.spec.resources
    if res.gpu > gpus:
        raise SweepConfigError(sweep.file, "resources.gpu", f"a trial needs {res.gpu:g} GPU but --gpus-per-{unit} "
                               f"is {gpus}: give the {unit}s GPUs or set resources.gpu lower")
    if res.cpu > cpus:
        raise SweepConfigError(sweep.file, "resources.cpu", f"a trial needs {res.cpu:g} CPUs but --cpus-per-{unit} "
                               f"is {cpus}: give the {unit}s more CPUs or set resources.cpu lower")


def _template(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: template not found; `sweeper cluster` renders the files under "
                                "cluster/ of a source checkout (pip install -e .)")
    return path.read_text()


# --------------------------------------------------------------------------- Slurm
def render_slurm(sweep: Sweep, *, nodes: int, gpus_per_node: int = 0, partition: str | None = None,
                 time: str | None = None, cpus_per_node: int | None = None,
                 bin_dir: str | Path | None = None) -> str:
    """cluster/slurm/sweep.sbatch with this allocation's #SBATCH lines and the sweep's launch
    arguments (absolute sweep file, the --set overrides) and working directory filled in."""
    if nodes < 1:
        raise ClusterOptionError("--nodes", f"must be at least 1, got {nodes}")
    if gpus_per_node < 0:
        raise ClusterOptionError("--gpus-per-node", f"must be 0 or more, got {gpus_per_node}")
    if cpus_per_node is not None and cpus_per_node < 1:
        raise ClusterOptionError("--cpus-per-node", f"must be at least 1, got {cpus_per_node}")
    if partition is not None and not re.fullmatch(r"[\w.,-]+", partition):
        raise ClusterOptionError("--partition", f"{partition!r} is not a partition name (letters, digits, . , _ -)")
    if time is not None and not re.fullmatch(r"\d+(-\d+)?(:\d+){0,2}", time):
        raise ClusterOptionError("--time", f"{time!r} is not a Slurm time limit (MINUTES, HH:MM:SS or D-HH:MM:SS)")
    text = _template(SLURM_TEMPLATE)
    cpus = cpus_per_node or int(_sbatch_value(text, "cpus-per-task"))
    _check_fits(sweep, cpus, gpus_per_node, "node")

    settings: dict[str, str | None] = {
        "job-name": f"sweeper-{sweep.name}",
        "nodes": str(nodes),
        "ntasks-per-node": "1",            # one Ray node per Slurm node
        "cpus-per-task": str(cpus),
        "gpus-per-task": str(gpus_per_node) if gpus_per_node else None,   # one task per node: per node
        "partition": partition,
        "time": time or _sbatch_value(text, "time"),
        "output": "slurm-%x-%j.out",
        "chdir": str(sweep.cwd),           # the sweep's relative paths are relative to it
    }
    lines, done = [], False
    for i, line in enumerate(text.splitlines()):
        if i == 1:
            lines.append(f"# Rendered from {SLURM_TEMPLATE.relative_to(CLUSTER_DIR.parent)} for sweep {sweep.name} "
                         f"({sweep.file}) by `sweeper cluster slurm`.")
        if line.startswith("#SBATCH "):
            if not done:
                lines += [f"#SBATCH --{k}={v}" for k, v in settings.items() if v is not None]
                done = True
            continue
        if line == "DEFAULT_ARGS=()":
            args = [str(sweep.file)] + [a for o in sweep.overrides for a in ("--set", o)]
            line = "DEFAULT_ARGS=(" + " ".join(shlex.quote(a) for a in args) + ")"
        elif line == "BIN_DIR=${SWEEPER_BIN_DIR:-}":
            line = "BIN_DIR=${SWEEPER_BIN_DIR:-" + shlex.quote(str(bin_dir or _bin_dir())) + "}"
        lines.append(line)
    if "DEFAULT_ARGS=(" + shlex.quote(str(sweep.file)) not in "\n".join(lines):
        raise RuntimeError(f"{SLURM_TEMPLATE}: the DEFAULT_ARGS=() line the renderer fills in is missing")
    return "\n".join(lines) + "\n"


def _sbatch_value(text: str, key: str) -> str:
    match = re.search(rf"^#SBATCH --{key}=(\S+)", text, re.M)
    if match is None:
        raise RuntimeError(f"{SLURM_TEMPLATE}: no '#SBATCH --{key}=' default line")
    return match.group(1)


def _bin_dir() -> str:
    """The environment running this command (it has `sweeper` and `ray`): pinned in the script so
    the job runs the same versions. Not resolved: a venv's python is a symlink out of the venv."""
    return str(Path(sys.executable).parent)


def submit_slurm(script: str) -> str:
    """Submit a rendered script with sbatch (from stdin); returns the job id."""
    try:
        proc = subprocess.run(["sbatch", "--parsable"], input=script, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ClusterOptionError("--submit", "sbatch not found: run this on a Slurm login node, or write the "
                                 "script with --out and submit it there") from None
    if proc.returncode != 0:
        raise ClusterOptionError("--submit", f"sbatch failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]


# --------------------------------------------------------------------------- KubeRay
def k8s_name(sweep_name: str) -> str:
    """A Kubernetes object name (RFC 1123, short enough for KubeRay's derived pod names)."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"sweeper-{sweep_name}".lower()).strip("-")
    return name[:40].rstrip("-")


def render_k8s(sweep: Sweep, *, workers: int, gpus_per_worker: int, image: str, cpus_per_worker: int = 8,
               memory: str = "32Gi", kind: str = "rayjob", pvc: str = "sweeper-shared") -> str:
    """A ConfigMap holding the resolved sweep and a RayJob (or RayCluster) from
    cluster/kuberay/<kind>.yaml, with this image, worker group size and resources."""
    if kind not in KUBERAY_TEMPLATES:
        raise ClusterOptionError("--kind", f"unknown kind {kind!r}; known: {', '.join(KUBERAY_TEMPLATES)}")
    if workers < 1:
        raise ClusterOptionError("--workers", f"must be at least 1, got {workers}")
    if gpus_per_worker < 0:
        raise ClusterOptionError("--gpus-per-worker", f"must be 0 or more, got {gpus_per_worker}")
    if cpus_per_worker < 1:
        raise ClusterOptionError("--cpus-per-worker", f"must be at least 1, got {cpus_per_worker}")
    if not re.fullmatch(r"\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?", memory):
        raise ClusterOptionError("--memory", f"{memory!r} is not a Kubernetes quantity (e.g. 32Gi)")
    if not image or re.search(r"\s", image):
        raise ClusterOptionError("--image", f"{image!r} is not an image reference (REGISTRY/NAME:TAG)")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", pvc):
        raise ClusterOptionError("--pvc", f"{pvc!r} is not a PersistentVolumeClaim name")
    _check_fits(sweep, cpus_per_worker, gpus_per_worker, "worker")

    name = k8s_name(sweep.name)
    sweep_file = f"{sweep.name}.yaml"
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "sweeper"}},
                  "data": {sweep_file: yaml.safe_dump(sweep.raw, sort_keys=False)}}
    doc = yaml.safe_load(_template(KUBERAY_TEMPLATES[kind]))
    doc["metadata"]["name"] = name
    if kind == "rayjob":
        spec = doc["spec"]["rayClusterSpec"]
        doc["spec"]["entrypoint"] = (f"cd {SHARED_MOUNT} && sweeper launch "
                                     f"{shlex.quote(f'{SWEEP_MOUNT}/{sweep_file}')} --address auto")
    else:
        spec = doc["spec"]
    spec["rayVersion"] = metadata.version("ray")
    head = spec["headGroupSpec"]["template"]["spec"]
    _set_pod(head, image=image, pvc=pvc, config_map=name)
    group = spec["workerGroupSpecs"][0]
    group["groupName"] = "gpu-workers" if gpus_per_worker else "cpu-workers"
    group["replicas"] = group["maxReplicas"] = workers
    pod = group["template"]["spec"]
    _set_pod(pod, image=image, pvc=pvc, config_map=name)
    limits = {"cpu": str(cpus_per_worker), "memory": memory}
    if gpus_per_worker:
        limits["nvidia.com/gpu"] = str(gpus_per_worker)
    else:
        pod.pop("tolerations", None)
    pod["containers"][0]["resources"] = {"requests": dict(limits), "limits": dict(limits)}
    return yaml.dump_all([config_map, doc], Dumper=_BlockDumper, sort_keys=False, width=1000)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the sweep file in the ConfigMap) as readable `|` blocks."""


_BlockDumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s,
                                                                  style="|" if "\n" in s else None))


def _set_pod(pod: dict[str, Any], *, image: str, pvc: str, config_map: str) -> None:
    pod["containers"][0]["image"] = image
    for volume in pod["volumes"]:
        if "persistentVolumeClaim" in volume:
            volume["persistentVolumeClaim"]["claimName"] = pvc
        if "configMap" in volume:
            volume["configMap"]["name"] = config_map


# --------------------------------------------------------------------------- CLI
cluster_app = typer.Typer(no_args_is_help=True, help="Run a sweep on a cluster: Slurm batch script, KubeRay manifests.")


def _fail(ctx: typer.Context, exc: BaseException) -> None:
    """As the main CLI: one line, exit 2; the traceback with `sweeper --debug`."""
    if ctx.find_root().params.get("debug"):
        raise exc
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def _load(ctx: typer.Context, sweep_file: Path, overrides: list[str], check_data: bool) -> Sweep:
    try:
        return load_for_cluster(sweep_file, overrides, check_data=check_data)
    except SweepConfigError as exc:
        _fail(ctx, exc)
        raise  # unreachable


@cluster_app.command("slurm")
def slurm_cmd(
    ctx: typer.Context,
    sweep_file: Path = typer.Argument(..., help="Sweep YAML file."),
    nodes: int = typer.Option(..., "--nodes", help="Slurm nodes; one Ray node on each (the first is the head)."),
    gpus_per_node: int = typer.Option(0, "--gpus-per-node", help="GPUs per node."),
    partition: Optional[str] = typer.Option(None, "--partition", help="Slurm partition."),
    time: Optional[str] = typer.Option(None, "--time", help="Time limit (HH:MM:SS or D-HH:MM:SS; default 24:00:00)."),
    cpus_per_node: Optional[int] = typer.Option(None, "--cpus-per-node", help="CPUs per node (default 8)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the script here instead of printing it."),
    submit: bool = typer.Option(False, "--submit", help="Submit it with sbatch and print the job id."),
    set_: list[str] = typer.Option([], "--set", help="Override a sweep key: train.epochs=4 (repeatable)."),
) -> None:
    """Render cluster/slurm/sweep.sbatch for this sweep and allocation; print, write or submit it."""
    sweep = _load(ctx, sweep_file, set_, check_data=True)
    try:
        script = render_slurm(sweep, nodes=nodes, gpus_per_node=gpus_per_node, partition=partition,
                              time=time, cpus_per_node=cpus_per_node)
        if out is not None:
            out.write_text(script)
            out.chmod(0o755)
            typer.echo(f"wrote {out}", err=True)
        if submit:
            typer.echo(submit_slurm(script))
        elif out is None:
            sys.stdout.write(script)
    except (ClusterOptionError, SweepConfigError, FileNotFoundError) as exc:
        _fail(ctx, exc)


@cluster_app.command("k8s")
def k8s_cmd(
    ctx: typer.Context,
    sweep_file: Path = typer.Argument(..., help="Sweep YAML file."),
    workers: int = typer.Option(..., "--workers", help="Ray worker pods (the autoscaler may release idle ones)."),
    gpus_per_worker: int = typer.Option(..., "--gpus-per-worker", help="GPUs per worker pod (0: CPU workers)."),
    image: str = typer.Option(..., "--image", help="Image built from cluster/Dockerfile (REGISTRY/NAME:TAG)."),
    cpus_per_worker: int = typer.Option(8, "--cpus-per-worker", help="CPUs per worker pod."),
    memory: str = typer.Option("32Gi", "--memory", help="Memory per worker pod (Kubernetes quantity)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Experiment storage URI (s3://bucket/prefix); "
                                          "default: the sweep's, on the shared volume."),
    kind: str = typer.Option("rayjob", "--kind", help="rayjob (cluster for this sweep only) or raycluster."),
    pvc: str = typer.Option("sweeper-shared", "--pvc", help="ReadWriteMany PVC mounted at /mnt/shared."),
    set_: list[str] = typer.Option([], "--set", help="Override a sweep key: train.epochs=4 (repeatable)."),
) -> None:
    """Render a ConfigMap with the sweep and a KubeRay RayJob (or RayCluster) to stdout."""
    overrides = list(set_) + ([f"storage={storage}"] if storage else [])
    sweep = _load(ctx, sweep_file, overrides, check_data=False)  # the data is on the pods' volume
    try:
        text = render_k8s(sweep, workers=workers, gpus_per_worker=gpus_per_worker, image=image,
                          cpus_per_worker=cpus_per_worker, memory=memory, kind=kind, pvc=pvc)
    except (ClusterOptionError, SweepConfigError, FileNotFoundError) as exc:
        _fail(ctx, exc)
    secret = [k for k in flatten(sweep.raw) if SECRET_NAME.search(k.rsplit(".", 1)[-1])]
    if secret:  # a ConfigMap is not a Secret: anyone who can read the namespace can read it
        typer.echo(f"warning: the ConfigMap holds the sweep's {', '.join(secret)} in plain text; pass secrets "
                   "to the pods from a Kubernetes Secret instead", err=True)
    sys.stdout.write(text)
