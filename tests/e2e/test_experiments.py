"""The detection teams' experiments (sweeps/experiments/*.yaml), each as it is and as a tiny CPU run.

(a) every file passes `sweeper launch FILE --dry-run` from a fresh directory holding only a copy
    of the repository's sweeps/ (no data, no runs): the plan prints;
(b) every experiment runs through the real CLI, shrunk with `--set` only (synthetic data, 1 epoch,
    64-96 px, tiny widths, backbones from scratch, 1 seed, 1 CPU per trial), and its trials are in
    MLflow; the command experiments run the stand-in scripts under tests/command_scripts/ (their
    command lines as the files write them, where a stand-in has the same layout).

Each tiny run's wall time is printed (`pytest -s`) as `TINY <name>: <seconds> s`.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from .conftest import COMMAND_SCRIPTS, run_sweeper, sweeper_env, trial_runs

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((REPO / "sweeps" / "experiments").glob("*.yaml"))

#: every tiny run: CPU trials, two at a time
CPU = ["resources.cpu=1", "resources.gpu=0", "budget.max_concurrent=2"]
#: tiny detection: synthetic shapes at 64 px, 1 epoch, FPN width 16, from scratch, one seed
DETECTION = ["data.train=data/t/train.json", "data.val=data/t/val.json", "data.images=data/t/images",
             "data.synth={images: 8, size: 64, seed: 0}", "model.pretrained=false", "model.fpn_channels=16",
             "model.backbone=resnet18", "train.epochs=1", "train.resolution=64", "train.batch_size=2",
             "train.workers=0", "ablation.seeds=1", *CPU]


def sets(*keys: str) -> list[str]:
    return [w for k in keys for w in ("--set", k)]


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """A fresh launch directory with a copy of the repository's sweeps/ and nothing else."""
    shutil.copytree(REPO / "sweeps", tmp_path / "sweeps")
    return tmp_path


def tiny(cwd: Path, name: str, file: str, *keys: str, env: dict[str, str] | None = None) -> float:
    """`sweeper launch sweeps/experiments/FILE --set KEY...` from `cwd`; asserts exit 0, returns seconds."""
    start = time.monotonic()
    run_sweeper(["launch", f"sweeps/experiments/{file}", *sets(*keys)], cwd, timeout=300, env=env, check=True)
    seconds = time.monotonic() - start
    print(f"TINY {name}: {seconds:.1f} s")
    return seconds


def assert_trials(cwd: Path, name: str, variants: set[str] | None = None, n: int | None = None) -> list:
    runs = trial_runs(cwd, name)
    if variants is not None:
        assert {r.data.tags.get("sweeper.variant") for r in runs} == variants, [r.data.tags for r in runs]
    if n is not None:
        assert len(runs) == n
    for run in runs:
        assert run.data.tags["sweeper.status"] in ("finished", "stopped"), run.data.tags
    return runs


# --- (a) every file, as written ----------------------------------------------------------------

