"""Detection models: torchvision Faster R-CNN / RetinaNet / FCOS on any timm backbone plus an FPN, and
torchvision's own ResNet-50 FPN detectors.

Contract
--------
``build_model(model_cfg, num_classes, resolution, post=None, loss_cfg=None)`` returns a torchvision
detector (``model.arch`` in :data:`ARCHS`) whose ``num_classes`` includes background (labels ``1..K``).

* Backbone: ``timm.create_model(model.backbone, features_only=True, out_indices=N)`` keeps the
  last N feature levels (4 for Faster R-CNN: strides 4..32 plus a max-pooled stride-64 level;
  3 for RetinaNet and FCOS: strides 8..32 plus P6/P7 convolutions, as in their papers). Built by
  :func:`~sweeper.tasks.feature_maps.build_body` for the trial's resolution: transformer backbones
  (Swin, ViT) take any input size (``resolution_schedule``, ``eval.resolution``), and NHWC feature
  maps (Swin's) are read as NCHW.
* ``tv_faster_rcnn_v2``, ``tv_retinanet_v2``, ``tv_fcos`` (:data:`TV_ARCHS`) are torchvision's
  ``fasterrcnn_resnet50_fpn_v2``, ``retinanet_resnet50_fpn_v2`` and ``fcos_resnet50_fpn`` as
  torchvision builds them (its ResNet-50, FPN, anchors, heads), with ``weights=None,
  weights_backbone=None`` (never a download) and our classes, resolution, ``post`` settings, IoU
  knobs and Faster R-CNN's ``box_batch_size_per_image``: the COCO weights torchvision publishes
  load into them with ``model.init_from`` (:func:`init_detector`) and fine-tune on a team's classes.
* Assignment (``model.*``, torchvision's defaults): Faster R-CNN's RPN ``rpn_fg_iou``/``rpn_bg_iou``
  (0.7/0.3) and RoI heads ``roi_fg_iou``/``roi_bg_iou`` (0.5/0.5); RetinaNet's matcher
  ``anchor_fg_iou``/``anchor_bg_iou`` (0.5/0.4). FCOS has no IoU matcher: a location is positive when
  it lies in a box, within ``center_sampling_radius`` (1.5) x its anchor size (the stride) of the
  box centre, and in the level's size range.
* Neck (``model.neck``, :data:`NECKS`), ``model.fpn_channels`` wide: ``fpn`` is torchvision's
  ``FeaturePyramidNetwork`` (top-down); ``pafpn`` adds PANet's bottom-up path after it
  (``N_2 = P_2; N_{i+1} = conv3x3(P_{i+1} + conv3x3_stride2(N_i))``, no activations, as mmdet's
  PAFPN), then the same extra levels as ``fpn``.
* Anchors: one size per FPN level, ``model.anchor_sizes`` or 4 x the level's stride, with
  aspect ratios 0.5/1/2. FCOS has one square "anchor" per location whose size is the stride by
  default (it sets FCOS's centre-sampling radius, 1.5x, and each level's regression range, 4-8x).
* Losses are torchvision's, from the size-weighted heads of :mod:`.losses`: training targets
  that carry ``weights`` (one per box) weight each matched anchor/proposal's box terms;
  ``loss_cfg["size_weight_cls"]`` (the trial config's ``loss`` section) weights the
  classification terms of positives too. Without ``weights`` the losses are torchvision's own.
* The detector's own transform does not resize: inputs are already resized and padded to
  ``resolution x resolution`` by the data pipeline (min_size = max_size = resolution), and it
  normalises with the backbone's pretrained mean/std. :func:`set_resolution` changes that size on
  a built model (``train.resolution_schedule``, ``eval.resolution``).
* ``post`` (``score_thresh``, ``nms_iou``, ``max_dets``) sets the detector's postprocessing;
  :func:`set_postprocess` changes it on a built model (the task's eval grid uses it) and
  :func:`get_postprocess` reads it back, for every arch.
* Backbone weights (``model.weights``, ``model.pretrained``: :mod:`sweeper.tasks.weights`) are
  loaded through timm. Loaded backbones get frozen BatchNorm statistics
  (torchvision does the same for pretrained backbones: batch-4 statistics would wreck them).
  A file that cannot be read (truncated, not a checkpoint) or that does not fill the backbone
  (timm loads backbone weights non-strictly, so another model's state dict would silently leave
  it random) raises ValueError naming the file and a few of the missing/unexpected keys.
  Building, loading and checking the backbone is :func:`.backbones.create_timm_body`, which DBNet
  uses too (the BatchNorm freezing stays in :func:`build_model`).
* ``model.init_from`` (a state dict or trial checkpoint, :mod:`sweeper.tasks.init_from`) fills the
  whole built detector: :func:`init_detector`, which the task calls. A backbone it fills gets
  frozen BatchNorm statistics too, as one filled by ``model.weights``.

Usage::

    model = build_model({"arch": "fcos", "neck": "pafpn", "backbone": "resnet18", "fpn_channels": 64},
                        num_classes=3, resolution=256, post={"score_thresh": 0.05},
                        loss_cfg={"size_weight_cls": False})
    losses = model(images, targets)        # train mode: dict of losses (targets may carry "weights")
    set_resolution(model, 320)             # now takes 320 x 320 inputs as they are
    model.eval(); preds = model(images)    # list of {"boxes", "scores", "labels"}
    tv = build_model({"arch": "tv_fcos"}, num_classes=3, resolution=512)   # torchvision's FCOS, random
    init_detector(tv, "fcos_coco.pth")     # {"loaded": 370, "reinitialised": [<the class head>], ...}
"""
from __future__ import annotations

