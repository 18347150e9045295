"""Secrets reach the trial's process and nothing written to disk or printed (issue 18, Security).

Real launches of the command task, each with one trial of one epoch and a fresh random secret: a
value in `base`, one in `command.env`, a searched `choice` of two and a `--set` one. The script
(tests/command_scripts/check_secrets.py) is given only the sha256 digests of the values and
reports how many it received, so a metric proves the trial got every secret while the script
never prints or writes one. After each launch every byte the launch left is searched for the
secret (raw, and hex-encoded as Ray writes pickles into its JSON state): the whole launch
directory (the `storage` tree with tuner.pkl, experiment and searcher state, each trial's
params.json / params.pkl / result.json / command.log, sweeper.json and console.log; the MLflow
store mlruns.db and its artifacts; the Optuna study), the captured stdout and stderr, and Ray's
own files under RAY_TMPDIR (logs, session state). The sweep file is the one place a secret may
be, as the user wrote it.

(a) overrides: argparse, launched, then `sweeper resume` asks for the `--set` secret again;
(b) overrides: env, launched (the secrets reach the script through its environment);
the hydra style differs from argparse only in the command line, checked by a dry run (and the
unit tests of tests/test_secret_keys.py). Built-in tasks (noop, detection, dbnet) have strict
schemas with no place for a secret-looking key: tests/test_secret_keys.py checks one is refused.
"""
from __future__ import annotations

import binascii
import hashlib
import os
import uuid
from pathlib import Path

import pytest

from .conftest import COMMAND_SCRIPTS, launch_sweep, run_sweeper, trial_runs, write_sweep

pytestmark = pytest.mark.slow


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _sweep(secret: str, style: str, name: str) -> str:
    """A command sweep with a secret in each place a sweep file can hold one (the 4th, `auth_token`,
    comes with --set); the script is told their digests only."""
    expect = ",".join([_digest(f"{secret}-base"), _digest(f"{secret}-env"),
                       f"{_digest(secret + '-c1')}:{_digest(secret + '-c2')}", _digest(f"{secret}-set")])
    return f"""
name: {name}
task: command
command:
  run: "{{python}} {COMMAND_SCRIPTS / 'check_secrets.py'} {expect} {{overrides}}"
  overrides: {style}
  env: {{SERVICE_TOKEN: {secret}-env, PLAIN_SETTING: "1"}}
base:
  db.password: {secret}-base
  lr: 0.1
search:
  api_key: {{choice: [{secret}-c1, {secret}-c2]}}
objective: {{metric: received, mode: max}}
scheduler: {{name: fifo}}
budget: {{num_samples: 1}}
"""


def grep_for(secret: str, roots: list[Path], texts: dict[str, str], skip: set[Path]) -> tuple[int, list[str]]:
    """(files searched, where the secret was found): every file under `roots` read as bytes (pickles,
    sqlite, logs alike) for the secret as it is and hex-encoded, and each captured text."""
    needles = [secret.encode(), binascii.hexlify(secret.encode()), binascii.hexlify(secret.encode()).upper()]
    files, hits = 0, []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = Path(dirpath) / name
                if path in skip or path.is_symlink() or not path.is_file():
                    continue
                try:
                    data = path.read_bytes()
                except OSError:  # a socket or a file Ray removed meanwhile
                    continue
                files += 1
                hits += [str(path) for needle in needles if needle in data][:1]
    for label, text in texts.items():
        files += 1
        if secret in text or secret.encode().hex() in text:
            hits.append(label)
    return files, hits


def _assert_clean(secret: str, cwd: Path, proc, label: str) -> None:
    ray_tmp = Path(os.environ["RAY_TMPDIR"])
    files, hits = grep_for(secret, [cwd, ray_tmp], {f"{label} stdout": proc.stdout, f"{label} stderr": proc.stderr},
                           skip={cwd / "sweep.yaml"})
    print(f"secret grep ({label}): {files} files and streams searched under {cwd} and {ray_tmp}, {len(hits)} hits")
    assert files > 20, files  # the storage tree, MLflow and Ray's logs were there to search
    assert grep_for(secret, [cwd], {}, skip=set())[1] == [str(cwd / "sweep.yaml")]  # the grep finds what is there
    assert not hits, f"the secret was written or printed: {hits}"


def _received(cwd: Path, name: str) -> float:
    runs = trial_runs(cwd, name)
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["sweeper.status"] == "finished", run.data.tags
    assert run.data.params.get("api_key") in ("secret-1", "secret-2")  # the alias, never the value
    return run.data.metrics["received"]


def test_secrets_reach_the_script_and_nothing_else_argparse(tmp_path: Path) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    proc = launch_sweep(tmp_path, _sweep(secret, "argparse", "sec-argparse"), "--set", f"auth_token={secret}-set",
                        "--verbose")  # Ray's own trial tables too
    assert _received(tmp_path, "sec-argparse") == 4  # base, command.env, the searched one, --set
    assert "secret-" in proc.stdout  # the console names the searched secret by its alias
    _assert_clean(secret, tmp_path, proc, "launch")

    # the --set value is not stored: a resume asks for it, and says how
    again = run_sweeper(["resume", "sec-argparse"], tmp_path)
    assert again.returncode == 2, again.stdout + again.stderr
    assert "sweeper resume sec-argparse --set auth_token=VALUE" in again.stderr
    assert "sweeper.json" in again.stderr
    wrong = run_sweeper(["resume", "sec-argparse", "--set", "lr=0.5", "--set", f"auth_token={secret}-set"], tmp_path)
    assert wrong.returncode == 2 and "--set lr" in wrong.stderr, wrong.stderr
    assert secret not in again.stdout + again.stderr + wrong.stdout + wrong.stderr

    # a dry run of the same sweep in the hydra style: every secret masked, the searched one by alias
    write_sweep(tmp_path / "hydra.yaml", _sweep(secret, "hydra", "sec-hydra"))
    dry = run_sweeper(["launch", "hydra.yaml", "--dry-run", "--set", f"auth_token={secret}-set"], tmp_path, check=True)
    assert secret not in dry.stdout + dry.stderr
    trial_lines = [line for line in dry.stdout.splitlines() if line.startswith("trial ")]
    assert trial_lines and all("db.password=" in line and "***" in line and "api_key=secret-" in line
                               for line in trial_lines), dry.stdout


def test_secrets_reach_the_script_and_nothing_else_env(tmp_path: Path) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    proc = launch_sweep(tmp_path, _sweep(secret, "env", "sec-env"), "--set", f"auth_token={secret}-set")
    assert _received(tmp_path, "sec-env") == 4
    _assert_clean(secret, tmp_path, proc, "launch")
