"""`sweeper confirm` without Ray: choosing the top K from fabricated leaderboard rows, the
statistics of a confirmation on fabricated seeds, the derived sweep's shape, and every refusal
through the CLI against a real (fabricated) MLflow store. The real launch is tests/e2e/test_confirm.py."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sweeper import confirm, stats
from sweeper.cli import app
from sweeper.config import SweepConfigError, load_sweep
from sweeper.confirmed import confirm_table, distinguishable, half_width, seed_groups
from sweeper.spaces import Dimension

DIMS = [Dimension("x", "uniform", low=0.0, high=1.0), Dimension("model.width", "choice", values=(8, "8", 16)),
        Dimension("train.seed", "randint", low=0, high=9)]


def _row(trial: str, status: str, score: float | None, x: str = "0.5", width: str = "8", seed: str = "1") -> dict:
    return {"trial": trial, "run_id": f"run-{trial}", "status": status, "score": score, "x": x, "model.width": width,
            "train.seed": seed}


ROWS = [
    _row("stopped-high", "stopped", 0.99, x="0.9"),  # ASHA stopped it at epoch 1: not comparable
    _row("a", "finished", 0.80, x="0.1", width="16"),
    _row("failed", "failed", None),
    _row("b", "finished", 0.90, x="0.2"),
    _row("b-again", "finished", 0.85, x="0.2", seed="7"),  # b's configuration with another seed: counted once
    _row("c", "finished", 0.70, x="0.3", width="8"),
    _row("running", "running", 0.95),
]


def test_top_k_ranks_finished_trials_best_first_and_counts_a_configuration_once() -> None:
    top = confirm.top_configurations(ROWS, DIMS, "score", "max", 3, name="s", seed_key="train.seed")
    assert [(c.rank, c.trial, c.variant) for c in top] == [(1, "b", "baseline"), (2, "a", "rank2"), (3, "c", "rank3")]
    assert top[0].params == {"x": 0.2, "model.width": 8} and top[1].params == {"x": 0.1, "model.width": 16}
    assert type(top[0].params["model.width"]) is int and top[0].value == 0.90 and top[0].run_id == "run-b"


def test_top_k_in_min_mode_and_typed_choices() -> None:
    rows = [_row("lo", "finished", 0.1, width="'8'"), _row("hi", "finished", 0.5)]
    dims = [Dimension("x", "uniform", low=0.0, high=1.0), Dimension("model.width", "choice", values=(8, "'8'"))]
    top = confirm.top_configurations(rows, dims, "score", "min", 2, name="s")
    assert [c.trial for c in top] == ["lo", "hi"] and top[0].params["model.width"] == "'8'"
    assert confirm.typed_value(Dimension("n", "randint", low=1, high=4), "3") == 3
    assert confirm.typed_value(None, "[1, 2]") == [1, 2] and confirm.typed_value(None, "abc") == "abc"


def test_too_few_finished_trials_says_how_many_and_why() -> None:
    with pytest.raises(SweepConfigError) as err:
        confirm.top_configurations(ROWS, DIMS, "score", "max", 4, name="s", file=Path("s.yaml"), seed_key="train.seed")
    message = str(err.value)
    assert err.value.field == "--top" and "has 4 finished trials (3 distinct configurations) of 7" in message
    assert "1 failed, 1 running, 1 stopped" in message and "--top 4 needs 4" in message


@pytest.mark.parametrize("top, seeds, field", [(0, 3, "--top"), (-1, 3, "--top"), (2, 1, "--seeds"), (2, 0, "--seeds"),
                                               (2, 10**6, "--seeds")])
def test_counts_are_checked(top: int, seeds: int, field: str) -> None:
    with pytest.raises(SweepConfigError) as err:
        confirm.check_counts(top, seeds)
    assert err.value.field == field


# ----------------------------------------------------------------------------------- statistics
CONFIGS = [{"rank": 1, "variant": "baseline", "trial": "b", "run_id": "run-b"},
           {"rank": 2, "variant": "rank2", "trial": "a", "run_id": "run-a"},
           {"rank": 3, "variant": "rank3", "trial": "c", "run_id": "run-c"}]


def test_the_winner_is_the_best_confirmed_mean_and_the_others_are_tested_against_it() -> None:
    groups = {"baseline": {0: 0.70, 1: 0.72, 2: 0.71}, "rank2": {0: 0.80, 1: 0.83, 2: 0.81},
              "rank3": {0: 0.79, 1: 0.82, 2: 0.815}}
    rows = confirm_table(groups, CONFIGS, "max")
    assert [r["rank"] for r in rows] == [2, 3, 1] and rows[0]["winner"] and not rows[1]["winner"]
    assert rows[0]["mean"] == pytest.approx(0.8133333) and rows[0]["n"] == 3
    p = [stats.compare(groups[v], groups["rank2"]).paired_p for v in ("rank3", "baseline")]
    assert [r["p"] for r in rows[1:]] == pytest.approx(p) and all(r["test"] == "paired t" for r in rows[1:])
    assert [r["p_holm"] for r in rows[1:]] == pytest.approx(stats.holm(p))
    assert rows[2]["significant"] and not rows[1]["significant"]  # rank 3 is within noise of the winner
    assert distinguishable(rows) is False
    s = stats.summarize(list(groups["rank2"].values()))
    assert half_width(rows[0]) == pytest.approx((s.ci_high - s.ci_low) / 2)


def test_a_clear_winner_is_distinguishable_and_an_unmeasured_one_comes_last() -> None:
    groups = {"baseline": {0: 0.90, 1: 0.91, 2: 0.905}, "rank2": {0: 0.50, 1: 0.52, 2: 0.505}}
    rows = confirm_table(groups, CONFIGS, "max")
    assert [r["variant"] for r in rows] == ["baseline", "rank2", "rank3"] and rows[2]["n"] == 0
    assert rows[1]["significant"] and distinguishable(rows) is True
    assert distinguishable(confirm_table({"baseline": {0: 0.9, 1: 0.8}}, CONFIGS, "max")) is None
    assert confirm_table({}, CONFIGS, "max")[0]["n"] == 0 and distinguishable(confirm_table({}, CONFIGS, "max")) is None


def test_min_mode_winner_and_seed_groups_keep_finished_trials_only() -> None:
    rows = [{"status": "finished", "variant": "baseline", "seed": "0", "final": 0.3},
            {"status": "finished", "variant": "baseline", "seed": "1", "final": 0.5},
            {"status": "finished", "variant": "rank2", "seed": "0", "final": 0.1},
            {"status": "failed", "variant": "rank2", "seed": "1", "final": 0.0},
            {"status": "running", "variant": "rank2", "seed": "1", "final": None}]
    groups = seed_groups(rows)
    assert groups == {"baseline": {0: 0.3, 1: 0.5}, "rank2": {0: 0.1}}
    table = confirm_table(groups, CONFIGS, "min")
    assert table[0]["variant"] == "rank2" and math.isnan(table[1]["p"])  # one seed: no test


# ----------------------------------------------------------------------------------- derived sweep
SEARCH = """
name: srch
task: noop
base: {train: {epochs: 3, sleep_s: 0.0}}
search:
  x: {uniform: [0.0, 1.0]}
  y: {choice: [0.25, 0.5, 0.75]}
