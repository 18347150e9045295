"""Detection models: every arch x neck x backbone builds and runs; config knobs reach the detector;
torchvision's own detectors build and train as torchvision builds them."""
from __future__ import annotations

import math
import re
import typing
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
from pydantic import ValidationError
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.ops.misc import FrozenBatchNorm2d

from sweeper.tasks.detection import spec
from sweeper.tasks.detection.losses import (WeightedFCOSHead, WeightedRetinaNetHead, WeightedRoIHeads,
                                            WeightedRPN, fcos_norm_groups)
from sweeper.tasks.detection.model import (ARCHS, NECKS, TIMM_ARCHS, TV_ARCHS, PathAggregationFPN, build_model,
                                           get_postprocess, set_postprocess, set_resolution)
from sweeper.tasks.detection.spec import DetectionModel

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
@pytest.mark.parametrize("arch", sorted(TIMM_ARCHS))
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


def _tv_cfg(arch: str, **extra) -> dict:
    return DetectionModel(arch=arch, **extra).model_dump()


def _any_cfg(arch: str, **extra) -> dict:
    return _tv_cfg(arch, **extra) if arch in TV_ARCHS else _cfg(arch, "mobilenetv3_small_100", **extra)


def test_arch_names_are_the_schemas() -> None:
    assert set(typing.get_args(DetectionModel.model_fields["arch"].annotation)) == set(ARCHS)
    assert set(spec.TV_ARCHS) == set(TV_ARCHS) and not set(TV_ARCHS) & set(TIMM_ARCHS)


@pytest.mark.parametrize("arch, cls, sampler", [
    ("tv_faster_rcnn_v2", FasterRCNN, "roi_heads"), ("tv_retinanet_v2", RetinaNet, "head"), ("tv_fcos", FCOS, "head")])
def test_torchvision_detectors_build_and_train_as_torchvision_builds_them(arch: str, cls: type, sampler: str) -> None:
    """torchvision's ResNet-50 FPN detectors, random (weights=None: nothing downloaded), with our
    classes, resolution and post settings, training one step with size-weighted targets."""
    post = {"score_thresh": 0.0, "nms_iou": 0.45, "max_dets": 9}
    torch.manual_seed(0)
    model = build_model(_tv_cfg(arch, box_batch_size_per_image=16), num_classes=3, resolution=RES, post=post)
    assert type(model) is cls and get_postprocess(model) == post
    assert model.transform.min_size == (RES,) and model.transform.max_size == RES
    body = model.backbone.body
    assert [type(m).__name__ for m in (body.conv1, body.layer4[2].conv3)] == ["Conv2d", "Conv2d"]
    assert body.layer4[2].conv3.out_channels == 2048 and model.backbone.out_channels == 256  # ResNet-50, FPN 256
    assert isinstance(getattr(model, sampler), (WeightedRoIHeads, WeightedRetinaNetHead, WeightedFCOSHead))
    if arch == "tv_faster_rcnn_v2":
        assert isinstance(model.rpn, WeightedRPN) and model.roi_heads.box_predictor.cls_score.out_features == 3
        assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 16  # ours, not torchvision's 512
    else:
        assert model.head.classification_head.num_classes == 3
    images, targets = _batch()
    targets = [{**t, "weights": torch.full((len(t["labels"]),), 2.0)} for t in targets]
    model.train()
    losses = model(images, targets)
    assert losses and all(math.isfinite(float(v.detach())) for v in losses.values())
    sum(losses.values()).backward()
    assert body.conv1.weight.grad is not None  # all layers train (torchvision's choice without weights)
    model.eval()
    with torch.no_grad():
        preds = model(images)
    assert len(preds) == 2 and all(len(p["boxes"]) <= 9 for p in preds)


def test_torchvision_archs_take_only_their_own_backbone_and_neck() -> None:
    assert DetectionModel(arch="tv_fcos").backbone == "resnet50"  # what runs is what is logged
    assert DetectionModel(arch="tv_fcos", backbone="resnet50").backbone == "resnet50"
    for key, value, message in [("backbone", "resnet18", "model.backbone must be 'resnet50'"),
                                ("neck", "pafpn", "model.neck must be 'fpn'"),
                                ("fpn_channels", 128, "model.fpn_channels must be 256"),
                                ("anchor_sizes", [8, 16, 32, 64, 128], "model.anchor_sizes must be None"),
                                ("weights", "r50.pth", "model.weights must be None (start it from weights with "
                                                       "model.init_from)")]:
        with pytest.raises(ValidationError, match=re.escape(f"model.{key}: tv_retinanet_v2 is torchvision's "
                                                            f"ResNet-50 FPN detector as torchvision builds it: "
                                                            f"{message}")):
            DetectionModel(arch="tv_retinanet_v2", **{key: value})


#: (schema key, where torchvision keeps it on the built detector, torchvision's default, a tuned value)
MATCHER_KNOBS = {
    "faster_rcnn": [("rpn_fg_iou", "rpn.proposal_matcher.high_threshold", 0.7, 0.6),
                    ("rpn_bg_iou", "rpn.proposal_matcher.low_threshold", 0.3, 0.25),
                    ("roi_fg_iou", "roi_heads.proposal_matcher.high_threshold", 0.5, 0.6),
                    ("roi_bg_iou", "roi_heads.proposal_matcher.low_threshold", 0.5, 0.4)],
    "retinanet": [("anchor_fg_iou", "proposal_matcher.high_threshold", 0.5, 0.55),
                  ("anchor_bg_iou", "proposal_matcher.low_threshold", 0.4, 0.35)],
    "fcos": [("center_sampling_radius", "center_sampling_radius", 1.5, 2.5)],  # FCOS has no IoU matcher
}


def _attr(obj: object, dotted: str) -> object:
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


@pytest.mark.parametrize("arch", [*sorted(MATCHER_KNOBS), "tv_faster_rcnn_v2"])
def test_assignment_knobs_reach_the_matchers(arch: str) -> None:
    knobs = MATCHER_KNOBS[arch.removeprefix("tv_").removesuffix("_v2")]
    default = build_model(_any_cfg(arch), num_classes=2, resolution=64)
    tuned = build_model(_any_cfg(arch, **{key: value for key, _, _, value in knobs}), num_classes=2, resolution=64)
    for key, where, torchvision_default, value in knobs:
        assert DetectionModel.model_fields[key].default == torchvision_default, key
        assert _attr(default, where) == torchvision_default, key  # absent keys: torchvision's own default
        assert _attr(tuned, where) == value, key


@pytest.mark.parametrize("bg, fg", spec.IOU_PAIRS)
def test_iou_thresholds_are_validated(bg: str, fg: str) -> None:
    DetectionModel(**{bg: 0.45, fg: 0.45})  # equal: nothing ignored, allowed (the RoI heads' default)
    with pytest.raises(ValidationError, match=re.escape(f"model.{bg} (0.6) must be <= model.{fg} (0.5)")):
        DetectionModel(**{bg: 0.6, fg: 0.5})
    for key, value in [(bg, 0.0), (fg, 1.0)]:
        with pytest.raises(ValidationError, match=key):
            DetectionModel(**{key: value})


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
