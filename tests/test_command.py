"""The command task without Ray: rendering, metric parsing, and real subprocesses that must die."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sweeper.report import report
from sweeper.tasks.command import (
    CommandFailed,
    CommandTrial,
    EpochMetrics,
    MetricsFile,
    parse_metrics_line,
    render_command,
    render_overrides,
)

SCRIPTS = Path(__file__).parent / "command_scripts"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_dead(pids: list[int], timeout: float = 15) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


# --------------------------------------------------------------------------- rendering
@pytest.mark.parametrize(("style", "words", "env"), [
    ("hydra", ["models.optimizer.lr=0.001", "trainer.batch_size=4", "aug.on=true", "tag='a b'", "ms=[1,2]"], {}),
    ("argparse", ["--models.optimizer.lr", "0.001", "--trainer.batch_size", "4", "--aug.on", "true",
                  "--tag", "a b", "--ms", "[1,2]"], {}),
    ("env", [], {"SWEEPER_PARAM_MODELS_OPTIMIZER_LR": "0.001", "SWEEPER_PARAM_TRAINER_BATCH_SIZE": "4",
                 "SWEEPER_PARAM_AUG_ON": "true", "SWEEPER_PARAM_TAG": "a b", "SWEEPER_PARAM_MS": "[1,2]"}),
])
def test_render_overrides(style: str, words: list[str], env: dict[str, str]) -> None:
    params = {"models.optimizer.lr": 0.001, "trainer.batch_size": 4, "aug.on": True, "tag": "a b", "ms": [1, 2]}
    assert render_overrides(params, style) == (words, env)


def test_render_command_quotes_for_the_shell_and_for_hydra() -> None:
    line, env = render_command("{python} train.py hydra.run.dir={trial_dir}/h {overrides}",
                               {"lr": 1e-05, "name": "a,b", "path": "data/x.json"}, "hydra", trial_dir="/t d", python="/py")
    assert line == "/py train.py hydra.run.dir='/t d'/h lr=1e-05 'name='\"'\"'a,b'\"'\"'' path=data/x.json"
    assert env == {}
    import shlex

    assert shlex.split(line)[4] == "name='a,b'"  # what Hydra receives: a quoted string


# --------------------------------------------------------------------------- metrics
def test_report_prints_a_line_the_parser_reads(capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    report(epoch=3, **{"val/hmean": np.float32(0.5), "loss": float("nan")})
    line = capsys.readouterr().out
    assert line.startswith("SWEEPER_METRICS ") and line.endswith("\n")
    assert parse_metrics_line(line) == {"epoch": 3, "val/hmean": 0.5, "loss": None}
    assert parse_metrics_line("epoch 3 done") is None
    assert parse_metrics_line("SWEEPER_METRICS {broken") is None


def test_epoch_metrics_merge_renumber_and_wait_for_the_objective() -> None:
    m = EpochMetrics("val/acc")
    m.add({"epoch": "0", "step": "10", "train/loss": "0.9"})  # Lightning: 0-based, CSV strings
    assert m.ready() == []  # no objective yet
    m.add({"epoch": 0, "val/acc": 0.6})
    m.add({"epoch": 1, "train/loss": 0.5})
    assert m.ready() == [(1, {"step": 10.0, "train/loss": 0.9, "val/acc": 0.6})]
    m.add({"epoch": 1, "val/acc": 0.7, "val/loss": ""})  # empty CSV cells are not values
    assert m.ready() == []  # newest epoch, not quiet yet, not final
    assert m.ready(final=True) == [(2, {"train/loss": 0.5, "val/acc": 0.7})]
    m.add({"epoch": 1, "val/acc": 0.9})  # a resumed script repeating a reported epoch
    assert m.ready(final=True) == []


def test_step_metrics_are_taken_as_reported_and_records_without_the_objective_dropped() -> None:
    """`time_key: step`: steps are not renumbered (step 0, before training, is not reported);
    training-loss records between validations carry no objective and are merged or dropped."""
    m = EpochMetrics("val/acc", time_key="step")
    m.add({"step": 0, "val/acc": 0.5})  # an evaluation before training
    m.add({"step": 10, "train/loss": 0.9, "epoch": 0})  # a step-based script may log its epoch too
    m.add({"step": 50, "train/loss": 0.7})
    m.add({"step": 50, "val/acc": 0.8})
    m.add({"step": 60, "train/loss": 0.6})
    assert m.ready() == [(50, {"train/loss": 0.7, "val/acc": 0.8})]  # step 0 ignored, step 10 dropped
    m.add({"step": 100, "val/acc": 0.9})
    assert m.ready(final=True) == [(100, {"val/acc": 0.9})]
    mm = EpochMetrics("coco/bbox_mAP", time_key=["epoch", "step"])  # MMEngine by epoch: val lines have `step`
    mm.add({"epoch": 1, "iter": 16, "step": 16, "loss": 0.4})
    mm.add({"coco/bbox_mAP": 0.3, "step": 1})
    assert mm.ready(final=True) == [(1, {"iter": 16.0, "loss": 0.4, "coco/bbox_mAP": 0.3})]


def test_epoch_metrics_latest_epoch_is_complete_after_a_quiet_second(monkeypatch: pytest.MonkeyPatch) -> None:
    import sweeper.tasks.command as command

    monkeypatch.setattr(command, "SETTLE_S", 0.05)
    m = EpochMetrics("hmean", first_epoch=1)
    m.add({"epoch": 1, "hmean": 0.5})
    time.sleep(0.1)
    assert m.ready() == [(1, {"hmean": 0.5})]


def test_metrics_file_csv_rewritten_with_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "v0" / "metrics.csv"
    reader = MetricsFile("csv", str(tmp_path / "v*" / "metrics.csv"))
    assert reader.poll() == []
    path.parent.mkdir()
    path.write_text("epoch,step,train/loss\n0,7,0.9\n")
    assert reader.poll() == [{"epoch": "0", "step": "7", "train/loss": "0.9"}]
    time.sleep(0.01)  # Lightning rewrites the whole file when a column appears
    path.write_text("epoch,step,train/loss,val/acc\n0,7,0.9,\n0,7,,0.6\n1,15,0.5,")
    assert reader.poll() == [{"epoch": "0", "step": "7", "train/loss": "", "val/acc": "0.6"}]  # partial last line waits
    with path.open("a") as fh:
        fh.write("\n")
    assert reader.poll() == [{"epoch": "1", "step": "15", "train/loss": "0.5", "val/acc": ""}]


def test_metrics_file_jsonl_reads_only_new_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    reader = MetricsFile("jsonl", str(path))
    path.write_text('{"epoch": 1, "a": 1}\n{"epoch": 2')
    assert reader.poll() == [{"epoch": 1, "a": 1}]
    with path.open("a") as fh:
        fh.write(', "a": 2}\nnot json\n')
    assert reader.poll() == [{"epoch": 2, "a": 2}]


# --------------------------------------------------------------------------- processes
def _spec(run: str, workdir: Path, **kw: object) -> dict:
    return {"run": run, "workdir": str(workdir), "overrides": "argparse", "metrics": "stdout",
            "checkpoint_dir_env": "SWEEPER_CHECKPOINT_DIR", "env": {}, "stop_grace_s": 2.0, **kw}


def test_trial_reports_epochs_and_persists_its_checkpoint(tmp_path: Path) -> None:
    spec = _spec(f"{sys.executable} {SCRIPTS / 'train_argparse.py'} {{overrides}}", tmp_path)
    trial = CommandTrial(spec, {"lr": 0.1, "epochs": 3}, trial_dir=str(tmp_path / "t"), objective="val/acc", cpus=1)
    try:
        got = list(trial.epochs())
    finally:
        trial.stop()
    assert [e for e, _ in got] == [1, 2, 3]
    assert all(0 <= m["val/acc"] <= 1 and m["resumed_from"] == 0 for _, m in got)
    log = (tmp_path / "t" / "command.log").read_text()
    assert log.startswith("$ ") and "--lr 0.1 --epochs 3" in log and log.count("SWEEPER_METRICS") == 3


def test_trial_env_threads_gpus_and_params(tmp_path: Path) -> None:
    code = ("import json, os; from sweeper.report import report; "
            "keys = ['OMP_NUM_THREADS', 'CUDA_VISIBLE_DEVICES', 'SWEEPER_PARAM_TRAIN_LR', 'EXTRA', 'SWEEPER_CHECKPOINT_DIR']; "
            "print(json.dumps({k: os.environ.get(k) for k in keys})); report(epoch=1, ok=1)")
    script = tmp_path / "env_script.py"
    script.write_text(code)
    spec = _spec(f"{sys.executable} {script}", tmp_path, overrides="env", env={"EXTRA": "x"})
    trial = CommandTrial(spec, {"train.lr": 0.01}, trial_dir=str(tmp_path / "t"), objective="ok", cpus=3, gpu_ids=["1"])
    try:
        assert list(trial.epochs()) == [(1, {"ok": 1.0})]
    finally:
        trial.stop()
    seen = json.loads((tmp_path / "t" / "command.log").read_text().splitlines()[1])
    assert seen == {"OMP_NUM_THREADS": "3", "CUDA_VISIBLE_DEVICES": "1", "SWEEPER_PARAM_TRAIN_LR": "0.01",
                    "EXTRA": "x", "SWEEPER_CHECKPOINT_DIR": str(tmp_path / "t.checkpoint")}


def test_nonzero_exit_fails_with_the_end_of_stderr(tmp_path: Path) -> None:
    spec = _spec(f"{sys.executable} {SCRIPTS / 'train_argparse.py'} {{overrides}}", tmp_path)
    trial = CommandTrial(spec, {"fail": True}, trial_dir=str(tmp_path / "t"), objective="val/acc")
    with pytest.raises(CommandFailed, match="exited with code 1") as exc:
        list(trial.epochs())
    trial.stop()
    assert "FileNotFoundError: dataset /data/missing.json does not exist" in str(exc.value)


def test_never_reporting_the_objective_says_what_was_seen(tmp_path: Path) -> None:
    spec = _spec(f"{sys.executable} {SCRIPTS / 'train_argparse.py'} {{overrides}}", tmp_path)
    trial = CommandTrial(spec, {"epochs": 1}, trial_dir=str(tmp_path / "t"), objective="val/hmean")
    with pytest.raises(CommandFailed, match="never reported 'val/hmean'") as exc:
        list(trial.epochs())
    trial.stop()
    assert "1 metric records with keys" in str(exc.value) and "val/acc" in str(exc.value)


def test_stop_ends_the_whole_group_including_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    spec = _spec(f"{sys.executable} {SCRIPTS / 'train_argparse.py'} {{overrides}}", tmp_path)
    trial = CommandTrial(spec, {"epochs": 50, "sleep": 0.3, "pid_file": str(pids), "spawn_child": True},
                         trial_dir=str(tmp_path / "t"), objective="val/acc")
    it = trial.epochs()
    next(it)  # one epoch reported, the script runs on
    trial.stop()
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 2
    assert _wait_dead(started) == []


def test_sentinel_ends_the_group_when_the_trial_process_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the process that started the command (a Ray worker) leaves nothing behind."""
    pids = tmp_path / "pids"
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(f"""
        import sys, time
        from sweeper.tasks.command import CommandProcess
        p = CommandProcess({sys.executable!r} + " -c 'import subprocess, sys, time; "
                           "c = subprocess.Popen([sys.executable, \\"-c\\", \\"import time; time.sleep(1000)\\"]); "
                           "open(sys.argv[1], \\"w\\").write(str(c.pid)); time.sleep(1000)' " + {str(pids)!r},
                           cwd={str(tmp_path)!r}, env={{}}, log_path=__import__("pathlib").Path({str(tmp_path / 'log')!r}),
                           stop_grace_s=1)
        print(p.proc.pid, flush=True)
        time.sleep(1000)
    """))
    proc = subprocess.Popen([sys.executable, str(worker)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    leader = int(proc.stdout.readline())
    deadline = time.time() + 20
    while time.time() < deadline and not (pids.exists() and pids.read_text()):
        time.sleep(0.1)
    child = int(pids.read_text())
    assert _alive(leader) and _alive(child)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _wait_dead([leader, child]) == []


def test_mmdetection_style_cfg_options_and_scalars_json(tmp_path: Path) -> None:
    """The README's MMDetection line: --cfg-options key=value, MMEngine's scalars.json read per epoch."""
    workdir = SCRIPTS / "mmengine_style"
    spec = _spec(f"{sys.executable} train.py configs/tiny.py --work-dir {{trial_dir}}/work --cfg-options {{overrides}}",
                 workdir, overrides="hydra", metrics="jsonl:{trial_dir}/work/*/vis_data/scalars.json",
                 time_key=["epoch", "step"])
    trial = CommandTrial(spec, {"optim_wrapper.optimizer.lr": 0.02, "train_dataloader.batch_size": 64,
                                "train_cfg.max_epochs": 2}, trial_dir=str(tmp_path / "t"), objective="coco/bbox_mAP")
    try:
        got = list(trial.epochs())
    finally:
        trial.stop()
    assert [e for e, _ in got] == [1, 2]
    for _, m in got:
        assert 0 <= m["coco/bbox_mAP"] <= 1 and m["lr"] == 0.02 and m["iter"] > 0
    assert "--cfg-options optim_wrapper.optimizer.lr=0.02 train_dataloader.batch_size=64" in trial.line


def test_a_step_script_reports_every_50_steps_and_says_when_it_ended_itself(tmp_path: Path) -> None:
    """`time_key: step` on a real script: one report per validation (every 50 steps); `at_end` is
    set on the last report of a script that exits 0 (here by its own early stop at step 150)."""
    spec = _spec(f"{sys.executable} {SCRIPTS / 'train_steps.py'} {{overrides}}", tmp_path, time_key="step")
    trial = CommandTrial(spec, {"lr": 0.1, "steps": 300, "stop_at": 150}, trial_dir=str(tmp_path / "t"),
                         objective="val/acc")
    seen = []
    try:
        for step, metrics in trial.epochs():
            seen.append((step, sorted(metrics), trial.at_end))
    finally:
        trial.stop()
    assert [s for s, _, _ in seen] == [50, 100, 150]
    assert all(keys == ["train/loss", "val/acc", "val/loss"] for _, keys, _ in seen)  # no `step` among the values
    # `at_end` marks the last report only when the exit was seen in the same poll; a report read
    # before the script exited is followed by the exit alone (the trainable then sends the reason
    # in a copy of that report): either way no earlier report says "ended"
    assert [end for _, _, end in seen][:2] == [False, False]
    assert seen[-1][2] or trial.process.proc.returncode == 0


# --------------------------------------------------------------------------- keys no shell may see unquoted
ODD_KEYS = {"+trainer.precision": 16, "~model.ema": None, "opt;touch PWNED_K": 1, "run name": "$(touch PWNED_V)",
            "tag": "a;b|c&`touch PWNED_B` 'q' \"d\" >x"}


@pytest.mark.parametrize("style", ["hydra", "argparse", "env"])
def test_odd_keys_and_shell_metacharacters_reach_the_script_as_one_word_each(tmp_path: Path, style: str) -> None:
    """Hydra's `+key` / `~key`, keys with `;` or spaces, values with `$(...)`, backticks, quotes and
    redirections: each is one argument (or one variable) for the script, nothing runs, no file appears."""
    code = ("import json, os, sys; print(json.dumps([sys.argv[1:], "
            "{k: v for k, v in os.environ.items() if k.startswith('SWEEPER_PARAM_')}]))")
    line, env = render_command(f"{{python}} -c {code!r} {{overrides}}", ODD_KEYS, style,
                               trial_dir=str(tmp_path), python=sys.executable)
    out = subprocess.run(line, shell=True, cwd=tmp_path, env={**os.environ, **env}, capture_output=True,
                         text=True, check=True).stdout
    argv, seen_env = json.loads(out)
    words, want_env = render_overrides(ODD_KEYS, style)
    assert argv == words and seen_env == want_env
    assert list(tmp_path.iterdir()) == []  # no PWNED_* file, no `x` from a redirection
    if style == "hydra":
        assert argv[0] == "+trainer.precision=16" and argv[1] == "~model.ema=null"
        assert argv[3] == "run name='$(touch PWNED_V)'"  # a Hydra-quoted string
    elif style == "argparse":
        assert argv[:2] == ["--+trainer.precision", "16"] and argv[6:8] == ["--run name", "$(touch PWNED_V)"]
    else:
        assert seen_env["SWEEPER_PARAM__TRAINER_PRECISION"] == "16"
        assert seen_env["SWEEPER_PARAM_OPT_TOUCH_PWNED_K"] == "1"


# --------------------------------------------------------------------------- non-finite objectives
@pytest.mark.parametrize("via", ["stdout", "jsonl", "csv"])
@pytest.mark.parametrize("value", ["nan", "inf", "minus_inf"])
def test_a_nan_or_infinite_objective_is_a_divergence_not_a_value(tmp_path: Path, via: str, value: str) -> None:
    from sweeper.results import NonFiniteLossError, is_divergence

    out = tmp_path / f"metrics.{via}"
    metrics = "stdout" if via == "stdout" else f"{via}:{out}"
    spec = _spec(f"{sys.executable} {SCRIPTS / 'nonfinite.py'} {{overrides}}", tmp_path, metrics=metrics)
    trial = CommandTrial(spec, {"value": value, "via": via, "out": str(out)}, trial_dir=str(tmp_path / "t"),
                         objective="score")
    got = []
    with pytest.raises(NonFiniteLossError, match=r"epoch 2: the command reported score = (nan|inf|-inf)") as exc:
        for epoch, m in trial.epochs():
            got.append((epoch, m["score"]))
    leader = trial.process.proc.pid
    trial.stop()
    assert got == [(1, 0.5)]  # the diverged epoch is never handed out as a value
    assert is_divergence(exc.value)
    assert _wait_dead([leader], timeout=1) == []


# --------------------------------------------------------------------------- process trees
def _tree_trial(tmp_path: Path, mode: str, grace: float, **params: object) -> tuple[CommandTrial, Path]:
    pids = tmp_path / "pids"
    spec = _spec(f"{sys.executable} {SCRIPTS / 'process_tree.py'} {{overrides}}", tmp_path, stop_grace_s=grace)
    trial = CommandTrial(spec, {"mode": mode, "epochs": 2, "pid_file": str(pids), **params},
                         trial_dir=str(tmp_path / "t"), objective="score")
    trial.planned = 2
    return trial, pids


def _token_holders(token: str) -> list[int]:
    """Processes whose environment still carries the trial's marker."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and _alive(int(name)):
            try:
                if f"SWEEPER_TRIAL_TOKEN={token}".encode() in Path(f"/proc/{name}/environ").read_bytes().split(b"\0"):
                    found.append(int(name))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("ignore_term", [False, True])
def test_a_script_that_never_exits_after_its_last_epoch_is_ended_within_the_grace_period(
        tmp_path: Path, ignore_term: bool) -> None:
    trial, pids = _tree_trial(tmp_path, "hang", 2.0, ignore_term=ignore_term)
    try:
        assert [e for e, _ in trial.epochs()] == [1, 2]  # returns: its work is done, though it runs on
        started = [int(p) for p in pids.read_text().split()]
        assert all(_alive(p) for p in started)
        t0 = time.monotonic()
    finally:
        trial.stop()
    took = time.monotonic() - t0
    assert took <= 2.5, took  # stop_grace_s, SIGKILL included
    assert _wait_dead(started, timeout=0.5) == [] and _token_holders(trial.process.token) == []


def test_a_setsid_daemon_holding_stdout_is_found_and_ended(tmp_path: Path) -> None:
    trial, pids = _tree_trial(tmp_path, "daemon", 2.0)
    t0 = time.monotonic()
    try:
        assert [e for e, _ in trial.epochs()] == [1, 2]
        took = time.monotonic() - t0
    finally:
        trial.stop()
    leader, daemon = [int(p) for p in pids.read_text().split()]
    assert took < 8, took  # not stuck reading the stdout the daemon keeps open
    assert _wait_dead([leader, daemon], timeout=0.5) == [] and _token_holders(trial.process.token) == []
    assert "daemon: still here" in (tmp_path / "t" / "command.log").read_text()


def test_a_setsid_daemon_is_found_while_the_script_still_runs(tmp_path: Path) -> None:
    """Stopped mid-run (as ASHA does): the daemon, in its own session, is ended with the script."""
    trial, pids = _tree_trial(tmp_path, "daemon", 2.0, epochs=100)
    it = trial.epochs()
    next(it)
    leader, daemon = [int(p) for p in pids.read_text().split()]
    with open(f"/proc/{daemon}/stat") as fh:
        _, ppid, pgrp, sid = fh.read().rsplit(")", 1)[1].split()[:4]
    assert int(ppid) != leader and int(pgrp) != trial.process.pgid and int(sid) != trial.process.pgid  # escaped
    trial.stop()
    assert _wait_dead([leader, daemon], timeout=0.5) == []


def test_the_final_save_after_the_last_report_is_not_cut_short(tmp_path: Path) -> None:
    saved = tmp_path / "final.pt"
    trial, pids = _tree_trial(tmp_path, "final_save", 4.0, save=str(saved), save_s=1.5)
    try:
        assert [e for e, _ in trial.epochs()] == [1, 2]
        t0 = time.monotonic()
    finally:
        trial.stop()  # right after the last report: as the trainable does when Tune ends the trial
    took = time.monotonic() - t0
    assert saved.read_text() == "final model\n"
    assert trial.process.proc.returncode == 0  # it exited by itself, not by a signal
    assert took < 3.5, took  # it waited for the script, not for the whole grace period
    assert _wait_dead([int(p) for p in pids.read_text().split()], timeout=0.5) == []
