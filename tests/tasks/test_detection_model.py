"""Detection models: every arch x backbone builds and runs; config knobs reach the detector."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from sweeper.tasks.detection.model import ARCHS, build_model, check_backbone, get_postprocess, set_postprocess

BACKBONES = ["resnet18", "mobilenetv3_small_100"]
RES = 96


def _cfg(arch: str, backbone: str = "resnet18", **extra) -> dict:
    return {"arch": arch, "backbone": backbone, "pretrained": False, "weights": None, "fpn_channels": 32,
            "anchor_sizes": None, "box_batch_size_per_image": 64, **extra}


def _batch() -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, RES, RES, generator=g) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 5.0, 90.0, 30.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # negatives-only image
    ]
    return images, targets


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_build_train_and_eval_forward(arch: str, backbone: str) -> None:
    torch.manual_seed(0)
    model = build_model(_cfg(arch, backbone), num_classes=3, resolution=RES, post={"score_thresh": 0.0})
    # inputs arrive resized and padded: the detector's transform must not resize again
    assert model.transform.min_size == (RES,) and model.transform.max_size == RES
    mean = timm.create_model(backbone, pretrained=False, features_only=True).pretrained_cfg["mean"]
    assert model.transform.image_mean == list(mean)
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    assert losses and all(math.isfinite(float(v.detach())) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        preds = model(images)
    assert len(preds) == 2
    for p in preds:
        assert p["boxes"].ndim == 2 and p["boxes"].shape[1] == 4
        assert len(p["boxes"]) == len(p["scores"]) == len(p["labels"]) > 0
        assert float(p["boxes"].min()) >= 0 and float(p["boxes"].max()) <= RES


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_post_settings_reach_the_detector(arch: str) -> None:
    post = {"score_thresh": 0.3, "nms_iou": 0.4, "max_dets": 7}
    model = build_model(_cfg(arch, "mobilenetv3_small_100"), num_classes=2, resolution=64, post=post)
    assert get_postprocess(model) == post
    set_postprocess(model, score_thresh=0.01, max_dets=50)
    assert get_postprocess(model) == {"score_thresh": 0.01, "nms_iou": 0.4, "max_dets": 50}
    if arch == "faster_rcnn":
        assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 64
        assert model.rpn._post_nms_top_n["testing"] == 300
        assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2", "3"]


@pytest.mark.parametrize("arch, strides", [("faster_rcnn", [4, 8, 16, 32, 64]), ("retinanet", [8, 16, 32, 64, 128])])
def test_anchor_sizes_default_and_override(arch: str, strides: list[int]) -> None:
    model = build_model(_cfg(arch, "mobilenetv3_small_100"), num_classes=2, resolution=64)
    assert model.backbone.strides == strides
    gen = model.rpn.anchor_generator if arch == "faster_rcnn" else model.anchor_generator
    assert gen.sizes == tuple((4 * s,) for s in strides)
    assert gen.num_anchors_per_location() == [3] * len(strides)
    custom = [10, 20, 40, 80, 160]
    model = build_model(_cfg(arch, "mobilenetv3_small_100", anchor_sizes=custom), num_classes=2, resolution=64)
    gen = model.rpn.anchor_generator if arch == "faster_rcnn" else model.anchor_generator
    assert gen.sizes == tuple((s,) for s in custom)
    with pytest.raises(ValueError, match=r"model\.anchor_sizes: need one size per FPN level \(5 levels"):
        build_model(_cfg(arch, "mobilenetv3_small_100", anchor_sizes=[8, 16]), num_classes=2, resolution=64)


def test_check_backbone_suggests_close_matches() -> None:
    check_backbone("resnet18")
    check_backbone("resnet18.a1_in1k")  # pretrained tags are valid timm names
    with pytest.raises(ValueError, match=r"model\.backbone: unknown timm model 'resnet81'; did you mean: .*resnet18"):
        check_backbone("resnet81")
    with pytest.raises(ValueError, match="mobilenetv3_small_100"):
        build_model(_cfg("retinanet", "mobilenetv3_smal_100"), num_classes=2, resolution=64)


def test_unknown_arch_and_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model\.arch: unknown detector 'retina_net'.*did you mean 'retinanet'"):
        build_model(_cfg("retina_net"), num_classes=2, resolution=64)
    with pytest.raises(ValueError, match=r"model\.pretrained: True needs model\.weights"):
        build_model(_cfg("retinanet", pretrained=True), num_classes=2, resolution=64)
    missing = tmp_path / "nope.pth"
    with pytest.raises(ValueError, match=r"model\.weights: backbone weights file not found: .*nope\.pth"):
        build_model(_cfg("retinanet", pretrained=True, weights=str(missing)), num_classes=2, resolution=64)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_backbone_weights_are_loaded(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(1234)
    source = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():  # non-default BN statistics, so loading them is observable
        source.layer4[1].bn2.running_mean.uniform_(-1, 1)
    sd = source.state_dict()
    path = tmp_path / f"r18{suffix}"
    if suffix == ".pth":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    torch.manual_seed(0)  # a different init: only loading can make the weights equal
    model = build_model(_cfg("faster_rcnn", pretrained=True, weights=str(path)), num_classes=2, resolution=64)
    body = model.backbone.body
    torch.testing.assert_close(body.conv1.weight, sd["conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(body.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"], rtol=0, atol=0)
    # loaded backbones keep their BN statistics (frozen, as torchvision does for pretrained ones)
    assert isinstance(body.layer4[1].bn2, FrozenBatchNorm2d)
    torch.testing.assert_close(body.layer4[1].bn2.running_mean, sd["layer4.1.bn2.running_mean"], rtol=0, atol=0)
    scratch = build_model(_cfg("faster_rcnn"), num_classes=2, resolution=64)
    assert not torch.equal(scratch.backbone.body.conv1.weight, sd["conv1.weight"])
    assert isinstance(scratch.backbone.body.layer4[1].bn2, torch.nn.BatchNorm2d)
