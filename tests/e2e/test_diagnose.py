"""`sweeper diagnose` and the report's "Can early stopping be trusted?" on a real sweep.

A FIFO `task: command` sweep of 6 trials x 4 epochs runs tests/command_scripts/curve_by_param.py,
whose curves rank trials in reverse at epoch 1 and in their final order from epoch 2 on: the
diagnosis must find rho -1 at epoch 1, 1 at epochs 2-3, settle at epoch 2, and recommend a grace
period of at least 2 whose replay keeps the best trial. Then the refusals: an unknown sweep and
a sweep with too few trials exit 2 with a message.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import COMMAND_SCRIPTS, launch_sweep, mlflow_client, run_sweeper, trial_runs

pytestmark = pytest.mark.slow

NAME = "diagnose-pilot"


@pytest.fixture(scope="module")
def pilot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("diagnose")
    launch_sweep(cwd, f"""
        name: {NAME}
        task: command
        command:
          run: "{{python}} {COMMAND_SCRIPTS / 'curve_by_param.py'} {{overrides}}"
          overrides: argparse
          epochs: 4
        base:
          epochs: 4
          flip: 2
        search:
          q: {{uniform: [0.0, 1.0]}}
        objective: {{metric: val/acc, mode: max}}
        scheduler: {{name: fifo}}
        budget: {{num_samples: 6, max_concurrent: 2}}
    """)
    runs = trial_runs(cwd, NAME)
    assert len(runs) == 6 and all(r.data.tags["sweeper.status"] == "finished" for r in runs)
    return cwd


def test_diagnose_json_finds_where_ranks_settle(pilot: Path) -> None:
    proc = run_sweeper(["diagnose", NAME, "--format", "json"], pilot, check=True)
    d = json.loads(proc.stdout)
    assert (d["name"], d["metric"], d["mode"]) == (NAME, "val/acc", "max")
    assert (d["trials"], d["reference_epoch"], d["reference_trials"], d["truncated"]) == (6, 4, 6, 0)
    assert [(r["epoch"], r["n"], round(r["rho"], 6)) for r in d["ranks"]] == [(1, 6, -1.0), (2, 6, 1.0), (3, 6, 1.0)]
    assert d["ranks"][1]["ci_low"] == pytest.approx(1.0) and d["ranks"][0]["ci_high"] == pytest.approx(-1.0)
    assert d["settle_epoch"] == 2
    assert {(c["grace_period"], c["reduction_factor"]) for c in d["candidates"]} == {
        (g, rf) for g in (2, 3) for rf in (2, 3, 4)}
    chosen = d["chosen"]
    assert d["recommended"] == {"grace_period": chosen["grace_period"], "reduction_factor": chosen["reduction_factor"]}
    assert chosen["regret"] == 0.0 and chosen["compute_fraction"] < 1.0  # keeps the best, saves epochs
    assert {b["scheduler"] for b in d["baselines"]} == {"ray-asha", "default"}
    ray_asha = next(b for b in d["baselines"] if b["scheduler"] == "ray-asha")
    assert ray_asha["regret"] > 0  # Ray's grace 1 judges on the reversed epoch 1


def test_diagnose_table_says_what_to_set(pilot: Path) -> None:
    out = run_sweeper(["diagnose", NAME], pilot, check=True).stdout
    assert f"{NAME}: 6 trials, val/acc (max), reference epoch 4" in out
    assert "Spearman rho" in out and "-1.00" in out and "settled" in out
    assert "Ranks settle at epoch 2. Recommended: scheduler: {name: asha, grace_period:" in out
    assert "ray-asha" in out and "for comparison" in out


def test_report_has_the_early_stopping_section(pilot: Path) -> None:
    run_sweeper(["report", NAME, "--out", "rep"], pilot, check=True)
    md = (pilot / "rep" / "report.md").read_text()
    section = md.split("## Can early stopping be trusted?", 1)[1].split("\n## ", 1)[0]
    assert "Ranks settle at epoch 2. Recommended: scheduler: {name: asha, grace_period: 2}" in section
    assert "| 1 | 6 | -1.00 | [-1.00, -1.00] |  |" in section
    assert "| 2 | 6 | 1.00 | [1.00, 1.00] | settled |" in section
    assert "sweeper diagnose" in section  # not replayed without --replay: it says where the factor comes from
    assert (pilot / "rep" / "figures" / "rank_correlation.png").is_file()
    html = (pilot / "rep" / "report.html").read_text()
    assert "Can early stopping be trusted?" in html


def test_report_replay_gives_the_same_recommendation_as_diagnose(pilot: Path) -> None:
    d = json.loads(run_sweeper(["diagnose", NAME, "--format", "json"], pilot, check=True).stdout)
    run_sweeper(["report", NAME, "--out", "rep-replay", "--replay"], pilot, check=True)
    md = (pilot / "rep-replay" / "report.md").read_text()
    section = md.split("## Can early stopping be trusted?", 1)[1].split("\n## ", 1)[0]
    g, rf = d["recommended"]["grace_period"], d["recommended"]["reduction_factor"]
    assert f"Recommended: scheduler: {{name: asha, grace_period: {g}, reduction_factor: {rf}}}" in section
    assert "| grace | factor | compute | regret | regret p90 |  |" in section
    assert f"| {g} | {rf} | {d['chosen']['compute_fraction']:.1%} | 0.00% | 0.00% | recommended |" in section
    assert "| ray-asha |" in section


def test_unknown_sweep_and_too_few_trials_exit_2(pilot: Path) -> None:
    proc = run_sweeper(["diagnose", "no-such-sweep"], pilot)
    assert proc.returncode == 2 and "no sweep named 'no-such-sweep'" in proc.stderr and NAME in proc.stderr
    # a sweep of 3 trials, recorded as the tracking writer records them (real MLflow store)
    c = mlflow_client(pilot)
    exp = c.create_experiment("tiny")
    parent = c.create_run(exp, tags={"sweeper.kind": "sweep", "sweeper.task": "command", "sweeper.objective": "val/acc",
                                     "sweeper.mode": "max", "sweeper.searched": '["q"]', "sweeper.max_t": "4"})
    for i in range(3):
        run = c.create_run(exp, tags={"sweeper.kind": "trial", "sweeper.trial_id": f"t{i}",
                                      "sweeper.status": "finished", "mlflow.parentRunId": parent.info.run_id})
        for epoch in range(1, 5):
            c.log_metric(run.info.run_id, "val/acc", 0.1 * i + 0.01 * epoch, step=epoch)
    proc = run_sweeper(["diagnose", "tiny"], pilot)
    assert proc.returncode == 2, proc.stdout
    assert "sweep 'tiny': 3 trial(s) reported val/acc per epoch; a rank correlation needs at least 4" in proc.stderr
