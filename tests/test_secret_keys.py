"""Secrets kept out of what Tune records and what the CLI prints (sweeper.config.secret_keys), fast:
no Ray. The end-to-end proof (a real launch, every file grepped) is tests/e2e/test_secrets.py."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from sweeper.cli import _plan_table
from sweeper.config import SweepConfigError, load_sweep
from sweeper.config.secret_keys import (
    is_secret,
    public_sweep,
    recorded_overrides,
    restore_overrides,
    reveal,
    secret_values,
)
from sweeper.runner import config_hash

SECRET = "s3cr3t-0f1e2d3c4b5a"


def _command_sweep(tmp_path: Path, style: str = "argparse", search: str = "", extra: str = "",
                   overrides: list[str] | None = None):
    (tmp_path / "sweep.yaml").write_text(f"""
name: sec
task: command
command:
  run: "{{python}} train.py {{overrides}}"
  overrides: {style}
  env: {{SERVICE_TOKEN: {SECRET}-env, PLAIN: visible}}
base:
  db.password: {SECRET}-base
  lr: 0.1
search:
  api_key: {{choice: [{SECRET}-c1, {SECRET}-c2]}}
  {search}
objective: {{metric: acc, mode: max}}
scheduler: {{name: fifo}}
budget: {{num_samples: 3}}
{extra}
""")
    return load_sweep(tmp_path / "sweep.yaml", overrides or [f"auth_token={SECRET}-set"], check_data=False)


@pytest.mark.parametrize("key, secret", [
    ("auth_token", True), ("db.password", True), ("api_key", True), ("model.key", True), ("webhook_url", True),
    ("lr", False), ("model.backbone", False), ("monkey", False),
])
def test_is_secret(key: str, secret: bool) -> None:
    assert is_secret(key) is secret


@pytest.mark.parametrize("style", ["hydra", "argparse", "env"])
def test_dry_run_masks_every_secret(tmp_path: Path, style: str) -> None:
    sweep = _command_sweep(tmp_path, style)
    plan = _plan_table(sweep)
    assert SECRET not in plan
    assert "secret-1" in plan and "secret-2" in plan  # the search-space table shows the aliases
    assert "SERVICE_TOKEN=***" in plan and "PLAIN=visible" in plan  # only secret-looking names masked
    trial_lines = [line for line in plan.splitlines() if line.startswith("trial ")]
    assert len(trial_lines) == 3
    for line in trial_lines:
        if style == "env":
            assert "SWEEPER_PARAM_DB_PASSWORD=***" in line and "SWEEPER_PARAM_AUTH_TOKEN=***" in line
        else:
            assert "***" in line and "secret-" in line, line  # base and --set masked, the searched one by alias


def test_public_sweep_holds_no_secret_and_reveal_gets_it_back(tmp_path: Path) -> None:
    sweep = _command_sweep(tmp_path, extra="notify: {webhook: 'https://hooks.example.com/services/T0/B0/" + SECRET
                           + "'}\ntracking: {uri: 'sqlite:///" + str(tmp_path / "m.db") + "'}")
    assert len(secret_values(sweep)) == 5  # base, --set, env, two choices
    public = public_sweep(sweep)
    assert SECRET.encode() not in pickle.dumps(public)  # what Tune may pickle: searcher, callbacks
    assert [d.values for d in public.dimensions if d.key == "api_key"] == [("secret-1", "secret-2")]
    assert public.overrides == ("auth_token=***",)
    assert reveal(sweep, {"api_key": "secret-2", "lr": 0.2}) == {"api_key": f"{SECRET}-c2", "lr": 0.2}
    assert reveal(sweep, {"api_key": "secret-9"}) == {"api_key": "secret-9"}  # not one of its aliases: as it is
    assert public_sweep(public) == public  # already public: unchanged
    # a secret's value is not the sweep's identity (a rotated token resumes the same sweep)
    rotated = load_sweep(tmp_path / "sweep.yaml", ["auth_token=other"], check_data=False)
    assert config_hash(rotated) == config_hash(sweep)


def test_start_points_name_a_searched_secret_by_alias(tmp_path: Path) -> None:
    sweep = _command_sweep(tmp_path, search=f"start_from: [{{api_key: {SECRET}-c2}}]")
    from sweeper.config.search_start import search_start

    public = public_sweep(sweep)
    assert search_start(public.spec, public.dimensions).start_from == ({"api_key": "secret-2"},)


def test_a_secret_searched_as_a_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SweepConfigError) as exc:
        _command_sweep(tmp_path, search="private_key: {uniform: [0, 1]}")
    assert "search.private_key" in str(exc.value) and "sweep.yaml" in str(exc.value)
    assert "choice" in exc.value.message


def test_a_secret_varied_by_an_ablation_is_refused(tmp_path: Path) -> None:
    (tmp_path / "abl.yaml").write_text("""
