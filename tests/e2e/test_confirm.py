"""`sweeper confirm` end to end: a real noop search (6 trials of x, y, FIFO, 2 epochs, seed noise),
then its 2 best configurations re-run with 2 seeds each through the CLI, Ray and MLflow; checked
against what MLflow holds, and on the search's leaderboard, which lists them first."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import launch_sweep, mlflow_client, run_sweeper, trial_runs

pytestmark = pytest.mark.slow

SEARCH = """
name: srch
task: noop
base: {train: {epochs: 2, sleep_s: 0.02, noise: 0.02}}
search:
  x: {uniform: [0.0, 1.0]}
  y: {uniform: [0.0, 1.0]}
search_alg: {name: random, seed: 3}
scheduler: {name: fifo}
objective: {metric: score, mode: max}
budget: {num_samples: 6, max_concurrent: 2}
"""


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    cwd = tmp_path_factory.mktemp("confirm")
    launch_sweep(cwd, SEARCH, file="srch.yaml")
    proc = run_sweeper(["confirm", "srch", "--top", "2", "--seeds", "2"], cwd, timeout=400, check=True)
    return cwd, proc.stdout


def test_the_child_launch_reruns_the_two_best_configurations_with_two_seeds(confirmed: tuple[Path, str]) -> None:
    cwd, _ = confirmed
    c = mlflow_client(cwd)
    source_parent, = trial_runs(c, "srch", kind="sweep")
    parent, = trial_runs(c, "srch-confirm", kind="sweep")
    assert parent.data.tags["sweeper.confirm_of"] == "srch"
    assert parent.data.tags["sweeper.confirm_source_run"] == source_parent.info.run_id
    assert parent.data.tags["sweeper.study"] == "ablation"
    search = sorted(trial_runs(c, "srch"), key=lambda r: -r.data.metrics["best_objective"])
    runs = trial_runs(c, "srch-confirm")
    assert len(runs) == 4 and all(r.data.tags["sweeper.status"] == "finished" for r in runs)
    seen = sorted((r.data.tags["sweeper.confirm_rank"], r.data.tags["sweeper.variant"], r.data.params["train.seed"])
                  for r in runs)
    assert seen == [("1", "baseline", "0"), ("1", "baseline", "1"), ("2", "rank2", "0"), ("2", "rank2", "1")]
    for r in runs:
        rank = int(r.data.tags["sweeper.confirm_rank"])
        original = search[rank - 1]  # the search's best finished trials, best first
        assert r.data.tags["sweeper.confirm_trial"] == original.data.tags["sweeper.trial_id"]
        assert r.data.tags["sweeper.confirm_trial_run"] == original.info.run_id
        assert (r.data.params["x"], r.data.params["y"]) == (original.data.params["x"], original.data.params["y"])
        assert r.data.metrics["epoch"] == 2  # full length: FIFO to train.epochs
    # seed noise: the same configuration scores differently with another seed
    base = {r.data.params["train.seed"]: r.data.metrics["score"] for r in runs
            if r.data.tags["sweeper.variant"] == "baseline"}
    assert base["0"] != base["1"]


def test_it_prints_mean_ci_and_the_paired_test_as_mlflow_holds_them(confirmed: tuple[Path, str]) -> None:
    from sweeper import stats

    cwd, out = confirmed
    runs = trial_runs(mlflow_client(cwd), "srch-confirm")
    groups: dict[str, dict[int, float]] = {}
    for r in runs:
        seed = int(r.data.params["train.seed"])
        groups.setdefault(r.data.tags["sweeper.confirm_rank"], {})[seed] = r.data.metrics["score"]
    lines = {m.group(1): m for m in re.finditer(
        r"rank (\d) \(trial \w+, \w+\): score (\S+) ± (\S+) \(95% CI, n=2 seeds\)(.*)", out)}
    assert set(lines) == {"1", "2"}, out
    for rank, seeds in groups.items():
        s = stats.summarize(list(seeds.values()))
        assert float(lines[rank].group(2)) == pytest.approx(s.mean, abs=1e-4)
        assert float(lines[rank].group(3)) == pytest.approx((s.ci_high - s.ci_low) / 2, abs=1e-4)
    winner = max(groups, key=lambda k: sum(groups[k].values()))
    loser = "1" if winner == "2" else "2"
    assert lines[winner].group(4) == ", winner"
    p = stats.compare(groups[loser], groups[winner]).paired_p
    assert f"paired t p={p:.4f} p_holm={p:.4f}" in lines[loser].group(4)
    assert re.search(r"verdict: rank \d \(trial \w+\) is (distinguishably the best|not distinguishable from rank \d)",
                     out)
    parent, = trial_runs(mlflow_client(cwd), "srch-confirm", kind="sweep")
    assert parent.data.tags["sweeper.confirm_winner"] == winner


def test_the_search_leaderboard_lists_the_confirmed_configurations_first(confirmed: tuple[Path, str]) -> None:
    cwd, _ = confirmed
    board = json.loads(run_sweeper(["leaderboard", "srch", "--format", "json"], cwd, timeout=120, check=True).stdout)
    rows = board["rows"]
    assert len(rows) == 6 and [r["seeds"] for r in rows[:2]] == [2, 2] and all("seeds" not in r for r in rows[2:])
    means = [r["confirmed"] for r in rows[:2]]
    assert means == sorted(means, reverse=True)
    ranks = {c["trial"]: c["rank"] for c in board["confirmed"]}
    assert {r["trial"] for r in rows[:2]} == {t for t, rank in ranks.items() if rank in (1, 2)}
    table = run_sweeper(["leaderboard", "srch"], cwd, timeout=120, check=True).stdout
    assert "confirmed configurations first" in table and "confirmed ± 95% CI" in table