scheduler: {name: asha, grace_period: 1}
early_stopping: {patience: 2}
objective: {metric: score, mode: max}
budget: {num_samples: 6, max_concurrent: 2}
"""


def _candidates(*params: dict) -> list[confirm.Candidate]:
    return [confirm.Candidate(rank=i, trial=f"t{i}", run_id=f"r{i}", value=1.0 - i / 10, params=p,
                              variant="baseline" if i == 1 else f"rank{i}") for i, p in enumerate(params, 1)]


def test_the_derived_sweep_is_an_ablation_of_rank_one_with_the_others_as_variants(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SEARCH)
    source = load_sweep(tmp_path / "s.yaml", ["train.epochs=4"], cwd=tmp_path)
    doc = confirm.derive_document(source, _candidates({"x": 0.2, "y": 0.5}, {"x": 0.4, "y": 0.5},
                                                      {"x": 0.2, "y": 0.75}), seeds=3)
    assert doc["name"] == "srch-confirm" and "search" not in doc and "early_stopping" not in doc
    assert doc["scheduler"] == {"name": "fifo"} and doc["budget"] == {"max_concurrent": 2}
    assert doc["base"] == {"train": {"epochs": 4, "sleep_s": 0.0}, "x": 0.2, "y": 0.5}  # the override kept
    assert doc["ablation"] == {"variants": {"rank2": {"x": 0.4}, "rank3": {"y": 0.75}}, "seeds": 3}
    path = tmp_path / "confirm.yaml"
    path.write_text(yaml.safe_dump(doc))
    derived = load_sweep(path, cwd=tmp_path)
    assert [name for name, _ in derived.variants] == ["baseline", "rank2", "rank3"]
    assert derived.num_trials == 9 and derived.max_t == 4 and derived.spec.early_stopping is None
    assert {p["params"]["train.seed"] for p in derived.ablation_points} == {0, 1, 2}
    assert derived.spec.storage == source.spec.storage and derived.spec.tracking == source.spec.tracking


# ----------------------------------------------------------------------------------- through the CLI
ABLATION = """
name: abl
task: noop
base: {train: {epochs: 2}}
ablation: {factors: {x: [0.1]}, seeds: 2}
objective: {metric: score, mode: max}
"""


def _launch_record(c, cwd: Path, name: str, file: str, study: str, trials: list[tuple[str, str, float, float]]) -> None:
    """What a launch leaves: runs/NAME/sweeper.json and, in MLflow, a parent run with trial runs."""
    exp = c.create_experiment(name)
    parent = c.create_run(exp, tags={"sweeper.kind": "sweep", "sweeper.task": "noop", "sweeper.objective": "score",
                                     "sweeper.mode": "max", "sweeper.searched": json.dumps(["x", "y"]),
                                     "sweeper.study": study, "sweeper.sweep_file": str(cwd / file)})
    for trial, status, x, score in trials:
        run = c.create_run(exp, tags={"sweeper.kind": "trial", "sweeper.trial_id": trial, "sweeper.status": status,
                                      "mlflow.parentRunId": parent.info.run_id})
        c.log_param(run.info.run_id, "x", str(x))
        c.log_param(run.info.run_id, "y", "0.5")
        for key, value in (("score", score), ("best_objective", score), ("epoch", 3)):
            c.log_metric(run.info.run_id, key, value)
    state = {"parent_run_id": parent.info.run_id, "config_hash": "x", "sweep_file": str(cwd / file), "overrides": [],
             "cwd": str(cwd), "experiment": str(cwd / "runs" / name)}
    (cwd / "runs" / name).mkdir(parents=True)
    (cwd / "runs" / name / "sweeper.json").write_text(json.dumps(state))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A launch directory with a search `srch` (3 finished, 1 stopped, 1 failed trial) and an ablation `abl`."""
    from mlflow import MlflowClient

    cwd = tmp_path_factory.mktemp("confirm_store")
    (cwd / "s.yaml").write_text(SEARCH)
    (cwd / "abl.yaml").write_text(ABLATION)
    c = MlflowClient(f"sqlite:///{cwd / 'mlruns.db'}")
    _launch_record(c, cwd, "srch", "s.yaml", "search", [("t1", "finished", 0.31, 0.91), ("t2", "finished", 0.52, 0.95),
                                                       ("t3", "stopped", 0.7, 0.99), ("t4", "finished", 0.1, 0.8),
                                                       ("t5", "failed", 0.9, 0.1)])
    _launch_record(c, cwd, "abl", "abl.yaml", "ablation", [("a1", "finished", 0.1, 0.9)])
    return cwd