import difflib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import (FCOS, FasterRCNN, RetinaNet, fasterrcnn_resnet50_fpn_v2,
                                          fcos_resnet50_fpn, retinanet_resnet50_fpn_v2)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from sweeper.tasks.feature_maps import build_body, nchw
from sweeper.tasks.init_from import load_init
from sweeper.tasks.weights import loads_weights
from sweeper.tasks.detection.losses import (WeightedFCOSHead, WeightedRetinaNetHead, WeightedRoIHeads,
                                            WeightedRPN, fcos_norm_groups, set_size_weight_cls)

#: aspect ratios (h/w) of the anchors at every location.
ASPECT_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)
#: RPN proposals kept per image at test time: torchvision's 1000 makes CPU eval ~3x slower.
RPN_POST_NMS_TOP_N_TEST = 300


class PathAggregationFPN(nn.Module):
    """torchvision's FPN followed by PANet's bottom-up path aggregation, then the extra levels.

    ``N_first = P_first; N_{i+1} = fuse_i(P_{i+1} + down_i(N_i))`` with 3x3 convolutions (``down``
    stride 2), no activations (as the FPN's own convolutions and mmdet's PAFPN): the short path
    from the high-resolution levels up to the coarse ones is what PANet adds for localisation.
    Same input and output as ``FeaturePyramidNetwork``: an OrderedDict of levels.
    """

    def __init__(self, in_channels_list: list[int], out_channels: int, extra_blocks: ExtraFPNBlock | None) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels)
        steps = len(in_channels_list) - 1
        self.down = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) for _ in range(steps))
        self.fuse = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(steps))
        for conv in [*self.down, *self.fuse]:  # initialised as torchvision's FPN convolutions
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.constant_(conv.bias, 0)
        self.extra_blocks = extra_blocks

    def forward(self, x: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        names, inputs = list(x.keys()), list(x.values())
        p = list(self.fpn(x).values())
        n = [p[0]]
        for p_next, down, fuse in zip(p[1:], self.down, self.fuse):
            d = down(n[-1])
            if d.shape[-2:] != p_next.shape[-2:]:  # odd sizes: a stride-2 conv rounds up, backbones may not
                d = F.interpolate(d, size=p_next.shape[-2:], mode="nearest")
            n.append(fuse(p_next + d))
        if self.extra_blocks is not None:
            n, names = self.extra_blocks(n, inputs, names)
        return OrderedDict(zip(names, n))


#: model.neck -> module(in_channels_list, out_channels, extra_blocks) over the backbone's levels
NECKS: dict[str, Callable[..., nn.Module]] = {
    "fpn": lambda channels, width, extra: FeaturePyramidNetwork(channels, width, extra_blocks=extra),
    "pafpn": PathAggregationFPN,
}


class TimmFPNBackbone(nn.Module):
    """timm feature extractor + a feature pyramid (:data:`NECKS`), returning an OrderedDict of maps.

    torchvision detectors need ``out_channels`` and a dict of levels; ``strides`` gives each
    returned level's stride so anchors can be sized per level.
    """

    def __init__(self, body: nn.Module, fpn_channels: int, extra: ExtraFPNBlock, num_extra: int,
                 neck: str = "fpn") -> None:
        super().__init__()
        if neck not in NECKS:
            close = difflib.get_close_matches(str(neck), NECKS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"model.neck: unknown neck {neck!r}; known: {', '.join(NECKS)}{hint}")
        self.body = body
        channels = body.feature_info.channels()
        reductions = body.feature_info.reduction()
        self.fpn = NECKS[neck](channels, fpn_channels, extra)
        self.out_channels = fpn_channels
        self.level_names = [str(i) for i in range(len(channels))]
        self.strides = [*reductions, *(reductions[-1] * 2 ** (i + 1) for i in range(num_extra))]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = nchw(self.body, self.body(x))
        return self.fpn(OrderedDict(zip(self.level_names, feats)))


def _create_body(model_cfg: Mapping[str, Any], num_levels: int, resolution: int) -> tuple[nn.Module, bool]:
    """The last ``num_levels`` feature levels, and whether weights were loaded (their BN is frozen)."""
    return build_body(model_cfg, resolution, out_indices=num_levels), loads_weights(model_cfg)


def _anchors(model_cfg: Mapping[str, Any], strides: list[int], scale: int = 4,
             ratios: tuple[float, ...] = ASPECT_RATIOS) -> AnchorGenerator:
    sizes = model_cfg.get("anchor_sizes")
    if sizes is None:
        sizes = [scale * s for s in strides]
    if len(sizes) != len(strides):
        raise ValueError(
            f"model.anchor_sizes: need one size per FPN level ({len(strides)} levels, "
            f"strides {strides}), got {list(sizes)}"
        )
    return AnchorGenerator(tuple((int(s),) for s in sizes), (ratios,) * len(sizes))


def _backbone(body: nn.Module, model_cfg: Mapping[str, Any], extra: ExtraFPNBlock, num_extra: int) -> TimmFPNBackbone:
    return TimmFPNBackbone(body, _channels(model_cfg), extra, num_extra, neck=model_cfg.get("neck") or "fpn")


def _channels(model_cfg: Mapping[str, Any]) -> int:
    return int(model_cfg.get("fpn_channels", 256))


def _renamed(values: Mapping[str, Any], names: Mapping[str, str], prefix: str = "") -> dict[str, Any]:
    """The config's ``values`` under torchvision's ``names`` (None and absent keys: torchvision's default)."""
    return {prefix + dst: values[src] for src, dst in names.items() if values.get(src) is not None}


def _post_kwargs(post: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return _renamed(post, {"score_thresh": "score_thresh", "nms_iou": "nms_thresh", "max_dets": "detections_per_img"},
                    prefix)


def _two_stage_kwargs(model_cfg: Mapping[str, Any], post: Mapping[str, Any]) -> dict[str, Any]:
    """Faster R-CNN's sampling, assignment and postprocessing settings from the config."""
    return {"box_batch_size_per_image": int(model_cfg.get("box_batch_size_per_image") or 512),
            **_renamed(model_cfg, {"rpn_fg_iou": "rpn_fg_iou_thresh", "rpn_bg_iou": "rpn_bg_iou_thresh",
                                   "roi_fg_iou": "box_fg_iou_thresh", "roi_bg_iou": "box_bg_iou_thresh"}),
            **_post_kwargs(post, "box_")}


def _retinanet_kwargs(model_cfg: Mapping[str, Any], post: Mapping[str, Any]) -> dict[str, Any]:
    """RetinaNet's matcher and postprocessing settings from the config."""
    return {**_renamed(model_cfg, {"anchor_fg_iou": "fg_iou_thresh", "anchor_bg_iou": "bg_iou_thresh"}),
            **_post_kwargs(post, "")}


def _fcos_kwargs(model_cfg: Mapping[str, Any], post: Mapping[str, Any]) -> dict[str, Any]:
    """FCOS's centre sampling (its analogue of an IoU threshold) and postprocessing from the config."""
    return {**_renamed(model_cfg, {"center_sampling_radius": "center_sampling_radius"}), **_post_kwargs(post, "")}


def _transform_kwargs(body: nn.Module, resolution: int) -> dict[str, Any]:
    """The detector's own transform: no second resize (inputs are already resolution x
    resolution), normalisation with the backbone's mean/std."""
    return {"min_size": resolution, "max_size": resolution,
            "image_mean": list(body.pretrained_cfg["mean"]), "image_std": list(body.pretrained_cfg["std"])}


def _faster_rcnn(
    model_cfg: Mapping[str, Any], num_classes: int, resolution: int, post: Mapping[str, Any]
) -> tuple[nn.Module, bool]:
    body, loaded = _create_body(model_cfg, num_levels=4, resolution=resolution)
    backbone = _backbone(body, model_cfg, LastLevelMaxPool(), num_extra=1)
    model = FasterRCNN(
        backbone,
        num_classes=num_classes,
        **_transform_kwargs(body, resolution),
        rpn_anchor_generator=_anchors(model_cfg, backbone.strides),
        rpn_post_nms_top_n_test=RPN_POST_NMS_TOP_N_TEST,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=backbone.level_names, output_size=7, sampling_ratio=2),
        **_two_stage_kwargs(model_cfg, post),
    )
    return _weighted_two_stage(model), loaded


def _weighted_two_stage(model: FasterRCNN) -> FasterRCNN:
    """FasterRCNN builds its RPN and RoI heads inside __init__ from ~20 settings and takes no
    modules for them; the weighted subclasses add only loss code (no parameters, no __init__),
    so re-typing the built modules keeps every one of those settings."""
    model.rpn.__class__ = WeightedRPN
    model.roi_heads.__class__ = WeightedRoIHeads
    return model


def _retinanet(
    model_cfg: Mapping[str, Any], num_classes: int, resolution: int, post: Mapping[str, Any]
) -> tuple[nn.Module, bool]:
    body, loaded = _create_body(model_cfg, num_levels=3, resolution=resolution)
    ch = _channels(model_cfg)
    backbone = _backbone(body, model_cfg, LastLevelP6P7(ch, ch), num_extra=2)
    anchors = _anchors(model_cfg, backbone.strides)
    return RetinaNet(
        backbone,
        num_classes=num_classes,
        **_transform_kwargs(body, resolution),
        anchor_generator=anchors,
        head=WeightedRetinaNetHead(ch, anchors.num_anchors_per_location()[0], num_classes),
        **_retinanet_kwargs(model_cfg, post),
    ), loaded


def _fcos(
    model_cfg: Mapping[str, Any], num_classes: int, resolution: int, post: Mapping[str, Any]
) -> tuple[nn.Module, bool]:
    body, loaded = _create_body(model_cfg, num_levels=3, resolution=resolution)
    ch = _channels(model_cfg)
    backbone = _backbone(body, model_cfg, LastLevelP6P7(ch, ch), num_extra=2)
    return FCOS(
        backbone,
        num_classes=num_classes,
        **_transform_kwargs(body, resolution),
        anchor_generator=_anchors(model_cfg, backbone.strides, scale=1, ratios=(1.0,)),
        head=WeightedFCOSHead(ch, 1, num_classes, norm_groups=fcos_norm_groups(ch)),
        **_fcos_kwargs(model_cfg, post),
    ), loaded


def _tv(builder: Callable[..., nn.Module], num_classes: int, resolution: int, **kwargs: Any) -> nn.Module:
    """A torchvision detector as torchvision builds it, random and never downloading, taking
    ``resolution`` px inputs as they are (torchvision's ImageNet mean/std, as its weights expect)."""
    return builder(weights=None, weights_backbone=None, num_classes=num_classes, min_size=resolution,
                   max_size=resolution, **kwargs)


def _tv_faster_rcnn_v2(
    model_cfg: Mapping[str, Any], num_classes: int, resolution: int, post: Mapping[str, Any]
) -> tuple[nn.Module, bool]:
    model = _tv(fasterrcnn_resnet50_fpn_v2, num_classes, resolution, **_two_stage_kwargs(model_cfg, post))
    return _weighted_two_stage(model), False


def _tv_retinanet_v2(
    model_cfg: Mapping[str, Any], num_classes: int, resolution: int, post: Mapping[str, Any]
) -> tuple[nn.Module, bool]:
    model = _tv(retinanet_resnet50_fpn_v2, num_classes, resolution, **_retinanet_kwargs(model_cfg, post))
    model.head.__class__ = WeightedRetinaNetHead  # loss code only (see _weighted_two_stage)
    return model, False


def _tv_fcos(
    model_cfg: Mapping[str, Any], num_classes: int, resolution: int, post: Mapping[str, Any]
) -> tuple[nn.Module, bool]:
    model = _tv(fcos_resnet50_fpn, num_classes, resolution, **_fcos_kwargs(model_cfg, post))
    model.head.__class__ = WeightedFCOSHead  # loss code only: its __init__ (narrow GroupNorms) is not run
    return model, False


#: torchvision's own detectors: model.backbone, neck, fpn_channels and anchors are theirs (resnet50, fpn, 256)
TV_ARCHS: dict[str, Callable[..., tuple[nn.Module, bool]]] = {
    "tv_faster_rcnn_v2": _tv_faster_rcnn_v2,
    "tv_retinanet_v2": _tv_retinanet_v2,
    "tv_fcos": _tv_fcos,
}

#: the built-in detectors, on any timm backbone and neck
TIMM_ARCHS: dict[str, Callable[..., tuple[nn.Module, bool]]] = {
    "faster_rcnn": _faster_rcnn,
    "retinanet": _retinanet,
    "fcos": _fcos,
}

#: model.arch -> builder(model_cfg, num_classes, resolution, post) -> (detector, weights_loaded)
ARCHS: dict[str, Callable[..., tuple[nn.Module, bool]]] = {**TIMM_ARCHS, **TV_ARCHS}


def build_model(
    model_cfg: Mapping[str, Any],
    num_classes: int,
    resolution: int,
    post: Mapping[str, Any] | None = None,
    loss_cfg: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build the detector described by ``model_cfg`` (the trial config's ``model`` section).

    ``num_classes`` counts background; ``resolution`` is the square input size the data
    pipeline produces; ``post`` is the trial config's ``post`` section (optional); ``loss_cfg`` its
    ``loss`` section (optional: only ``size_weight_cls`` is read here, the weights come per target).
    """
    arch = model_cfg.get("arch", "faster_rcnn")
    if arch not in ARCHS:
        close = difflib.get_close_matches(str(arch), ARCHS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"model.arch: unknown detector {arch!r}; known: {', '.join(ARCHS)}{hint}")
    model, loaded = ARCHS[arch](model_cfg, num_classes, int(resolution), post or {})
    if loaded:
        timm.layers.freeze_batch_norm_2d(model.backbone.body)
    set_size_weight_cls(model, bool((loss_cfg or {}).get("size_weight_cls", False)))
    return model


def init_detector(model: nn.Module, path: str) -> dict[str, Any]:
    """Fill a built detector from ``model.init_from`` (see :mod:`sweeper.tasks.init_from`) and
    return what was loaded, for the task's ``runtime``. A backbone body it fills gets frozen
    BatchNorm statistics, as one filled by ``model.weights`` (batch-4 statistics would wreck them)."""
    report = load_init(model, path)
    body = {f"backbone.body.{k}" for k in model.backbone.body.state_dict()}
    frozen = bool(body & set(report.loaded))
    if frozen:
        timm.layers.freeze_batch_norm_2d(model.backbone.body)
    return {**report.summary(), "frozen_batch_norm": frozen}


def set_resolution(model: nn.Module, resolution: int) -> None:
    """Make a built detector take ``resolution x resolution`` inputs as they are (no resize).

    The data pipeline resizes and pads; the detector's transform would otherwise resize a new
    size back to the one it was built for (``train.resolution_schedule``, ``eval.resolution``).
    """
    if int(resolution) < 1:
        raise ValueError(f"resolution must be a positive number of px, got {resolution}")
    model.transform.min_size = (int(resolution),)
    model.transform.max_size = int(resolution)


def set_postprocess(
    model: nn.Module,
    *,
    score_thresh: float | None = None,
    nms_iou: float | None = None,
    max_dets: int | None = None,
) -> None:
    """Change a built detector's postprocessing in place (values left None are kept)."""
    target = model.roi_heads if hasattr(model, "roi_heads") else model
    for name, value in (("score_thresh", score_thresh), ("nms_thresh", nms_iou), ("detections_per_img", max_dets)):
        if value is not None:
            setattr(target, name, value)


def get_postprocess(model: nn.Module) -> dict[str, Any]:
    """The detector's current ``post`` settings, under the config's names."""
    target = model.roi_heads if hasattr(model, "roi_heads") else model
    return {"score_thresh": target.score_thresh, "nms_iou": target.nms_thresh, "max_dets": target.detections_per_img}
