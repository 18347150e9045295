"""`model.init_from`: a whole model starts from a state dict (torchvision's COCO detector, ours) or
one of our trial checkpoints; tensors of another shape (the class head) stay as built and are
listed in the task's runtime; files that cannot start the model are ValueErrors naming the key.
Every file is saved by the test: nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models.detection import fcos_resnet50_fpn
from torchvision.ops.misc import FrozenBatchNorm2d

from sweeper.tasks.dbnet.model import build_dbnet
from sweeper.tasks.dbnet.spec import DBNetBase
from sweeper.tasks.dbnet.synth import make_synthetic_receipts
from sweeper.tasks.dbnet.task import DBNetTask
from sweeper.tasks.detection.model import build_model, init_detector
from sweeper.tasks.detection.spec import DetectionModel
from sweeper.tasks.detection.synth import CATEGORIES, make_synthetic_coco
from sweeper.tasks.detection.task import DetectionTask
from sweeper.tasks.init_from import load_init

CLASS_HEAD = ["head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias"]


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def coco_fcos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """A torchvision FCOS with COCO's 91 classes, as its published weights are, with BatchNorm
    statistics no fresh model has (so loading them is observable)."""
    torch.manual_seed(91)
    model = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
    return model.state_dict()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_coco_weights_fine_tune_on_our_classes(coco_fcos: dict, suffix: str, tmp_path: Path) -> None:
    path = _save(coco_fcos, tmp_path / f"fcos_coco{suffix}")
    torch.manual_seed(0)
    model = build_model(DetectionModel(arch="tv_fcos").model_dump(), num_classes=3, resolution=64)
    built_head = {k: v.clone() for k, v in model.state_dict().items() if k in CLASS_HEAD}
    report = init_detector(model, str(path))
    assert report["reinitialised"] == CLASS_HEAD  # 91 classes in the file, 3 here
    assert report["missing"] == [] and report["unexpected"] == [] and report["file"] == str(path)
    assert report["loaded"] == len(coco_fcos) - 2
    assert report["frozen_batch_norm"] and isinstance(model.backbone.body.layer1[0].bn1, FrozenBatchNorm2d)
    state = model.state_dict()
    for key, value in coco_fcos.items():
        if key in CLASS_HEAD:
            assert torch.equal(state[key], built_head[key]), key  # kept as built
        elif not key.endswith("num_batches_tracked"):  # frozen BN keeps no step counter
            assert torch.equal(state[key], value), key
    model.train()  # and it trains
    losses = model([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]),
                                               "labels": torch.tensor([2])}])
    sum(losses.values()).backward()


def _coco(tmp_path: Path) -> dict:
    return make_synthetic_coco(tmp_path / "coco", images=4, size=64, seed=0, val_fraction=0.5)


def _task_config(data: dict, **model) -> dict:
    return {"task": "detection", "data": {"format": "coco", **{k: data[k] for k in ("train", "val", "images")}},
            "model": {"arch": "retinanet", "backbone": "mobilenetv3_small_100", "fpn_channels": 16, **model},
            "train": {"epochs": 1, "batch_size": 2, "resolution": 64, "workers": 0, "seed": 0}}


def test_a_detection_trial_starts_from_an_earlier_trials_checkpoint(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """A trial_state.pt as the trainable writes it (the task's state under `task`): every tensor
    of the model is the checkpoint's; a detector with more classes re-initialises its class head."""
    data = _coco(tmp_path)
    source = DetectionTask(_task_config(data))
    source.train_one_epoch(1)
    saved = {"task": source.state_dict(), "task_name": "detection", "source": "trial_state.pt", "epoch": 1}
    ckpt = tmp_path / "trial_state.pt"
    torch.save(saved, ckpt)

    task = DetectionTask(_task_config(data, init_from=str(ckpt)))
    report = task.runtime["init_from"]
    expected = saved["task"]["model"]
    assert report == {"file": str(ckpt), "loaded": len(expected), "reinitialised": [], "missing": [],
                      "unexpected": [], "frozen_batch_norm": True}
    state = task.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items() if not k.endswith("num_batches_tracked"))
    assert "model.init_from: " + str(ckpt) + f": loaded {len(expected)} tensors" in capsys.readouterr().out
    assert "init_from" not in source.runtime

    torch.manual_seed(0)
    wider = build_model(_task_config(data)["model"], num_classes=len(CATEGORIES) + 3, resolution=64)
    assert init_detector(wider, str(ckpt))["reinitialised"] == CLASS_HEAD


@pytest.mark.parametrize("content, message", [
    (None, "file not found: "),
    (b"not a checkpoint", "cannot read "),
    ({"epoch": 3, "task": {"model": {}}}, " holds no state dict"),
    ({"fc.weight": torch.zeros(2, 2)}, " fills none of this model's tensors (another model's weights?): its keys e.g. "
                                       "fc.weight"),
])
def test_files_that_cannot_start_the_model_are_refused(content: object, message: str, tmp_path: Path) -> None:
    path = tmp_path / "init.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    model = build_dbnet({"backbone": "resnet18", "channels": 8})
    with pytest.raises(ValueError) as info:
        load_init(model, str(path))
    assert str(info.value).startswith("model.init_from: ") and message in str(info.value), info.value


def test_a_dbnet_trial_starts_from_a_state_dict(tmp_path: Path) -> None:
    """A DBNet state dict with a wider decoder output: the tensors of the same shape load, the
    others (the decoder's last conv and the head's first) stay as built and are listed."""
    receipts = make_synthetic_receipts(tmp_path / "r", images=4, size=64, seed=0)
    torch.manual_seed(1)
    source = build_dbnet({"backbone": "resnet18", "channels": 8, "out_channels": 16}).state_dict()
    path = _save(source, tmp_path / "dbnet.safetensors")
    cfg = DBNetBase().model_dump()
    cfg["model"].update(backbone="resnet18", channels=8, init_from=str(path))
    cfg["train"].update(epochs=1, batch_size=2, resolution=64, workers=0)
    cfg.update(task="dbnet", data={"format": "ufo", "train": receipts["train"], "val": receipts["val"],
                                   "images": receipts["images"]}, eval_grid={})
    task = DBNetTask(cfg)
    report = task.runtime["init_from"]
    reinitialised = report["reinitialised"]
    assert reinitialised and all(k.startswith(("decoder.fuse.0.1.", "head.")) for k in reinitialised)
    assert report["missing"] == [] and report["unexpected"] == []
    assert report["loaded"] == len(source) - len(reinitialised)
    state = task.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in source.items() if k not in reinitialised)
    assert isinstance(task.model.backbone.bn1, torch.nn.BatchNorm2d)  # DBNet keeps BN training, as with weights
    assert task.train_one_epoch(1)["train/loss"] > 0
