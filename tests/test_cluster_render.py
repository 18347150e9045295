"""`sweeper cluster slurm|k8s`: what they render, checked without a cluster.

Slurm: the #SBATCH lines, the launch arguments (quoted for bash, read back by bash itself), and
bash's syntax check of every rendered script. KubeRay: every rendered manifest, for several
option combinations, and the checked-in cluster/kuberay/*.yaml validate against the KubeRay CRD
schemas in ../shared/kuberay (jsonschema, made strict as `kubectl apply` is: unknown fields are
errors), and the sweep in the rendered ConfigMap loads back to the same sweep.
"""
from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from sweeper import cluster
from sweeper.cli import app
from sweeper.config import SweepConfigError, load_sweep

REPO = Path(__file__).resolve().parents[1]
KUBERAY_CRDS = REPO / ".." / "shared" / "kuberay"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
SWEEP = """
name: Tiny_Sweep.v2
task: noop
base: {train: {epochs: 2}}
search:
  x: {uniform: [0.0, 1.0]}
objective: {metric: score, mode: max}
budget: {num_samples: 4}
resources: {cpu: 2, gpu: 0.5}
"""
runner = CliRunner()
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@pytest.fixture(scope="module")
def kuberay_crds() -> Path:
    """Path of ``../shared/kuberay``; skips (or fails under CI) when it is absent."""
    path = KUBERAY_CRDS.resolve()
    if not all((path / f).is_file() for f in CRD_FILES.values()):
        reason = f"KubeRay CRDs not found at {path} (expected ../shared/kuberay beside the checkout)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must provide them", pytrace=False)
        pytest.skip(reason)
    return path


