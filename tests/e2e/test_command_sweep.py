"""`task: command` end to end: real scripts as trials on real Ray, recorded in real MLflow.

(a) a Hydra + Lightning script, Hydra overrides, metrics tailed from Lightning's CSVLogger file;
(b, c) an argparse script reporting with `sweeper.report`, ASHA stopping long-running trials,
       with no process left behind;
(d, e) a crash mid-trial resumed from the script's own checkpoint, and a script exiting 1;
(f, g) a script on steps (`time_key: step`, validating every 50 steps): ASHA's rungs in steps,
       its own early stop (finished, kept in the ablation's statistics) and patience on steps;
(h) README's MMDetection recipe, its lines run as written.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

import yaml

from .conftest import (
    COMMAND_SCRIPTS,
    json_lines,
    launch_sweep,
    mlflow_client,
    run_sweeper,
    sweeper_env,
    trial_runs,
    write_sweep,
)

pytestmark = pytest.mark.slow


def history(cwd: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    c = mlflow_client(cwd)
    return [(m.step, m.value) for m in sorted(c.get_metric_history(run_id, key), key=lambda m: m.step)]


def artifacts(cwd: Path, run_id: str) -> list[str]:
    return [a.path for a in mlflow_client(cwd).list_artifacts(run_id)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_hydra_lightning_script_with_csv_logger(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("hydra")
    launch_sweep(tmp_path, f"""
        name: hydra-lightning
        task: command
        command:
          run: "{{python}} train.py hydra.run.dir={{trial_dir}}/hydra {{overrides}}"
          workdir: {COMMAND_SCRIPTS / 'hydra_lightning'}
          overrides: hydra
          metrics: "csv:{{trial_dir}}/lightning_logs/version_*/metrics.csv"
          epochs: 3
        base:
          trainer.max_epochs: 3
        search:
          models.optimizer.lr: {{loguniform: [1.0e-3, 0.3]}}
          trainer.batch_size: {{choice: [32, 64]}}
        objective: {{metric: val/acc, mode: max}}
        scheduler: {{name: fifo}}
        budget: {{num_samples: 2, max_concurrent: 2}}
    """)
    runs = trial_runs(tmp_path, "hydra-lightning")
    assert len(runs) == 2
    for run in runs:
        assert run.data.tags["sweeper.status"] == "finished", run.data.tags
        acc = history(tmp_path, run.info.run_id, "val/acc")
        assert [s for s, _ in acc] == [1, 2, 3]  # Lightning's epochs 0..2, reported from 1
        assert all(0 <= v <= 1 for _, v in acc)
        assert [s for s, _ in history(tmp_path, run.info.run_id, "train/loss")] == [1, 2, 3]
        assert float(run.data.params["models.optimizer.lr"]) > 0
        assert run.data.params["trainer.max_epochs"] == "3"
        assert "command.log" in artifacts(tmp_path, run.info.run_id)


def test_argparse_script_asha_stops_and_leaves_no_process(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    proc = launch_sweep(tmp_path, f"""
        name: asha-script
        task: command
        command:
          run: "{{python}} {COMMAND_SCRIPTS / 'train_argparse.py'} {{overrides}}"
          overrides: argparse
          stop_grace_s: 3
        base:
          epochs: 8
          sleep: 1.0
          pid_file: {pids}
          spawn_child: true
        search:
          lr: {{loguniform: [1.0e-4, 0.5]}}
        objective: {{metric: val/loss, mode: min}}
        scheduler: {{name: asha, grace_period: 1, reduction_factor: 2, max_t: 8}}
        budget: {{num_samples: 4, max_concurrent: 2}}
    """)
    runs = trial_runs(tmp_path, "asha-script")
    assert len(runs) == 4
    stopped = [r for r in runs if r.data.tags["sweeper.status"] == "stopped"]
    assert stopped, [r.data.tags for r in runs]
    for r in stopped:
        assert int(r.data.tags["sweeper.stopped_at_epoch"]) < 8
        assert r.data.tags["sweeper.stop_reason"] == "asha"  # marked by the scheduler, not guessed
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 8  # 4 scripts, each with a helper child
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(p) for p in started):
        time.sleep(0.2)
    assert [p for p in started if _alive(p)] == []
    assert "stopped early" in proc.stdout
    board = run_sweeper(["leaderboard", "asha-script", "--format", "json"], tmp_path, timeout=60)
    assert board.returncode == 0 and '"val/loss"' in board.stdout


def test_crash_resumes_from_script_checkpoint_and_exit_1_fails_clearly(tmp_path: Path) -> None:
    launch_sweep(tmp_path, f"""
        name: faults
        task: command
        command:
          run: "{{python}} {COMMAND_SCRIPTS / 'train_argparse.py'} {{overrides}}"
          overrides: argparse
        base:
          epochs: 5
          crash_at: 3
          crash_marker: {tmp_path / 'crashed'}
        search:
          fail: {{grid: [false, true]}}
        objective: {{metric: val/acc, mode: max}}
        search_alg: {{name: grid}}
        scheduler: {{name: fifo}}
        budget: {{num_samples: 1, max_concurrent: 1, max_failures: 1}}
        checkpoint: {{min_interval_s: 0}}
    """)
    runs = {r.data.params["fail"]: r for r in trial_runs(tmp_path, "faults")}
    ok, bad = runs["False"], runs["True"]
    assert (tmp_path / "crashed").exists()
    assert ok.data.tags["sweeper.status"] == "finished", ok.data.tags
    assert [s for s, _ in history(tmp_path, ok.info.run_id, "val/acc")] == [1, 2, 3, 4, 5]  # no epoch twice
    assert history(tmp_path, ok.info.run_id, "resumed_from")[-1] == (5, 3.0)  # continued, not restarted
    assert bad.data.tags["sweeper.status"] == "failed"
    assert "FileNotFoundError: dataset /data/missing.json" in bad.data.tags["sweeper.error"]  # the leaderboard's line
    error = mlflow_client(tmp_path).download_artifacts(bad.info.run_id, "error.txt", str(tmp_path))
    text = Path(error).read_text()
    assert "command exited with code 1" in text
    assert "FileNotFoundError: dataset /data/missing.json does not exist" in text
    assert "command.log" in artifacts(tmp_path, bad.info.run_id)


def test_command_ablation_passes_variant_and_seed_to_the_script(tmp_path: Path) -> None:
    launch_sweep(tmp_path, f"""
        name: cmd-ablation
        task: command
        command:
          run: "{{python}} {COMMAND_SCRIPTS / 'train_argparse.py'} {{overrides}}"
          overrides: argparse
          epochs: 2
        base:
          epochs: 2
          lr: 0.05
        ablation:
          factors:
            hidden: [4]
          seeds: 2                    # sets the script's own --seed (ablation.seed_key default: seed)
        objective: {{metric: val/acc, mode: max}}
        budget: {{max_concurrent: 2}}
    """)
    runs = trial_runs(tmp_path, "cmd-ablation")
    seen = sorted((r.data.tags["sweeper.variant"], r.data.tags["sweeper.seed"], r.data.params["seed"],
                   r.data.params.get("hidden")) for r in runs)
    assert seen == [("baseline", "0", "0", None), ("baseline", "1", "1", None),
                    ("hidden=4", "0", "0", "4"), ("hidden=4", "1", "1", "4")]
    assert all(r.data.tags["sweeper.status"] == "finished" for r in runs)
    board = run_sweeper(["leaderboard", "cmd-ablation", "--group", "variant", "--format", "json"], tmp_path, timeout=60)
    assert board.returncode == 0, board.stderr
    assert [r["n"] for r in json.loads(board.stdout)["rows"]] == [2, 2]


def test_too_many_failed_trials_stop_the_sweep(tmp_path: Path) -> None:
    write_sweep(tmp_path / "sweep.yaml", f"""
        name: broken
        task: command
        command:
          run: "{{python}} {COMMAND_SCRIPTS / 'train_argparse.py'} --fail true {{overrides}}"
          overrides: argparse
          epochs: 2
        search:
          lr: {{loguniform: [1.0e-3, 0.1]}}
        objective: {{metric: val/acc, mode: max}}
        scheduler: {{name: fifo}}
        budget: {{num_samples: 8, max_concurrent: 1, max_failed_trials: 1}}
    """)
    proc = run_sweeper(["launch", "sweep.yaml"], tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "more than budget.max_failed_trials (1)" in proc.stderr
    runs = trial_runs(tmp_path, "broken")
    failed = [r for r in runs if r.data.tags["sweeper.status"] == "failed"]
    assert len(failed) >= 2 and len(runs) < 8  # stopped well before the budget was spent


def test_secrets_reach_the_script_but_never_mlflow_or_the_terminal(tmp_path: Path) -> None:
    script = tmp_path / "check_env.py"
    script.write_text(
        "import os\nfrom sweeper.report import report\n"
        "ok = os.environ.get('SWEEPER_PARAM_WANDB_API_KEY') == 'topsecret1' and os.environ.get('MY_TOKEN') == 'topsecret2'\n"
        "report(epoch=1, ok=float(ok))\n")
    proc = launch_sweep(tmp_path, f"""
        name: secrets
        task: command
        command:
          run: "{{python}} {script}"
          overrides: env
          env: {{MY_TOKEN: topsecret2}}
          epochs: 1
        base:
          wandb.api_key: topsecret1
          lr: 0.1
        objective: {{metric: ok, mode: max}}
        scheduler: {{name: fifo}}
        budget: {{num_samples: 1}}
    """, "--set", "budget.max_concurrent=1")
    dry = run_sweeper(["launch", "sweep.yaml", "--dry-run"], tmp_path, timeout=60)
    c = mlflow_client(tmp_path)
    (run,) = trial_runs(tmp_path, "secrets")
    assert run.data.metrics["ok"] == 1.0  # the script got both values
    assert "wandb.api_key" not in run.data.params and run.data.params["lr"] == "0.1"
    exp = c.get_experiment_by_name("secrets")
    texts = [proc.stdout, proc.stderr, dry.stdout, json.dumps(run.data.params), json.dumps(run.data.tags)]
    for r in c.search_runs([exp.experiment_id]):
        for a in c.list_artifacts(r.info.run_id):
            if not a.is_dir:
                texts.append(Path(c.download_artifacts(r.info.run_id, a.path, str(tmp_path / "dl"))).read_text())
    assert len(texts) > 6  # sweep.yaml, sweep.resolved.json, trial_config.json, command.log, ...
    for text in texts:
        assert "topsecret" not in text


def test_step_script_asha_judges_at_rungs_in_steps(tmp_path: Path) -> None:
    proc = launch_sweep(tmp_path, f"""
        name: steps-asha
        task: command
        command:
          run: "{{python}} {COMMAND_SCRIPTS / 'train_steps.py'} {{overrides}}"
          overrides: argparse
          time_key: step
        base:
          steps: 300
          sleep: 0.5
        search:
          lr: {{loguniform: [1.0e-4, 0.5]}}
        objective: {{metric: val/acc, mode: max}}
        scheduler: {{name: asha, grace_period: 100, reduction_factor: 2, max_t: 300}}
        budget: {{num_samples: 4, max_concurrent: 2}}
    """)
    runs = trial_runs(tmp_path, "steps-asha")
    assert len(runs) == 4
    reasons = {r.data.tags["sweeper.stop_reason"] for r in runs}
    assert reasons <= {"asha", "completed"} and "asha" in reasons, [r.data.tags for r in runs]
    for run in runs:
        steps = [s for s, _ in history(tmp_path, run.info.run_id, "val/acc")]
        assert steps == list(range(50, steps[-1] + 1, 50))  # MLflow's step is the script's step
        assert [s for s, _ in history(tmp_path, run.info.run_id, "train/loss")] == steps  # merged into them
        if run.data.tags["sweeper.stop_reason"] == "asha":
            assert run.data.tags["sweeper.status"] == "stopped"
            assert int(run.data.tags["sweeper.stopped_at_epoch"]) == steps[-1] in (100, 200)  # the rungs
        else:
            assert run.data.tags["sweeper.status"] == "finished" and steps[-1] == 300
    assert "stopped early" in proc.stdout


def test_step_script_stopping_itself_is_finished_and_patience_counts_reports(tmp_path: Path) -> None:
    """FIFO ablation on steps: the baseline runs its 300 steps; `stop_at: 150` is the script's own
    early stop (finished, `stop_reason: script`, in the statistics; the script lingers before it
    exits, so its last step was reported before the end was known: the reason follows in a copy of
    that report); `plateau_after: 100` freezes the weights, so patience 2 ends it at step 200: two
    validations (100 steps) after its best."""
    dry = run_sweeper(["launch", write_sweep(tmp_path / "sweep.yaml", f"""
        name: steps-self
        task: command
        command:
          run: "{{python}} {COMMAND_SCRIPTS / 'train_steps.py'} {{overrides}}"
          overrides: argparse
          time_key: step
        base:
          steps: 300
          lr: 0.1
          sleep: 1.0                  # per validation: the script is still running when patience ends it
          linger: 1.5                 # before exiting: a script's last report goes out before it ends
        ablation:
          factors:
            stop_at: [150]
            plateau_after: [100]
          seeds: 2
        objective: {{metric: val/acc, mode: max}}
        scheduler: {{name: fifo, max_t: 300}}
        early_stopping: {{patience: 2}}
        budget: {{max_concurrent: 2}}
    """).name, "--dry-run"], tmp_path, timeout=60, check=True)
    assert "FIFO: every trial runs 300 steps" in dry.stdout and "after 2 evaluations in a row" in dry.stdout
    proc = run_sweeper(["launch", "sweep.yaml"], tmp_path, timeout=400, check=True)
    assert "6 finished, 0 stopped early" in proc.stdout
    runs = trial_runs(tmp_path, "steps-self")
    by_variant: dict[str, list] = {}
    for run in runs:
        by_variant.setdefault(run.data.tags["sweeper.variant"], []).append(run)
        assert run.data.tags["sweeper.status"] == "finished", run.data.tags
    expected = {"baseline": ("completed", 300), "stop_at=150": ("script", 150), "plateau_after=100": ("patience", 200)}
    assert sorted(by_variant) == sorted(expected)
    for variant, (reason, last) in expected.items():
        for run in by_variant[variant]:
            assert run.data.tags["sweeper.stop_reason"] == reason, (variant, run.data.tags)
            assert history(tmp_path, run.info.run_id, "val/acc")[-1][0] == last
            if reason != "completed":
                assert run.data.tags["sweeper.stopped_at_epoch"] == str(last)
            trial_dir = tmp_path / "runs" / "steps-self" / f"trial_{run.data.tags['sweeper.trial_id']}"
            assert json_lines((trial_dir / "result.json").read_text())[-1].get("stop_reason") == (
                None if reason == "completed" else reason)
    for run in by_variant["plateau_after=100"]:
        assert run.data.tags["sweeper.best_epoch"] == "100"
        log = Path(mlflow_client(tmp_path).download_artifacts(run.info.run_id, "command.log", str(tmp_path / "dl")))
        assert '"step": 250, "val/acc"' not in log.read_text()  # stopped by the trainable at step 200
    board = run_sweeper(["leaderboard", "steps-self", "--group", "variant", "--format", "json"], tmp_path, timeout=60)
    assert board.returncode == 0, board.stderr
    assert [r["n"] for r in json.loads(board.stdout)["rows"]] == [2, 2, 2]  # no trial left out


def test_mmdetection_recipe_from_the_readme_runs_as_written(tmp_path: Path) -> None:
    """The README's MMDetection lines (run, overrides, metrics, time_key) as they are written, with
    `tools/train.py` and the config it names in tests/command_scripts/mmengine_style (MMDetection's
    command line and MMEngine's scalars.json, without MMDetection); `python` is this interpreter."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("# MMDetection / MMEngine", 1)[1].split("```", 1)[0]
    recipe = yaml.safe_load("\n".join(re.findall(r"^(?:run|overrides|metrics|time_key):.*$", block, re.M)))
    assert sorted(recipe) == ["metrics", "overrides", "run", "time_key"]
    command = {**recipe, "workdir": str(COMMAND_SCRIPTS / "mmengine_style"), "epochs": 2}
    write_sweep(tmp_path / "sweep.yaml", "name: mmdet\ntask: command\n",
                yaml.safe_dump({"command": command}), """
        base:
          train_cfg.max_epochs: 2
          train_dataloader.batch_size: 64
        search:
          optim_wrapper.optimizer.lr: {loguniform: [1.0e-3, 0.1]}
        objective: {metric: coco/bbox_mAP, mode: max}
        scheduler: {name: asha, grace_period: 1, max_t: 2}
        budget: {num_samples: 2, max_concurrent: 2}
    """)
    env = sweeper_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    run_sweeper(["launch", "sweep.yaml"], tmp_path, timeout=400, env=env, check=True)
    runs = trial_runs(tmp_path, "mmdet")
    assert len(runs) == 2
    for run in runs:
        assert run.data.tags["sweeper.status"] in ("finished", "stopped"), run.data.tags
        maps = history(tmp_path, run.info.run_id, "coco/bbox_mAP")
        assert [e for e, _ in maps][:1] == [1] and all(0 <= v <= 1 for _, v in maps)
        assert history(tmp_path, run.info.run_id, "iter")[0][1] > 0  # training lines merged into their epoch
