"""The pure pieces of the benchmarks: the successive-halving replay on known curves (on ASHA's
rungs, `sweeper.scheduler.asha_rungs`, checked against Ray in tests/test_scheduler.py), the rank
correlation (numbers checked by hand or against scipy), and bench/common.py: the sweep documents
the benchmarks launch and the plain loops they time."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import asha  # noqa: E402  (bench/ is a folder of scripts, not a package)
import common  # noqa: E402


def test_sha_replay_keeps_the_best_third_at_each_rung() -> None:
    # 9 trials, 6 epochs, rungs at 1 and 3: 9 x 1 + 3 x 2 + 1 x 3 = 18 trial-epochs
    curves = [{e: (i + 1) * e / 100 for e in range(1, 7)} for i in range(9)]
    out = asha.sha_replay(curves, max_t=6, grace=1, rf=3)
    assert out["rungs"] == [1, 3] and out["trial_epochs"] == 18 and out["fraction_of_fifo"] == round(18 / 54, 3)
    assert out["best_final"] == curves[8][6]
    # a late bloomer (worst at epoch 1, best at the end) is lost: what ASHA risks
    curves[0] = {1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0, 5: 1.0, 6: 1.0}
    assert asha.sha_replay(curves, max_t=6, grace=1, rf=3)["best_final"] == curves[8][6] < 1.0


def test_spearman() -> None:
    assert asha.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert asha.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert asha.spearman([1, 1, 1], [1, 2, 3]) is None


def test_demo_sweep_loads_as_the_grid_it_says(tmp_path: Path) -> None:
    from sweeper.tasks.detection.synth import make_synthetic_coco

    data = tmp_path / "data"
    make_synthetic_coco(data, images=2, size=32, seed=0)  # real: the driver reads it before dispatch
    doc = common.demo_sweep("bench-x", data, lrs=[1e-3, 3e-3], epochs=3, resolution=64, concurrent=2,
                            scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 3}, cpu=2,
                            model={"arch": "retinanet", "backbone": "resnet18", "fpn_channels": 16},
                            train={"batch_size": 2, "optimizer": "sgd"})
    assert doc["data"] == {"format": "coco", "train": str(data / "train.json"), "val": str(data / "val.json"),
                           "images": str(data / "images")}
    assert doc["resources"] == {"cpu": 2, "gpu": 0} and doc["budget"] == {"num_samples": 1, "max_concurrent": 2}
    path = common.write_sweep(doc, tmp_path / "sub" / "x.yaml")
    assert yaml.safe_load(path.read_text()) == doc and common.sweep_text(path.read_text()) == path.read_text()
    configs = common.trial_configs(path, [{"train.lr": 1e-3}, {"train.lr": 3e-3}])
    assert [c["train"]["lr"] for c in configs] == [1e-3, 3e-3]
    for cfg in configs:  # the demo's train block, then the benchmark's settings, then `train` on top
        assert cfg["train"]["warmup_epochs"] == 0.5 and cfg["train"]["seed"] == 0
        assert (cfg["train"]["epochs"], cfg["train"]["resolution"], cfg["train"]["batch_size"]) == (3, 64, 2)
        assert cfg["train"]["optimizer"] == "sgd" and cfg["model"]["arch"] == "retinanet"
        assert {"score_thresh": 0.05, "max_dets": 100}.items() <= cfg["post"].items()  # the demo's post settings
        assert cfg["objective"] == {"metric": "map50", "mode": "max"}
    plain = common.demo_sweep("bench-y", data, lrs=None, epochs=1, resolution=64, concurrent=1)
    assert plain["search"] == {} and plain["scheduler"] == {"name": "fifo"}
    assert plain["base"]["model"]["arch"] == "faster_rcnn" and plain["base"]["train"]["optimizer"] == "adamw"


def test_dbnet_config_is_a_valid_trial_config() -> None:
    from sweeper.config import as_trial_config

    data = {"train": "r/train.json", "val": "r/val.json", "images": "r/images"}
    cfg = common.dbnet_config(data, epochs=2, resolution=128, warmup_epochs=0, workers=0)
    trial = as_trial_config(cfg, "dbnet")
    assert (trial.train.epochs, trial.train.batch_size, trial.train.resolution, trial.train.workers) == (2, 4, 128, 0)
    assert (trial.model.backbone, trial.model.decoder, trial.model.channels) == ("resnet18", "unet", 64)
    assert trial.data.format == "ufo" and trial.data.val == "r/val.json" and trial.objective.metric == "hmean"


def test_plain_trials_run_the_task_code_epoch_by_epoch_in_order() -> None:
    configs = [{"task": "noop", "x": x, "y": 0.7, "train": {"epochs": 2, "sleep_s": 0}} for x in (0.3, 0.5, 0.0)]
    results = common.run_plain_trials(configs, 2, threads=1, evaluate=True)
    for cfg, result in zip(configs, results):
        distance = (cfg["x"] - 0.3) ** 2
        assert result["train"] == {"train/loss": pytest.approx(distance / 2)}  # the last epoch's: epoch 2
        assert result["eval"] == {"score": pytest.approx(1 - distance), "cost": pytest.approx(cfg["x"] + cfg["y"])}
        assert result["wall_s"] >= 0
    one = common.plain_trial(configs[1], epochs=1)
    assert one["train"] == {"train/loss": pytest.approx(0.04)} and one["eval"] == {}