def _strict(schema: Any) -> Any:
    """Every object schema that lists its properties rejects others, as `kubectl apply` does
    (the API server would prune them silently; a typo would be lost, not reported)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def validators(kuberay_crds: Path) -> dict[str, tuple[str, jsonschema.Validator]]:
    """kind -> (apiVersion, strict validator of spec.versions[name=v1].schema.openAPIV3Schema)."""
    formats = jsonschema.FormatChecker()
    formats.checks("int32")(lambda v: not isinstance(v, int) or -2**31 <= v < 2**31)
    formats.checks("int64")(lambda v: not isinstance(v, int) or -2**63 <= v < 2**63)
    out = {}
    for kind, file in CRD_FILES.items():
        crd = yaml.load((kuberay_crds / file).read_text(), Loader=FAST_LOADER)  # 2 MB: libyaml is 7x faster
        assert crd["spec"]["names"]["kind"] == kind
        v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        schema = _strict(v1["schema"]["openAPIV3Schema"])
        jsonschema.Draft7Validator.check_schema(schema)
        out[kind] = (f"{crd['spec']['group']}/v1", jsonschema.Draft7Validator(schema, format_checker=formats))
    return out


def validate_manifest(doc: dict[str, Any], validators: dict[str, tuple[str, jsonschema.Validator]]) -> None:
    """Raise with every schema error of a KubeRay document (and a wrong kind or apiVersion)."""
    kind = doc.get("kind")
    assert kind in validators, f"kind {kind!r} is not one of {sorted(validators)}"
    api_version, validator = validators[kind]
    assert doc.get("apiVersion") == api_version, f"{kind}: apiVersion {doc.get('apiVersion')!r} != {api_version}"
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, f"{kind} {doc['metadata'].get('name')}: " + "; ".join(errors)
    assert NAME_RE.fullmatch(doc["metadata"]["name"]) and len(doc["metadata"]["name"]) <= 40


@pytest.fixture()
def sweep_file(tmp_path: Path) -> Path:
    d = tmp_path / "my sweeps"  # a space: the rendered script must quote it
    d.mkdir()
    (d / "tiny.yaml").write_text(textwrap.dedent(SWEEP))
    return d / "tiny.yaml"


# --------------------------------------------------------------------------- Slurm
def _sbatch_lines(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, re.M))


def _bash_args(script: str) -> list[str]:
    """The launch arguments as bash reads the rendered DEFAULT_ARGS line."""
    line = next(x for x in script.splitlines() if x.startswith("DEFAULT_ARGS="))
    out = subprocess.run(["bash", "-c", f'{line}\nprintf "%s\\n" "${{DEFAULT_ARGS[@]}}"'],
                         capture_output=True, text=True, check=True).stdout
    return out.splitlines()


@pytest.mark.parametrize("overrides, opts, expected", [
    (["resources.gpu=0"], dict(nodes=2), {"nodes": "2", "cpus-per-task": "8", "time": "24:00:00"}),
    (["budget.num_samples=6", "train.epochs=3"], dict(nodes=4, gpus_per_node=8, partition="gpu", time="2-00:00:00",
                                                     cpus_per_node=64),
     {"nodes": "4", "gpus-per-task": "8", "partition": "gpu", "time": "2-00:00:00", "cpus-per-task": "64"}),
    (["tracking.uri=sqlite:///my \"runs\" $HOME/it's.db"], dict(nodes=1, gpus_per_node=1, time="90"),
     {"nodes": "1", "gpus-per-task": "1", "time": "90"}),
])
def test_slurm_render_sets_the_allocation_and_keeps_the_rest(sweep_file: Path, overrides: list[str], opts: dict,
                                                             expected: dict) -> None:
    sweep = load_sweep(sweep_file, overrides, cwd=sweep_file.parent)
    script = cluster.render_slurm(sweep, bin_dir="/opt/my env/bin", **opts)
    lines = _sbatch_lines(script)
    want = {"job-name": f"sweeper-{sweep.name}", "ntasks-per-node": "1", "output": "slurm-%x-%j.out",
            "chdir": str(sweep_file.parent), **expected}
    assert {k: lines.get(k) for k in want} == want
    assert set(lines) == set(want) | {"cpus-per-task", "time"}     # no GPU line without GPUs, nothing else
    assert _bash_args(script) == [str(sweep_file)] + [a for o in overrides for a in ("--set", o)]
    assert "BIN_DIR=${SWEEPER_BIN_DIR:-'/opt/my env/bin'}" in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # bash parses it
    # the rest is the checked-in script, line for line
    template, rendered = cluster.SLURM_TEMPLATE.read_text().splitlines(), script.splitlines()
    assert all(x.startswith(("#SBATCH ", "# Rendered from ", "DEFAULT_ARGS=(", "BIN_DIR="))
               for x in rendered if x not in template)
    assert all(x.startswith(("#SBATCH ", "DEFAULT_ARGS=(", "BIN_DIR=")) for x in template if x not in rendered)


def test_checked_in_sbatch_parses_and_carries_ray_recipe_essentials() -> None:
    text = cluster.SLURM_TEMPLATE.read_text()
    subprocess.run(["bash", "-n", str(cluster.SLURM_TEMPLATE)], check=True)
    assert _sbatch_lines(text)["ntasks-per-node"] == "1"
    for needle in ("ray start", "--head", "--block", "--address", "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN_PATH",
                   "--temp-dir", "SLURM_CPUS_PER_TASK", "SLURM_GPUS_ON_NODE", "SLURM_JOB_ID", "scancel --signal=TERM",
                   'sweeper launch "${ARGS[@]}" --address "$ADDRESS"', "exit $rc"):
        assert needle in text, needle


@pytest.mark.parametrize("args, message", [
    (["--nodes", "0"], "--nodes: must be at least 1, got 0"),
    (["--nodes", "2", "--time", "tomorrow"], "--time: 'tomorrow' is not a Slurm time limit"),
    (["--nodes", "2", "--partition", "gpu;rm"], "--partition: 'gpu;rm' is not a partition name"),
    (["--nodes", "2"], "resources.gpu: a trial needs 0.5 GPU but --gpus-per-node is 0"),
    (["--nodes", "2", "--gpus-per-node", "1", "--cpus-per-node", "1"],
     "resources.cpu: a trial needs 2 CPUs but --cpus-per-node is 1"),
    (["--nodes", "2", "--gpus-per-node", "1", "--set", "budget.num_sample=3"], "budget.num_sample: unknown key"),
])
def test_slurm_cli_refuses_bad_input_with_exit_2(sweep_file: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["cluster", "slurm", str(sweep_file), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_slurm_cli_prints_or_writes_the_script(sweep_file: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["cluster", "slurm", str(sweep_file), "--nodes", "3", "--gpus-per-node", "2"])
    assert result.exit_code == 0, result.output
    assert "#SBATCH --nodes=3" in result.stdout and "#SBATCH --gpus-per-task=2" in result.stdout
    out = tmp_path / "job.sbatch"
    result = runner.invoke(app, ["cluster", "slurm", str(sweep_file), "--nodes", "3", "--gpus-per-node", "2",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert os.access(out, os.X_OK) and _sbatch_lines(out.read_text())["nodes"] == "3"


def test_slurm_cli_missing_sweep_file_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["cluster", "slurm", str(tmp_path / "nope.yaml"), "--nodes", "2"])
    assert result.exit_code == 2 and "nope.yaml" in result.output


# --------------------------------------------------------------------------- KubeRay
K8S_CASES = [
    dict(kind="rayjob", workers=4, gpus_per_worker=1),
    dict(kind="rayjob", workers=2, gpus_per_worker=8, cpus_per_worker=96, memory="900Gi",
         storage="s3://bucket/sweeps?region=eu-west-1"),
    dict(kind="raycluster", workers=1, gpus_per_worker=1, memory="16.5Gi", pvc="team-data"),
    dict(kind="rayjob", workers=3, gpus_per_worker=0, set_=["resources.gpu=0"]),
    dict(kind="raycluster", workers=16, gpus_per_worker=0, cpus_per_worker=4, set_=["resources.gpu=0"]),
]


def _render_k8s(sweep_file: Path, case: dict) -> tuple[Any, list[dict[str, Any]]]:
    case = dict(case)
    overrides = case.pop("set_", []) + ([f"storage={case.pop('storage')}"] if "storage" in case else [])
    sweep = cluster.load_for_cluster(sweep_file, overrides, check_data=False)
    text = cluster.render_k8s(sweep, image="registry.example.com/team/sweeper:1.2", **case)
    return sweep, [d for d in yaml.safe_load_all(text) if d is not None]


@pytest.mark.parametrize("case", K8S_CASES, ids=lambda c: f"{c['kind']}-{c['workers']}x{c['gpus_per_worker']}gpu")
def test_rendered_k8s_manifests_validate_against_the_crds(sweep_file: Path, tmp_path: Path, validators,  # noqa: ANN001
                                                          case: dict) -> None:
    sweep, docs = _render_k8s(sweep_file, case)
    assert [d["kind"] for d in docs] == ["ConfigMap", "RayJob" if case["kind"] == "rayjob" else "RayCluster"]
    config_map, ray = docs
    validate_manifest(ray, validators)
    name = ray["metadata"]["name"]
    assert name == "sweeper-tiny-sweep-v2" == config_map["metadata"]["name"]
    assert config_map["apiVersion"] == "v1" and list(config_map["data"]) == ["Tiny_Sweep.v2.yaml"]

    spec = ray["spec"]["rayClusterSpec"] if case["kind"] == "rayjob" else ray["spec"]
    if case["kind"] == "rayjob":
        assert ray["spec"]["entrypoint"] == \
            "cd /mnt/shared && sweeper launch /etc/sweeper/Tiny_Sweep.v2.yaml --address auto"
        assert ray["spec"]["shutdownAfterJobFinishes"] is True and ray["spec"]["backoffLimit"] >= 1
        assert ray["spec"]["ttlSecondsAfterFinished"] > 0
    from importlib.metadata import version

    assert spec["rayVersion"] == version("ray") and spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"] == {"mode": "token"}
    group = spec["workerGroupSpecs"][0]
    assert group["replicas"] == group["maxReplicas"] == case["workers"] and group["minReplicas"] == 0
    worker = group["template"]["spec"]["containers"][0]
    limits = {"cpu": str(case.get("cpus_per_worker", 8)), "memory": case.get("memory", "32Gi")}
    if case["gpus_per_worker"]:
        limits["nvidia.com/gpu"] = str(case["gpus_per_worker"])
    assert worker["resources"] == {"requests": limits, "limits": limits}
    head = spec["headGroupSpec"]["template"]["spec"]
    for pod in (head, group["template"]["spec"]):
        assert pod["containers"][0]["image"] == "registry.example.com/team/sweeper:1.2"
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert claims == [case.get("pvc", "sweeper-shared")]
    assert [v["configMap"]["name"] for v in head["volumes"] if "configMap" in v] == [name]

    # the ConfigMap holds the resolved sweep: it loads back to the same sweep
    copy_file = tmp_path / "Tiny_Sweep.v2.yaml"
    copy_file.write_text(config_map["data"]["Tiny_Sweep.v2.yaml"])
    back = load_sweep(copy_file, cwd=sweep.cwd, check_data=False)
    assert back.spec == sweep.spec and back.base == sweep.base and back.dimensions == sweep.dimensions
    if "storage" in case:
        assert back.spec.storage == case["storage"]


def test_checked_in_kuberay_manifests_validate_and_share_one_cluster_spec(validators) -> None:  # noqa: ANN001
    docs = {}
    for kind, file in (("RayCluster", "raycluster.yaml"), ("RayJob", "rayjob.yaml")):
        (doc,) = list(yaml.safe_load_all((cluster.CLUSTER_DIR / "kuberay" / file).read_text()))
        assert doc["kind"] == kind
        validate_manifest(doc, validators)
        docs[kind] = doc
    assert docs["RayJob"]["spec"]["rayClusterSpec"] == docs["RayCluster"]["spec"]
    (pvc,) = list(yaml.safe_load_all((cluster.CLUSTER_DIR / "kuberay" / "pvc.yaml").read_text()))
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["apiVersion"] == "v1"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["name"] == "sweeper-shared"


@pytest.mark.parametrize("path, value, error", [
    (("spec", "shutdownAfterJobFinish"), True, "Additional properties are not allowed ('shutdownAfterJobFinish'"),
    (("spec", "backoffLimit"), 2**31, "is not a 'int32'"),
    (("spec", "rayClusterSpec", "autoscalerOptions", "upscalingMode"), "Fast", "'Fast' is not one of"),
    (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "replica"), 3, "'replica' was unexpected"),
])
def test_the_validator_catches_what_kubectl_would_reject(validators, path: tuple, value: Any,  # noqa: ANN001
                                                         error: str) -> None:
    """The strict CRD check is not vacuous: typos, out-of-range ints and bad enums fail it."""
    doc = copy.deepcopy(yaml.safe_load((cluster.CLUSTER_DIR / "kuberay" / "rayjob.yaml").read_text()))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(AssertionError, match=re.escape(error)):
        validate_manifest(doc, validators)


@pytest.mark.parametrize("args, message", [
    (["--workers", "0", "--gpus-per-worker", "1"], "--workers: must be at least 1, got 0"),
    (["--workers", "2", "--gpus-per-worker", "1", "--memory", "lots"], "--memory: 'lots' is not a Kubernetes quantity"),
    (["--workers", "2", "--gpus-per-worker", "1", "--kind", "deployment"], "--kind: unknown kind 'deployment'"),
    (["--workers", "2", "--gpus-per-worker", "0"], "resources.gpu: a trial needs 0.5 GPU but --gpus-per-worker is 0"),
    (["--workers", "2", "--gpus-per-worker", "1", "--pvc", "Bad_Name"],
     "--pvc: 'Bad_Name' is not a PersistentVolumeClaim"),
    (["--workers", "2", "--gpus-per-worker", "1", "--set", "budget.num_samples=0"], "budget.num_samples"),
])
def test_k8s_cli_refuses_bad_input_with_exit_2(sweep_file: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["cluster", "k8s", str(sweep_file), "--image", "reg/sweeper:1", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_k8s_cli_renders_yaml_to_stdout(sweep_file: Path, validators) -> None:  # noqa: ANN001
    result = runner.invoke(app, ["cluster", "k8s", str(sweep_file), "--workers", "4", "--gpus-per-worker", "1",
                                 "--image", "reg/sweeper:1", "--storage", "s3://team-bucket/sweeps"])
    assert result.exit_code == 0, result.output
    config_map, job = [d for d in yaml.safe_load_all(result.stdout) if d]
    validate_manifest(job, validators)
    assert yaml.safe_load(config_map["data"]["Tiny_Sweep.v2.yaml"])["storage"] == "s3://team-bucket/sweeps"


def test_dockerfile_matches_the_pinned_ray_and_python() -> None:
    """The image's Ray must be the one the manifests declare (rayVersion) and constraints.txt pins."""
    text = (cluster.CLUSTER_DIR / "Dockerfile").read_text()
    pins = dict(re.findall(r"^([\w.-]+)==(\S+)$", (REPO / "constraints.txt").read_text(), re.M))
    assert re.search(r"^ARG RAY_VERSION=(\S+)$", text, re.M).group(1) == pins["ray"]
    assert "FROM rayproject/ray:${RAY_VERSION}-py311-gpu" in text
    assert "-c constraints.txt -e ." in text
    spec = yaml.safe_load((cluster.CLUSTER_DIR / "kuberay" / "raycluster.yaml").read_text())["spec"]
    assert spec["rayVersion"] == pins["ray"]