name: abl
task: command
command: {run: "{python} train.py {overrides}", epochs: 1}
base: {auth_token: a, lr: 0.1}
ablation: {factors: {auth_token: [b]}, seeds: 2}
objective: {metric: acc, mode: max}
""")
    with pytest.raises(SweepConfigError) as exc:
        load_sweep(tmp_path / "abl.yaml", check_data=False)
    assert "ablation.factors.auth_token" in str(exc.value)


def test_set_secrets_are_recorded_masked_and_given_again_on_resume() -> None:
    recorded = recorded_overrides(["lr=0.2", f"auth_token={SECRET}", "db.password=x"])
    assert recorded == ["lr=0.2", "auth_token=***", "db.password=***"]
    again = restore_overrides(recorded, ["auth_token=new", "db.password=y"], "runs/sec/sweeper.json", "sweeper resume sec")
    assert again == ["lr=0.2", "auth_token=new", "db.password=y"]
    with pytest.raises(SweepConfigError) as exc:
        restore_overrides(recorded, ["auth_token=new"], "runs/sec/sweeper.json", "sweeper resume sec")
    assert "runs/sec/sweeper.json" in str(exc.value) and "sweeper resume sec --set db.password=VALUE" in str(exc.value)
    with pytest.raises(SweepConfigError, match="--set lr"):
        restore_overrides(recorded, ["auth_token=a", "db.password=b", "lr=9"], "sweeper.json", "sweeper resume sec")
    assert restore_overrides(["lr=0.2"], [], "sweeper.json", "sweeper resume sec") == ["lr=0.2"]


def test_a_built_in_task_has_no_place_for_a_secret(tmp_path: Path) -> None:
    """Strict schemas: a secret-looking key in a noop (or detection, dbnet) sweep is an unknown key."""
    (tmp_path / "noop.yaml").write_text("name: n\ntask: noop\nobjective: {metric: score, mode: max}\n")
    for override in ("auth_token=x", "train.api_key=x"):
        with pytest.raises(SweepConfigError, match="no such key"):
            load_sweep(tmp_path / "noop.yaml", [override], check_data=False)
    from sweeper.config import flatten
    from sweeper.registry import get_spec

    for task in ("noop", "detection", "dbnet"):  # and none of their own keys looks like a secret
        assert not [k for k in flatten(get_spec(task).base().model_dump()) if is_secret(k)], task


def test_callbacks_pickle_no_secret_and_get_it_back_on_resume(tmp_path: Path) -> None:
    """Tune pickles its callbacks into tuner.pkl (in `storage`): the trial logger keeps the public
    sweep and a masked URI, the console no webhook; a resume gives them back (`adopt`)."""
    from types import SimpleNamespace

    from sweeper import console, tracking

    uri = f"postgresql://user:{SECRET}-pw@db.example.com/mlflow"
    sweep = _command_sweep(tmp_path, extra=f"notify: {{webhook: 'https://hooks.example.com/services/{SECRET}-hook'}}")
    sweep = sweep.model_copy(update={"spec": sweep.spec.model_copy(update={
        "tracking": sweep.spec.tracking.model_copy(update={"uri": uri})})})
    logger = tracking.MLflowTrialLogger(sweep, "parent", experiment_id="1")
    view = console.SweepConsole(sweep, "http://127.0.0.1:5000")
    data = pickle.dumps([logger, view])
    assert SECRET.encode() not in data
    logger2, view2 = pickle.loads(data)
    assert logger2.uri == "postgresql://user:***@db.example.com/mlflow" and view2.notify == (None, ["end", "failure"])
    run_config = SimpleNamespace(callbacks=[logger2, view2], verbose=0)
    tuner = SimpleNamespace(_local_tuner=SimpleNamespace(get_run_config=lambda: run_config))
    tracking.adopt(tuner, sweep)
    console.adopt(tuner, sweep, "http://127.0.0.1:5000", 0)
    assert logger2.uri == uri and logger2.sweep is sweep
    assert view2.notify == (f"https://hooks.example.com/services/{SECRET}-hook", ["end", "failure"])
