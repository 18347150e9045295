"""Every timm backbone the teams name builds and trains one step in every built-in arch.

Swin's feature maps are NHWC and it is built for 224 px: both used to fail in the detectors
(`expected input[2, 7, 7, 768] to have 768 channels`, `Input height (512) doesn't match model
(224)`). Each case builds the real model (random weights: no downloads) at 64 px, the smallest
size every arch's coarsest level still fits, with a 16-channel neck, takes one SGD step on one
image and checks that the step changed both the backbone and the head (at 32 px a stride-32 map
is 1 x 1, which BatchNorm cannot train on with one image). Big models on a small CI machine: a
ResNet and a Swin run in the quick suite, the others are marked slow; memory is freed after each case.
"""
from __future__ import annotations

import gc
import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from sweeper.tasks.dbnet.loss import DBLoss
from sweeper.tasks.dbnet.model import build_dbnet
from sweeper.tasks.detection.model import TIMM_ARCHS, build_model, set_postprocess, set_resolution
from sweeper.tasks.feature_maps import build_body, size_kwargs

RES = 64
SWIN = "swin_tiny_patch4_window7_224"
#: the teams' backbones (timm names), and whether their cases are marked slow
BACKBONES = [
    ("resnet50", False),
    ("resnet101", True),
    ("resnext101_32x4d", True),
    (SWIN, False),
    ("swin_small_patch4_window7_224", True),
    ("swin_base_patch4_window7_224", True),
    ("swin_large_patch4_window7_224", True),
    ("hrnet_w44", True),
    ("efficientnet_b3", True),
    ("cspdarknet53", True),
    ("vgg16", True),
]
ARCHS = [*sorted(TIMM_ARCHS), "dbnet"]
CASES = [pytest.param(b, a, marks=[pytest.mark.slow] if slow else [], id=f"{b}-{a}")
         for b, slow in BACKBONES for a in ARCHS]


@pytest.fixture(autouse=True)
def _free_memory() -> Iterator[None]:
    yield
    gc.collect()


def _image() -> torch.Tensor:
    return torch.rand(1, 3, RES, RES, generator=torch.Generator().manual_seed(0))


def _detection_loss(model: nn.Module) -> torch.Tensor:
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 40.0, 44.0]]), "labels": torch.tensor([1])}]
    losses = model(list(_image()), targets)
    return sum(losses.values())


def _dbnet_loss(model: nn.Module) -> torch.Tensor:
    prob = torch.zeros(1, RES, RES)
    prob[:, 20:40, 8:56] = 1.0
    ones = torch.ones(1, RES, RES)
    maps = {"prob": prob, "prob_mask": ones, "thresh": 0.3 + 0.4 * prob, "thresh_mask": ones}
    return DBLoss()(model(_image()), maps)["loss"]


def _build(backbone: str, arch: str) -> tuple[nn.Module, nn.Module]:
    """The model and its timm body."""
    torch.manual_seed(0)
    if arch == "dbnet":
        model = build_dbnet({"backbone": backbone, "decoder": "unet", "channels": 16}, RES)
        return model, model.backbone
    cfg = {"arch": arch, "backbone": backbone, "fpn_channels": 16, "box_batch_size_per_image": 16}
    model = build_model(cfg, num_classes=2, resolution=RES)
    return model, model.backbone.body


@pytest.mark.parametrize("backbone, arch", CASES)
def test_backbone_builds_and_trains_a_step(backbone: str, arch: str) -> None:
    model, body = _build(backbone, arch)
    model.train()
    loss = _dbnet_loss(model) if arch == "dbnet" else _detection_loss(model)
    assert math.isfinite(float(loss.detach()))
    first, last = next(body.parameters()), list(model.parameters())[-1]
    before = first.detach().clone(), last.detach().clone()
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(first, before[0]), "the step did not reach the backbone's first layer"
    assert not torch.equal(last, before[1]), "the step did not reach the head"


@pytest.mark.slow
def test_a_transformer_backbone_runs_at_1024_px_and_follows_resolution_changes() -> None:
    """Built for the 64 px of `train.resolution`, a Swin FCOS evaluates at 96 px and at 1024 px
    (`train.resolution_schedule`, `eval.resolution`): timm's dynamic size, no rebuild."""
    assert size_kwargs(SWIN, RES) == {"dynamic_img_size": True, "img_size": 224}
    assert size_kwargs(SWIN, 1024) == {"dynamic_img_size": True, "img_size": 1024}
    assert size_kwargs("resnet50", 1024) == {}
    model, _ = _build(SWIN, "fcos")
    model.eval()
    set_postprocess(model, score_thresh=0.0)
    with torch.no_grad():
        feats = model.backbone(torch.rand(1, 3, 96, 96))
    # NCHW at strides 8, 16, 32 (then P6, P7), 16 channels each
    assert [tuple(f.shape[1:]) for f in list(feats.values())[:3]] == [(16, 96 // s, 96 // s) for s in (8, 16, 32)]
    for res in (96, 1024):
        set_resolution(model, res)
        with torch.no_grad():
            boxes = model([torch.rand(3, res, res)])[0]["boxes"]
        assert len(boxes) and float(boxes.max()) <= res and float(boxes.max()) > 64


def test_a_fixed_size_backbone_without_a_dynamic_size_names_train_resolution() -> None:
    """timm cannot make XCiT take other sizes: another resolution fails at build, not mid-epoch."""
    with pytest.raises(ValueError, match=r"^train\.resolution: 256 px, but timm model 'xcit_nano_12_p16_224' "
                                         r"takes only 224 x 224 px inputs"):
        build_body({"backbone": "xcit_nano_12_p16_224"}, 256, out_indices=3)


@pytest.mark.slow
def test_swin_weights_for_224_px_fit_a_swin_built_for_any_resolution(tmp_path) -> None:  # noqa: ANN001
    """Built for max(resolution, 224) px, every Swin stage keeps the checkpoint's 7 x 7 window, so
    the relative-position tables keep their shapes and a 224 px checkpoint fills the body."""
    import timm

    path = tmp_path / "swin.pth"
    torch.save(timm.create_model(SWIN).state_dict(), path)
    for resolution in (RES, 1024):
        body = build_body({"backbone": SWIN, "pretrained": True, "weights": str(path)}, resolution, out_indices=3)
        with torch.no_grad():
            feats = body(torch.rand(1, 3, 96, 96))
        assert [tuple(f.shape[1:]) for f in feats] == [(12, 12, 192), (6, 6, 384), (3, 3, 768)]  # NHWC: nchw()
        del body