@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_dry_run_on_a_fresh_checkout(workdir: Path, path: Path) -> None:
    text = path.read_text()
    assert text.startswith("#") and "By hand" in text and "Here" in text  # the header says both
    proc = run_sweeper(["launch", f"sweeps/experiments/{path.name}", "--dry-run"], workdir, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "dry run: nothing was started" in proc.stdout
    assert f"sweep {path.stem}" in proc.stdout  # the plan names the sweep
    assert ("ablation plan" in proc.stdout) or ("trial 1:" in proc.stdout) or ("search space" in proc.stdout)
    assert not (workdir / "data").exists() and not (workdir / "mlruns.db").exists()


def test_every_experiment_has_a_tiny_run() -> None:
    tested = {"receipts", "receipts-5fold", "two-stage-backbones", "one-stage-controlled", "small-objects",
              "small-objects-finetune-2048", "small-objects-finetune-1024", "command-hydra-lightning-dbnet",
              "command-mmdet", "command-event-camera"}
    assert {p.stem for p in EXPERIMENTS} == tested


# --- (b) tiny CPU runs --------------------------------------------------------------------------

DBNET = ["data.train=data/r/train.json", "data.images=data/r/images",
         "model.backbone=resnet18", "model.pretrained=false", "model.inner_channels=16", "model.out_channels=8",
         "train.epochs=1", "train.resolution=64", "train.batch_size=2", "ablation.seeds=1",
         # recipe B, shrunk: another backbone (HRNet is too big for a test), FPN, 96 px, batch 4
         "ablation.variants.hrnet_w44_fpn.model.backbone=mobilenetv3_small_100",
         "ablation.variants.hrnet_w44_fpn.train.resolution=96",
         "ablation.variants.hrnet_w44_fpn.train.batch_size=4", *CPU]


def test_receipts_tiny(workdir: Path) -> None:
    tiny(workdir, "receipts", "receipts.yaml", *DBNET, "data.val=data/r/val.json",
         "data.synth={images: 10, size: 64, seed: 0}")
    runs = assert_trials(workdir, "receipts", {"baseline", "hrnet_w44_fpn"}, 2)
    assert all("hmean" in r.data.metrics for r in runs)


def test_receipts_5fold_tiny(workdir: Path) -> None:
    # 2 recipes x folds {0, 3} (of 5) x 1 seed: the full factorial, with one extra fold; no data.val
    # (every trial holds out a fold), so the synthetic receipts come from `sweeper data synth`
    run_sweeper(["data", "synth", "--task", "dbnet", "--out", "data/r", "--images", "12", "--size", "64"],
                workdir, check=True)
    tiny(workdir, "receipts-5fold", "receipts-5fold.yaml", *DBNET, "ablation.factors.data.fold=[3]")
    runs = assert_trials(workdir, "receipts-5fold",
                         {"baseline", "data.fold=3", "hrnet_w44_fpn", "hrnet_w44_fpn,data.fold=3"}, 4)
    assert {r.data.params.get("data.fold") for r in runs} >= {"3"}


def test_two_stage_backbones_tiny(workdir: Path) -> None:
    # one factor at a time here (the file crosses them all): baseline, a second backbone, PAFPN, 96 px
    tiny(workdir, "two-stage-backbones", "two-stage-backbones.yaml", *DETECTION,
         "ablation.factors.model.backbone=[mobilenetv3_small_100]", "ablation.factors.train.resolution=[96]",
         "ablation.full_factorial=false")
    runs = assert_trials(workdir, "two-stage-backbones", n=4)
    assert {"baseline", "model.neck=pafpn"} <= {r.data.tags["sweeper.variant"] for r in runs}
    assert all("map_small" in r.data.metrics and "map" in r.data.metrics for r in runs)


def test_one_stage_controlled_tiny(workdir: Path) -> None:
    run_sweeper(["data", "synth", "--out", "data/t", "--images", "8", "--size", "64"], workdir, check=True)
    shutil.copy(workdir / "data/t/train.json", workdir / "data/t/train+pseudo.json")  # same classes
    tiny(workdir, "one-stage-controlled", "one-stage-controlled.yaml", *DETECTION,
         "ablation.factors.model.backbone=[mobilenetv3_small_100]",
         "ablation.factors.data.train=[data/t/train+pseudo.json]")
    runs = assert_trials(workdir, "one-stage-controlled", n=5)
    assert all("map_small" in r.data.metrics for r in runs)
    assert any(r.data.params.get("data.train", "").endswith("train+pseudo.json") for r in runs)


def test_small_objects_and_both_fine_tunes_tiny(workdir: Path) -> None:
    """small-objects, then the 2048 fine-tune from its best (here 96 px from 64), then the reverse:
    the same sweep at the higher resolution under another name, and the 1024 fine-tune from it."""
    small = [*DETECTION, "model.backbone=swin_tiny_patch4_window7_224"]
    tiny(workdir, "small-objects", "small-objects.yaml", *small)
    assert_trials(workdir, "small-objects", {"baseline", "w32_96", "w16_80", "w50_150"}, 4)
    finetune = [k for k in small if not k.startswith("ablation.")] + ["budget.num_samples=2", "scheduler.grace_period=1"]
    tiny(workdir, "small-objects-finetune-2048", "small-objects-finetune-2048.yaml", *finetune, "train.resolution=96")
    runs = assert_trials(workdir, "small-objects-finetune-2048", n=2)
    for run in runs:  # small-objects:best resolved to that sweep's best trial checkpoint, and loaded
        assert "/runs/small-objects/trial_" in run.data.params["model.init_from"], run.data.params
        assert int(run.data.params["runtime.init_from.loaded"]) > 0
    tiny(workdir, "small-objects-2048 (stage 1 of the reverse)", "small-objects.yaml", *small,
         "name=small-objects-2048", "train.resolution=96")
    assert_trials(workdir, "small-objects-2048", n=4)
    tiny(workdir, "small-objects-finetune-1024", "small-objects-finetune-1024.yaml", *finetune)
    runs = assert_trials(workdir, "small-objects-finetune-1024", n=2)
    assert all("/runs/small-objects-2048/trial_" in r.data.params["model.init_from"] for r in runs)


def test_command_hydra_lightning_dbnet_tiny(workdir: Path) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("hydra")
    # the stand-in has the baseline's Hydra groups (models.optimizer.lr, trainer.*) but no presets
    tiny(workdir, "command-hydra-lightning-dbnet", "command-hydra-lightning-dbnet.yaml",
         f"command.workdir={COMMAND_SCRIPTS / 'hydra_lightning'}",
         'command.run="{python} train.py hydra.run.dir={trial_dir}/hydra {overrides}"',
         "objective.metric=val/acc", "command.epochs=2", "trainer.max_epochs=2", "trainer.batch_size=64",
         "scheduler.max_t=2", "scheduler.grace_period=1", "budget.num_samples=2", *CPU)
    runs = assert_trials(workdir, "command-hydra-lightning-dbnet", n=2)
    assert all("val/acc" in r.data.metrics for r in runs)


def python_on_path() -> dict[str, str]:
    """The files' `python` is the team's environment's: here, this interpreter."""
    return sweeper_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def mmdet_alternatives() -> dict[str, str]:
    """The other detectors' `--set command.run=... --set name=...` lines of command-mmdet.yaml's header."""
    text = (REPO / "sweeps/experiments/command-mmdet.yaml").read_text()
    return {m.group(2): m.group(1) for m in re.finditer(r'^#\s+--set command\.run="(.+)" --set name=(\S+)$', text, re.M)}


@pytest.mark.parametrize("detector", ["tood", "mmdet-cascade-rcnn", "mmdet-dcn"])
def test_command_mmdet_tiny(workdir: Path, detector: str) -> None:
    # the file's command lines as written (TOOD; Cascade R-CNN and DCN from its header), against the
    # MMDetection stand-in (tools/train.py and configs/<detector>/... under mmengine_style)
    extra, name = [], "command-mmdet"
    if detector != "tood":
        alternatives = mmdet_alternatives()
        assert set(alternatives) == {"mmdet-cascade-rcnn", "mmdet-dcn"}
        extra, name = [f'command.run="{alternatives[detector]}"', f"name={detector}"], detector
    tiny(workdir, name, "command-mmdet.yaml", f"command.workdir={COMMAND_SCRIPTS / 'mmengine_style'}", *extra,
         "command.epochs=2", "train_cfg.max_epochs=2", "train_dataloader.batch_size=64",
         "scheduler.max_t=2", "scheduler.grace_period=1", "budget.num_samples=2", *CPU, env=python_on_path())
    runs = assert_trials(workdir, name, n=2)
    assert all("coco/bbox_mAP" in r.data.metrics for r in runs)


def test_command_event_camera_tiny(workdir: Path) -> None:
    # the file's command line as written, against the RVT stand-in (event_camera/train.py), on steps
    tiny(workdir, "command-event-camera", "command-event-camera.yaml", f"command.workdir={COMMAND_SCRIPTS / 'event_camera'}",
         "training.max_steps=100", "validation.val_check_interval=25", "batch_size.train=32",
         "scheduler.max_t=100", "scheduler.grace_period=25", "budget.num_samples=2", *CPU, env=python_on_path())
    runs = assert_trials(workdir, "command-event-camera", n=2)
    for run in runs:
        assert {"val/mAP", "val/mAP_small", "val/AP/car", "val/AP/pedestrian"} <= set(run.data.metrics)
