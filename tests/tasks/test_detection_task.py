"""DetectionTask end to end on a tiny hand-drawn COCO set: train, evaluate, fail, checkpoint."""
from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from sweeper.tasks import NonFiniteLossError
from sweeper.tasks.detection.coco_eval import STAT_NAMES
from sweeper.tasks.detection.task import DetectionTask
from sweeper.tasks.training import loader_settings, lr_factor_fn

CATEGORIES = [{"id": 4, "name": "red"}, {"id": 9, "name": "blue"}]
COLOURS = {4: (230, 30, 30), 9: (30, 30, 230)}


def make_dataset(root: Path, n_train: int = 4, n_val: int = 2) -> dict[str, str]:
    """Images of 64..96 px with 1-2 coloured rectangles; the category is the colour."""
    rng = random.Random(0)
    (root / "images").mkdir(parents=True)
    splits = {"train": [], "val": []}
    anns = {"train": [], "val": []}
    for i in range(n_train + n_val):
        split = "train" if i < n_train else "val"
        w, h = rng.randint(64, 96), rng.randint(64, 96)
        im = Image.new("RGB", (w, h), (200, 200, 190))
        draw = ImageDraw.Draw(im)
        for j in range(1 + i % 2):
            cat = CATEGORIES[(i + j) % 2]["id"]
            bw, bh = rng.randint(14, 30), rng.randint(14, 30)
            x, y = rng.randint(0, w - bw - 1), rng.randint(0, h - bh - 1)
            draw.rectangle([x, y, x + bw - 1, y + bh - 1], fill=COLOURS[cat])
            anns[split].append({"id": len(anns[split]) + 1, "image_id": i + 1, "category_id": cat,
                                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
        im.save(root / "images" / f"{i}.png")
        splits[split].append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
    paths = {}
    for split in splits:
        paths[split] = str(root / f"{split}.json")
        Path(paths[split]).write_text(json.dumps(
            {"images": splits[split], "annotations": anns[split], "categories": CATEGORIES}))
    return {"format": "coco", **paths, "images": str(root / "images")}


def make_config(data: dict, arch: str = "retinanet", **train) -> dict:
    return {
        "task": "detection",
        "data": data,
        "model": {"arch": arch, "backbone": "mobilenetv3_small_100", "pretrained": False, "weights": None,
                  "fpn_channels": 32, "anchor_sizes": None, "box_batch_size_per_image": 64},
        "train": {"epochs": 3, "batch_size": 2, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9,
                  "weight_decay": 1e-4, "schedule": "cosine", "warmup_epochs": 0.5, "lr_steps": [0.67, 0.89],
                  "lr_gamma": 0.1, "resolution": 64, "hflip": 0.5, "seed": 0, "workers": 0,
                  "grad_clip": None, "amp": True, "max_train_images": None, **train},
        "post": {"score_thresh": 0.05, "nms_iou": 0.5, "max_dets": 100},
        "eval_grid": {},
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_dataset(tmp_path_factory.mktemp("coco"))


METRIC_KEYS = {*STAT_NAMES, "ap/red", "ap/blue"}


@pytest.mark.parametrize("arch", ["faster_rcnn", "retinanet"])
def test_one_epoch_train_and_evaluate(data: dict, arch: str) -> None:
    task = DetectionTask(make_config(data, arch=arch, grad_clip=10.0), device="cpu")
    train = task.train_one_epoch(1)
    assert {"train/loss", "train/lr", "train/images_per_s"} <= set(train)
    assert math.isfinite(train["train/loss"]) and train["train/lr"] > 0 and train["train/images_per_s"] > 0
    metrics = task.evaluate()
    assert set(metrics) == METRIC_KEYS
    assert all(-1.0 <= v <= 1.0 for v in metrics.values())


def test_eval_grid_scores_each_point_from_one_forward_pass(data: dict) -> None:
    config = make_config(data, arch="faster_rcnn")
    config["eval_grid"] = {"post.score_thresh": [0.2, 0.0, 0.5], "post.max_dets": [1, 100]}
    task = DetectionTask(config)
    task.train_one_epoch(1)
    calls = []
    forward = task.model.forward
    task.model.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    metrics = task.evaluate()
    assert len(calls) == len(task.val_loader)  # one pass over the val set, not one per grid point
    assert set(metrics) == METRIC_KEYS | {"best/post.score_thresh", "best/post.max_dets", "default/map"}
    assert metrics["best/post.score_thresh"] in (0.2, 0.0, 0.5) and metrics["best/post.max_dets"] in (1, 100)
    # the chosen point's numbers equal a plain evaluation at that point, and beat the default
    plain = copy.deepcopy(config)
    plain["eval_grid"] = {}
    plain["post"].update(score_thresh=metrics["best/post.score_thresh"], max_dets=int(metrics["best/post.max_dets"]))
    direct = DetectionTask(plain)
    direct.model.load_state_dict(task.model.state_dict())
    assert direct.evaluate() == {k: v for k, v in metrics.items() if k in METRIC_KEYS}
    direct_default = DetectionTask({**config, "eval_grid": {}})
    direct_default.model.load_state_dict(task.model.state_dict())
    assert metrics["default/map"] == direct_default.evaluate()["map"] <= metrics["map"]
    with pytest.raises(ValueError, match=r"eval_grid\.post\.nms_thresh: only"):
        DetectionTask({**config, "eval_grid": {"post.nms_thresh": [0.5]}})


@pytest.mark.parametrize("arch", ["faster_rcnn", "retinanet"])
def test_nms_iou_grid_equals_a_forward_pass_at_each_iou(data: dict, arch: str) -> None:
    """NMS re-applied to one un-suppressed pass gives exactly what the detector returns at that IoU."""
    config = make_config(data, arch=arch)
    config["post"]["score_thresh"] = 0.0
    config["eval_grid"] = {"post.nms_iou": [0.3, 0.5, 0.7]}
    task = DetectionTask(config)
    task.train_one_epoch(1)
    preds = task.predict()
    assert "model_boxes" in preds[0]  # the pass ran without NMS
    for iou in (0.3, 0.5, 0.7):
        plain = copy.deepcopy(config)
        plain["eval_grid"], plain["post"]["nms_iou"] = {}, iou
        direct = DetectionTask(plain)
        direct.model.load_state_dict(task.model.state_dict())
        expected = direct._coco_results(direct.predict(), 0.0, 100)
        got = task._coco_results(preds, 0.0, 100, iou)
        assert len(got) == len(expected) > 0
        for a, b in zip(got, expected):
            assert a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]
            assert a["score"] == pytest.approx(b["score"], abs=1e-6)
            assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3)
    metrics = task.evaluate()
    assert metrics["best/post.nms_iou"] in (0.3, 0.5, 0.7)


def test_small_object_knobs_reach_training_and_evaluation(data: dict, tmp_path: Path) -> None:
    """Mosaic, size weights, a resolution schedule, an eval resolution, custom area ranges and the
    confusion matrix, through the task as a trial runs it."""
    config = make_config(data, arch="fcos", epochs=2, resolution_schedule=[[0.5, 96]])
    config["model"]["neck"] = "pafpn"
    config["augment"] = {"mosaic_ratio": 1.0, "mosaic_until": 0.5}
    config["loss"] = {"size_weights": {"small": 3.0, "medium": 1.5, "large": 1.0}, "size_thresholds": [16, 24],
                      "size_weight_cls": True}
    config["eval"] = {"resolution": 80, "area_ranges": {"tiny": [0, 16]}, "backend": "pycocotools",
                      "confusion_iou": 0.5, "confusion_score": 0.0}
    config["artifacts_dir"] = str(tmp_path / "artifacts")
    task = DetectionTask(config)
    seen = []
    forward = task.model.forward

    def spy(images, targets=None):
        if targets is not None:
            seen.append((images[0].shape[-1], task.train_ds.mosaic_on, "weights" in targets[0]))
        return forward(images, targets)

    task.model.forward = spy
    task.train_one_epoch(1)
    task.train_one_epoch(2)
    assert {s[:2] for s in seen} == {(64, True), (96, False)}  # epoch 1: 64 px + mosaic; epoch 2: 96 px, none
    assert all(s[2] for s in seen)  # size weights reached the detector
    metrics = task.evaluate()
    assert task.model.transform.min_size == (80,)
    assert {"map_tiny", "ar_tiny", "map_small"} <= set(metrics)
    saved = json.loads((tmp_path / "artifacts" / "confusion_matrix.json").read_text())
    assert saved["names"] == ["red", "blue", "background"] and saved["iou"] == 0.5
    n_gt = sum(1 for a in json.loads(Path(data["val"]).read_text())["annotations"])
    assert sum(sum(row) for row in saved["matrix"][:2]) == n_gt  # every GT box is in a row
    assert (tmp_path / "artifacts" / "confusion_matrix.png").stat().st_size > 1000


def test_non_finite_loss_raises_with_epoch_and_step(data: dict) -> None:
    task = DetectionTask(make_config(data, lr=1e10, warmup_epochs=0.0))
    with pytest.raises(NonFiniteLossError, match=r"epoch \d+, step \d+/2"):
        for epoch in (1, 2, 3):
            task.train_one_epoch(epoch)

    task = DetectionTask(make_config(data))
    task.model.forward = lambda images, targets: {"classification": torch.tensor(float("nan"), requires_grad=True)}
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1/2: non-finite training loss nan"):
        task.train_one_epoch(1)

    # exploded weights can break the forward pass before any loss exists
    def broken(images, targets):
        raise RuntimeError("matcher failed")

    task.model.forward = broken
    with pytest.raises(RuntimeError, match="matcher failed") as info:  # finite weights: a real bug
        task.train_one_epoch(1)
    assert not isinstance(info.value, NonFiniteLossError)
    with torch.no_grad():
        next(task.model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1/2: model weights are NaN/inf"):
        task.train_one_epoch(2)


def test_state_dict_round_trip_continues_identically(data: dict) -> None:
    config = make_config(data, arch="faster_rcnn")
    task = DetectionTask(config)
    task.train_one_epoch(1)
    state = task.state_dict()
    second = task.train_one_epoch(2)

    torch.manual_seed(999)  # disturb every RNG: the restore must bring them back
    random.seed(999)
    fresh = DetectionTask(config)
    fresh.load_state_dict(state)
    resumed = fresh.train_one_epoch(2)
    assert resumed["train/loss"] == second["train/loss"]
    assert resumed["train/lr"] == second["train/lr"]
    for (name, a), b in zip(task.model.state_dict().items(), fresh.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_lr_schedules_per_iteration() -> None:
    cos = lr_factor_fn("cosine", total_iters=10, warmup_iters=2, milestones=[], gamma=0.1)
    assert cos(0) == pytest.approx(0.001) and cos(1) == pytest.approx(0.5005)
    assert cos(2) == 1.0 and cos(6) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0)
    step = lr_factor_fn("step", total_iters=10, warmup_iters=0, milestones=[0.5, 0.8], gamma=0.1)
    assert [round(step(i), 6) for i in (0, 4, 5, 7, 8, 9)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    assert lr_factor_fn("constant", 10, 0, [], 0.1)(7) == 1.0
    with pytest.raises(ValueError, match="train.schedule"):
        lr_factor_fn("linear", 10, 0, [], 0.1)


def test_the_seed_controls_every_random_choice(data: dict) -> None:
    """Same seed: identical weights init, data order and flips, so identical losses and weights;
    another seed: different. What an ablation's seeds rely on."""
    def run(seed: int) -> tuple[float, torch.Tensor]:
        task = DetectionTask(make_config(data, seed=seed, hflip=0.5), device="cpu")
        loss = task.train_one_epoch(1)["train/loss"]
        return loss, next(iter(task.model.parameters())).detach().clone()

    (a, wa), (b, wb), (c, wc) = run(0), run(0), run(1)
    assert a == b and torch.equal(wa, wb)
    assert a != c and not torch.equal(wa, wc)


def test_micro_batches_keep_the_optimizer_steps_and_the_injected_oom_hook(data: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from sweeper.tasks.training import INJECT_OOM_ENV, micro_batches

    assert micro_batches(5, 2) == [slice(0, 2), slice(2, 5)]
    assert micro_batches(3, 8) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    whole = DetectionTask(make_config(data, batch_size=2), device="cpu")
    split = DetectionTask(make_config(data, batch_size=2, micro_batches=2), device="cpu")
    whole.train_one_epoch(1)
    b = split.train_one_epoch(1)
    assert math.isfinite(b["train/loss"])
    assert whole.opt.scheduler.last_epoch == split.opt.scheduler.last_epoch  # one LR/optimizer step per batch
    monkeypatch.setenv(INJECT_OOM_ENV, "1")
    with pytest.raises(torch.OutOfMemoryError, match="injected"):
        whole.train_one_epoch(2)
    split.train_one_epoch(2)  # micro-batches of 1 image pass the hook


@pytest.mark.parametrize("workers, device, cpus, expected", [
    ("auto", "cpu", 8, {"num_workers": 0, "pin_memory": False}),   # a CPU trial's cores train
    (None, "cpu", 2, {"num_workers": 0, "pin_memory": False}),
    ("auto", "cuda", 8, {"num_workers": 4, "pin_memory": True}),   # capped at 4
    ("auto", "cuda:1", 3, {"num_workers": 2, "pin_memory": True}),  # one core left for the trial itself
    ("auto", "cuda", 1, {"num_workers": 0, "pin_memory": True}),
    ("auto", "cuda", 0.5, {"num_workers": 0, "pin_memory": True}),
    (3, "cpu", 1, {"num_workers": 3, "pin_memory": False}),        # an explicit number is kept
    (6, "cuda", 2, {"num_workers": 6, "pin_memory": True}),
])
def test_loader_settings_follow_the_trial_resources(workers: object, device: str, cpus: float, expected: dict) -> None:
    assert loader_settings(workers, device=device, cpus=cpus) == expected


def test_loader_settings_without_resources_use_this_process_cores() -> None:
    import os

    cores = len(os.sched_getaffinity(0))
    assert loader_settings("auto", device="cuda")["num_workers"] == max(0, min(4, cores - 1))


def test_the_task_builds_its_loaders_from_train_workers(data: dict) -> None:
    task = DetectionTask(make_config(data, workers="auto"), device="cpu")
    assert (task.train_loader.num_workers, task.train_loader.pin_memory) == (0, False)
    task = DetectionTask(make_config(data, workers=1), device="cpu")
    assert task.train_loader.num_workers == task.val_loader.num_workers == 1
    assert task.train_one_epoch(1)["train/loss"] > 0  # a worker process really feeds the epoch


def test_the_task_says_what_it_resolved_for_itself(data: dict) -> None:
    """`runtime` is logged with the trial's config: on CPU, AMP is off whatever train.amp says."""
    task = DetectionTask(make_config(data, amp=True), device="cpu")
    assert task.runtime == {"device": "cpu", "amp": False, "channels_last": False}
