"""Detection models: every arch x neck x backbone builds and runs; config knobs reach the detector."""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from sweeper.tasks.detection.losses import fcos_norm_groups
from sweeper.tasks.detection.model import (ARCHS, NECKS, PathAggregationFPN, build_model,
                                           get_postprocess, set_postprocess, set_resolution)

BACKBONES = ["resnet18", "mobilenetv3_small_100"]  # a ResNet and a non-ResNet (depthwise, SE, hardswish)
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
@pytest.mark.parametrize("neck", sorted(NECKS))
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_build_train_and_eval_forward(arch: str, neck: str, backbone: str) -> None:
    torch.manual_seed(0)
    model = build_model(_cfg(arch, backbone, neck=neck), num_classes=3, resolution=RES, post={"score_thresh": 0.0})
    assert isinstance(model.backbone.fpn, PathAggregationFPN) == (neck == "pafpn")
    # inputs arrive resized and padded: the detector's transform must not resize again
    assert model.transform.min_size == (RES,) and model.transform.max_size == RES
    mean = timm.create_model(backbone, pretrained=False, features_only=True).pretrained_cfg["mean"]
    assert model.transform.image_mean == list(mean)
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    assert losses and all(math.isfinite(float(v.detach())) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[-4:])  # the loss reaches the neck's last layers
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


@pytest.mark.parametrize("arch, strides, scale, ratios", [
    ("faster_rcnn", [4, 8, 16, 32, 64], 4, 3),
    ("retinanet", [8, 16, 32, 64, 128], 4, 3),
    ("fcos", [8, 16, 32, 64, 128], 1, 1),  # FCOS: one location "anchor" of the stride's size
])
def test_anchor_sizes_default_and_override(arch: str, strides: list[int], scale: int, ratios: int) -> None:
    model = build_model(_cfg(arch, "mobilenetv3_small_100"), num_classes=2, resolution=64)
    assert model.backbone.strides == strides
    gen = model.rpn.anchor_generator if arch == "faster_rcnn" else model.anchor_generator
    assert gen.sizes == tuple((scale * s,) for s in strides)
    assert gen.num_anchors_per_location() == [ratios] * len(strides)
    custom = [10, 20, 40, 80, 160]
    model = build_model(_cfg(arch, "mobilenetv3_small_100", anchor_sizes=custom), num_classes=2, resolution=64)
    gen = model.rpn.anchor_generator if arch == "faster_rcnn" else model.anchor_generator
    assert gen.sizes == tuple((s,) for s in custom)
    with pytest.raises(ValueError, match=r"model\.anchor_sizes: need one size per FPN level \(5 levels"):
        build_model(_cfg(arch, "mobilenetv3_small_100", anchor_sizes=[8, 16]), num_classes=2, resolution=64)


def test_pafpn_adds_a_bottom_up_path() -> None:
    torch.manual_seed(0)
    neck = build_model(_cfg("retinanet", neck="pafpn"), num_classes=2, resolution=64).backbone.fpn
    feats = OrderedDict((str(i), torch.randn(1, c, 32 // 2**i, 32 // 2**i)) for i, c in enumerate([128, 256, 512]))
    out, p = neck(feats), neck.fpn(feats)
    assert list(out) == ["0", "1", "2", "p6", "p7"]  # the same levels as fpn, P6/P7 on top
    assert [v.shape[-1] for v in out.values()] == [32, 16, 8, 4, 2] and {v.shape[1] for v in out.values()} == {32}
    torch.testing.assert_close(out["0"], p["0"], rtol=0, atol=0)  # N_2 = P_2
    expected = neck.fuse[0](p["1"] + neck.down[0](out["0"]))  # N_{i+1} = conv(P_{i+1} + conv_s2(N_i))
    torch.testing.assert_close(out["1"], expected)
    assert not torch.allclose(out["1"], p["1"])
    with pytest.raises(ValueError, match=r"model\.neck: unknown neck 'panet'; known: fpn, pafpn"):
        build_model(_cfg("retinanet", neck="panet"), num_classes=2, resolution=64)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_set_resolution_takes_new_inputs_as_they_are(arch: str) -> None:
    model = build_model(_cfg(arch, "mobilenetv3_small_100"), num_classes=2, resolution=64).eval()
    image = torch.rand(3, 96, 96)
    resized, _ = model.transform([image])
    assert resized.image_sizes == [(64, 64)]  # built for 64 px: a 96 px input would be shrunk
    set_resolution(model, 96)
    batch, _ = model.transform([image])
    assert batch.image_sizes == [(96, 96)]
    mean, std = torch.tensor(model.transform.image_mean), torch.tensor(model.transform.image_std)
    torch.testing.assert_close(batch.tensors[0, :, :96, :96], (image - mean[:, None, None]) / std[:, None, None])
    set_postprocess(model, score_thresh=0.0)
    with torch.no_grad():
        boxes = model([image])[0]["boxes"]
    assert len(boxes) and float(boxes.max()) <= 96 and float(boxes.max()) > 64  # in the input's coordinates
    with pytest.raises(ValueError, match="resolution must be a positive"):
        set_resolution(model, 0)


@pytest.mark.parametrize("channels, groups", [(256, 32), (64, 32), (32, 16), (24, 8), (16, 8), (9, 1)])
def test_fcos_head_fits_narrow_fpns(channels: int, groups: int) -> None:
    """torchvision's FCOS head uses GroupNorm(32, C): the builder picks groups that divide C, with
    2+ channels each (else a 1x1 level of a single evaluated image cannot be normalised)."""
    assert fcos_norm_groups(channels) == groups
    if channels == 24:
        model = build_model(_cfg("fcos", "mobilenetv3_small_100", fpn_channels=24), num_classes=2, resolution=64)
        norms = [m for m in model.head.modules() if isinstance(m, torch.nn.GroupNorm)]
        assert norms and {(m.num_groups, m.num_channels) for m in norms} == {(8, 24)}


def test_build_model_names_a_mistyped_backbone() -> None:
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