def test_k8s_names_are_valid_for_any_sweep_name() -> None:
    for name in ("demo", "Tiny_Sweep.v2", "a" * 80, "x-", "9lives"):
        got = cluster.k8s_name(name)
        assert NAME_RE.fullmatch(got) and len(got) <= 40, (name, got)


def test_sweep_errors_name_the_file_and_field(sweep_file: Path) -> None:
    with pytest.raises(SweepConfigError, match=r"tiny\.yaml: resources\.gpu: a trial needs 0\.5 GPU"):
        cluster.render_slurm(load_sweep(sweep_file), nodes=2, gpus_per_node=0)
    assert shlex.split(cluster.render_slurm(load_sweep(sweep_file), nodes=2, gpus_per_node=1)
                       .split("DEFAULT_ARGS=(", 1)[1].split(")\n", 1)[0]) == [str(sweep_file)]


def test_debug_shows_the_exception_instead_of_exit_2(sweep_file: Path) -> None:
    result = runner.invoke(app, ["--debug", "cluster", "slurm", str(sweep_file), "--nodes", "0"])
    assert isinstance(result.exception, cluster.ClusterOptionError) and result.exit_code != 2


def test_k8s_warns_when_the_configmap_would_hold_a_secret(tmp_path: Path) -> None:
    (tmp_path / "cmd.yaml").write_text(textwrap.dedent("""
        name: cmd
        task: command
        command: {run: "{python} train.py {overrides}", metrics: stdout, env: {HF_TOKEN: abc}}
        search: {lr: {loguniform: [1.0e-4, 1.0e-2]}}
        objective: {metric: loss, mode: min}
        scheduler: {name: fifo}
        """))
    result = runner.invoke(app, ["cluster", "k8s", str(tmp_path / "cmd.yaml"), "--workers", "1",
                                 "--gpus-per-worker", "1", "--image", "reg/sweeper:1"])
    assert result.exit_code == 0, result.output
    assert "warning: the ConfigMap holds the sweep's command.env.HF_TOKEN in plain text" in result.stderr