@pytest.mark.parametrize("args, field, words", [
    (["srch", "--top", "4"], "--top", ["'srch' has 3 finished trials of 5", "1 failed, 1 stopped", "--top 4 needs 4"]),
    (["srch", "--top", "0"], "--top", ["must be at least 1"]),
    (["srch", "--seeds", "1"], "--seeds", ["must be at least 2"]),
    (["abl"], "ablation", ["abl.yaml", "'abl' is an ablation"]),
    (["nosuch"], "NAME", ["no sweep named 'nosuch'", "srch", "abl"]),
])
def test_refusals_exit_2_naming_the_field_before_anything_runs(store: Path, monkeypatch: pytest.MonkeyPatch,
                                                               args: list[str], field: str, words: list[str]) -> None:
    monkeypatch.chdir(store)
    res = CliRunner().invoke(app, ["confirm", *args, "--dry-run"])
    assert res.exit_code == 2, res.output
    assert f": {field}: " in res.output and all(w in res.output for w in words), res.output
    assert not (store / "runs" / "srch-confirm").exists()


def test_dry_run_prints_the_configurations_and_the_plan(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(store)
    res = CliRunner().invoke(app, ["confirm", "srch", "--top", "2", "--seeds", "3", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "the 2 best finished configurations, each re-run with 3 seeds as srch-confirm" in res.output
    assert "ablation plan" in res.output and "x: 0.52 -> 0.31" in res.output
    assert "study: ablation, 2 variants x 3 seeds" in res.output and "FIFO: every trial runs 3 epochs" in res.output
    derived = load_sweep(store / "runs" / "srch" / "confirm-top2-seeds3.yaml", cwd=store)
    assert derived.name == "srch-confirm" and derived.base["x"] == 0.52 and derived.spec.ablation.variants == {
        "rank2": {"x": 0.31}}


def test_one_configuration_is_its_seeds_alone(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """K = 1: an ablation with no variant (a sweep file cannot say it; the plan builds it)."""
    monkeypatch.chdir(store)
    p = confirm.plan("srch", 1, 2, f"sqlite:///{store / 'mlruns.db'}")
    assert [name for name, _ in p.sweep.variants] == ["baseline"] and p.sweep.num_trials == 2
    assert p.sweep.base["x"] == 0.52 and p.sweep.name == "srch-confirm" and p.sweep.file == p.file
    assert not list((store / "runs" / "srch").glob("*.single.yaml"))


# ----------------------------------------------------------------------------------- noop seed noise
def _scores(noise: float, seed: int, x: float = 0.1) -> list[float]:
    from sweeper.tasks.noop import NoopTask

    task = NoopTask({"x": x, "y": 0.2, "train": {"epochs": 2, "sleep_s": 0.0, "seed": seed, "noise": noise}})
    out = []
    for epoch in (1, 2):
        task.train_one_epoch(epoch)
        out.append(task.evaluate()["score"])
    return out


def test_noop_noise_is_off_by_default_and_a_function_of_seed_epoch_and_config() -> None:
    exact = 1.0 - ((0.1 - 0.3) ** 2 + (0.2 - 0.7) ** 2)  # as the task computes it
    assert _scores(0.0, 0) == [exact, exact] == _scores(0.0, 5)  # default 0: nothing changes
    a, b = _scores(0.05, 0), _scores(0.05, 1)
    assert a == _scores(0.05, 0) and a != b and a[0] != a[1] and a != _scores(0.05, 0, x=0.11)
    assert all(abs(s - exact) < 0.05 * 5 for s in a + b)
