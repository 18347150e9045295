"""Storage pre-flight and experiment locations, without Ray: which `storage` a multi-node cluster
may use, where `storage/name` is for a URI with query parameters, and how `sweeper resume`
finds a sweep's state (local directory, remote URI, or the driver's copy of a remote one)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sweeper import runner
from sweeper.config import load_sweep

S3 = "s3://team/sweeps?endpoint_override=127.0.0.1:9000&scheme=http"


@pytest.mark.parametrize(("storage", "nodes", "fstype", "declared", "refused"), [
    ("/home/me/runs", 1, "ext4", [], False),             # one node: any local directory works
    ("/home/me/runs", 2, "ext4", [], True),              # local disk, second node: refused
    ("/home/me/runs", 5, None, [], True),                # unknown filesystem counts as local
    ("file:///home/me/runs", 2, "ext4", [], True),       # a file:// URI is a local path too
    ("/home/me/runs", 2, "nfs4", [], False),             # network filesystems are shared
    ("/home/me/runs", 2, "lustre", [], False),
    ("/home/me/runs", 2, "fuse.gcsfuse", [], False),
    ("/mnt/team/runs", 2, "ext4", ["/mnt/team"], False),  # declared shared by the user
    ("/mnt/team", 2, "ext4", ["/mnt/team/"], False),      # the declared directory itself
    ("/mnt/teamwork/runs", 2, "ext4", ["/mnt/team"], True),  # a prefix of the name is not a parent
    ("/srv/runs", 2, "ext4", ["", "/mnt/team"], True),    # empty entries (SWEEPER_SHARED_STORAGE unset)
    (S3, 3, None, [], False),                             # object storage
    ("gs://bucket/prefix", 3, None, [], False),
])
def test_storage_problem(storage: str, nodes: int, fstype: str | None, declared: list[str], refused: bool) -> None:
    problem = runner.storage_problem(storage, nodes, fstype, declared)
    assert (problem is not None) == refused
    if refused:
        assert f"{nodes} nodes" in problem and storage in problem
        assert "s3://" in problem and runner.SHARED_ENV in problem  # says what to use instead


def test_fstype_names_the_mount_of_the_deepest_existing_mount_point(tmp_path: Path) -> None:
    mounts = {line.split()[1]: line.split()[2] for line in Path("/proc/mounts").read_text().splitlines()}
    assert runner._fstype(Path("/")) == mounts["/"]
    assert runner._fstype(Path("/proc/self")) == "proc"
    assert runner._fstype(tmp_path / "not" / "created" / "yet") is not None


def _sweep(tmp_path: Path, storage: str, name: str = "s"):  # noqa: ANN202
    (tmp_path / "s.yaml").write_text(textwrap.dedent(f"""
        name: {name}
        task: noop
        search: {{x: {{uniform: [0.0, 1.0]}}}}
        objective: {{metric: score}}
        storage: "{storage}"
    """))
    return load_sweep(tmp_path / "s.yaml", cwd=tmp_path)


@pytest.mark.parametrize(("storage", "expected"), [
    (S3, "s3://team/sweeps/s?endpoint_override=127.0.0.1:9000&scheme=http"),
    ("s3://team/sweeps/", "s3://team/sweeps/s"),
    ("runs", "{tmp}/runs/s"),
])
def test_experiment_path_keeps_the_query_at_the_end(tmp_path: Path, storage: str, expected: str) -> None:
    sweep = _sweep(tmp_path, storage)
    assert sweep.experiment_dir == expected.format(tmp=tmp_path.resolve())


def test_driver_dir_is_the_experiment_for_local_storage_and_runs_name_for_a_uri(tmp_path: Path) -> None:
    assert runner.driver_dir(_sweep(tmp_path, "runs")) == tmp_path.resolve() / "runs" / "s"
    assert runner.driver_dir(_sweep(tmp_path, S3)) == tmp_path.resolve() / "runs" / "s"
    assert runner.driver_dir(_sweep(tmp_path, "other")) == tmp_path.resolve() / "other" / "s"


def test_find_experiment_local_by_dir_and_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exp = str(tmp_path.resolve() / "runs" / "s")
    runner._write_state(exp, {"parent_run_id": "p", "experiment": exp})
    for arg in ("runs/s", "s", exp):
        found, state = runner.find_experiment(arg)
        assert (found, state["parent_run_id"]) == (exp, "p")
    with pytest.raises(LookupError, match="no sweep experiment at 'nope'"):
        runner.find_experiment("nope")


def test_find_experiment_remote_by_uri_and_through_the_drivers_copy(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # fsspec's in-memory filesystem stands in for a bucket: the same pyarrow code path as s3://
    monkeypatch.chdir(tmp_path)
    uri = f"memory://bucket/{tmp_path.name}/s"
    assert runner._read_state(uri) is None
    state = {"parent_run_id": "p", "experiment": uri}
    runner._write_state(uri, state)
    assert runner.find_experiment(uri) == (uri, state)
    runner._write_state(str(tmp_path / "runs" / "s"), state)  # what launch leaves in ./runs/NAME
    assert runner.find_experiment("s") == (uri, state)
    with pytest.raises(LookupError):
        runner.find_experiment(f"memory://bucket/{tmp_path.name}/other")
