"""The detection task's declaration: its `base` schema (every key, default and unit) and its spec.

Imports pydantic only, so `validate` and `--dry-run` never load torch; the training code is
`sweeper.tasks.detection.task`, imported by a trial.
"""
from __future__ import annotations

import re
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sweeper.registry import Strict, TaskSpec, TrainBase


#: torchvision's own ResNet-50 FPN detectors (sweeper.tasks.detection.model.TV_ARCHS) and what is theirs
TV_ARCHS = ("tv_faster_rcnn_v2", "tv_retinanet_v2", "tv_fcos")
TV_FIXED: dict[str, Any] = {"backbone": "resnet50", "neck": "fpn", "fpn_channels": 256, "anchor_sizes": None,
                            "pretrained": False, "weights": None}
#: (background, foreground) IoU keys: 0 < bg <= fg < 1 (IoUs in between are ignored by the matcher)
IOU_PAIRS = (("rpn_bg_iou", "rpn_fg_iou"), ("roi_bg_iou", "roi_fg_iou"), ("anchor_bg_iou", "anchor_fg_iou"))


def _iou(default: float, what: str) -> Any:
    return Field(default, gt=0, lt=1, description=f"IoU (0-1) {what}; torchvision's default {default}")


class DetectionModel(Strict):
    arch: Literal["faster_rcnn", "retinanet", "fcos", "tv_faster_rcnn_v2", "tv_retinanet_v2", "tv_fcos"] = Field(
        "faster_rcnn", description="torchvision detector on the timm backbone: two-stage faster_rcnn, one-stage "
        "retinanet or fcos; or torchvision's own ResNet-50 FPN detectors as torchvision builds them "
        "(fasterrcnn_resnet50_fpn_v2, retinanet_resnet50_fpn_v2, fcos_resnet50_fpn; backbone resnet50, neck "
        "fpn, 256 channels, their anchors), for COCO weights through init_from")
    neck: Literal["fpn", "pafpn"] = Field("fpn", description="feature pyramid: fpn (top-down) or pafpn "
                                          "(FPN plus a bottom-up path aggregation path)")
    backbone: str = Field("resnet18", description="timm model name (features_only)")
    pretrained: bool = Field(False, description="start the backbone from weights: `weights`' for it, else "
                             "timm's own (Hugging Face cache; a download unless HF_HUB_OFFLINE=1)")
    weights: str | dict[str, str] | None = Field(
        None, description="local .pth/.safetensors backbone weights: one file, {backbone: file}, or a "
        "directory of <backbone>.safetensors/.pth")
    fpn_channels: int = Field(256, ge=8, description="FPN width (channels)")
    anchor_sizes: list[int] | None = Field(None, description="px per FPN level; default 4 x stride")
    box_batch_size_per_image: int = Field(128, ge=1, description="Faster R-CNN ROIs sampled per image")
    rpn_fg_iou: float = _iou(0.7, "from which an anchor is an RPN foreground sample (Faster R-CNN)")
    rpn_bg_iou: float = _iou(0.3, "below which an anchor is an RPN background sample (Faster R-CNN)")
    roi_fg_iou: float = _iou(0.5, "from which a proposal is a foreground RoI sample (Faster R-CNN)")
    roi_bg_iou: float = _iou(0.5, "below which a proposal is a background RoI sample (Faster R-CNN)")
    anchor_fg_iou: float = _iou(0.5, "from which an anchor is foreground (RetinaNet's matcher)")
    anchor_bg_iou: float = _iou(0.4, "below which an anchor is background (RetinaNet's matcher)")
    center_sampling_radius: float = Field(
        1.5, gt=0, description="FCOS, which has no IoU matcher: a location inside a box is a positive when "
        "within this many strides of its centre; torchvision's default 1.5")
    init_from: str | None = Field(
        None, description="start the whole model from a file: a state dict (.pth/.pt/.safetensors, e.g. "
        "torchvision's COCO detector), a trial_state.pt, or SWEEP_NAME:best; tensors of another shape (the "
        "class head) stay as built")

    @model_validator(mode="before")
    @classmethod
    def _tv_backbone(cls, data: Any) -> Any:
        """torchvision's detectors are ResNet-50s: an unset backbone says so, so that the logged
        config is the model that ran."""
        if isinstance(data, Mapping) and data.get("arch") in TV_ARCHS and "backbone" not in data:
            return {**data, "backbone": TV_FIXED["backbone"]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> DetectionModel:
        for bg, fg in IOU_PAIRS:
            if getattr(self, bg) > getattr(self, fg):
                raise ValueError(f"model.{bg} ({getattr(self, bg)}) must be <= model.{fg} ({getattr(self, fg)})")
        if self.arch in TV_ARCHS:
            for key, value in TV_FIXED.items():
                if getattr(self, key) != value:
                    hint = " (start it from weights with model.init_from)" if key in ("pretrained", "weights") else ""
                    raise ValueError(f"model.{key}: {self.arch} is torchvision's ResNet-50 FPN detector as "
                                     f"torchvision builds it: model.{key} must be {value!r}{hint}")
        return self


class DetectionTrain(TrainBase):
    epochs: int = Field(12, ge=1, description="epochs per trial (ASHA's time unit)")
    batch_size: int = Field(4, ge=1, description="images per step")
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0, description="peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (AdamW: beta1)")
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = Field("cosine", description="per-iteration LR schedule after warmup")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warmup length, epochs")
    lr_steps: list[float] = Field([0.67, 0.89], description="step schedule milestones, fractions of epochs")
    lr_gamma: float = Field(0.1, gt=0, description="step schedule factor")
    resolution: int = Field(512, ge=32, description="longest side in px; images padded to a square")
    resolution_schedule: list[tuple[float, int]] | None = Field(
        None, description="[[epoch_fraction, resolution], ...]: from that fraction of the epochs on, train at "
        "that resolution (e.g. [[0, 1024], [0.8, 2048]]); before the first entry, `resolution`")
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    grad_clip: float | None = Field(None, gt=0, description="max gradient norm")
    amp: bool = Field(True, description="mixed precision + channels_last, on CUDA only")
    max_train_images: int | None = Field(None, ge=1, description="use only the first N training images")

    @field_validator("resolution_schedule")
    @classmethod
    def _schedule(cls, v: list[tuple[float, int]] | None) -> list[tuple[float, int]] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("a non-empty list of [epoch_fraction, resolution], or null")
        fractions = [f for f, _ in v]
        if any(not 0 <= f < 1 for f in fractions) or fractions != sorted(set(fractions)):
            raise ValueError("epoch fractions must increase, each in [0, 1)")
        if any(r < 32 for _, r in v):
            raise ValueError("resolutions must be at least 32 px")
        return v


class DetectionPost(Strict):
    score_thresh: float = Field(0.05, ge=0, le=1, description="drop detections below this score")
    nms_iou: float = Field(0.5, gt=0, le=1, description="NMS IoU threshold")
    max_dets: int = Field(100, ge=1, description="detections kept per image")


class DetectionAugment(Strict):
    mosaic_ratio: float = Field(0.0, ge=0, le=1, description="probability that a training sample is a mosaic "
                                "of 4 images on a 2x2 canvas (random centre)")
    mosaic_until: float = Field(1.0, ge=0, le=1, description="fraction of the epochs with mosaic; 0.8 = none in "
                                "the last 20%")
    mosaic_min_size: float = Field(2.0, ge=0, description="px at the training resolution: a box clipped by "
                                   "the mosaic (or a scale-jitter crop) with a shorter side is dropped")
    mosaic_min_visibility: float = Field(0.25, ge=0, le=1, description="a box clipped by the mosaic (or a "
                                         "scale-jitter crop) keeping less than this fraction of its area is dropped")
    scale_jitter: float = Field(0.0, ge=0, lt=1, description="random rescale by a factor in [1-j, 1+j] (0 = off)")
    brightness: float = Field(0.0, ge=0, le=1, description="colour jitter: brightness factor in [1-b, 1+b]")
    contrast: float = Field(0.0, ge=0, le=1, description="colour jitter: contrast factor in [1-c, 1+c]")
    saturation: float = Field(0.0, ge=0, le=1, description="colour jitter: saturation factor in [1-s, 1+s]")
    hue: float = Field(0.0, ge=0, le=0.5, description="colour jitter: hue shift in [-h, h]")
    vflip: float = Field(0.0, ge=0, le=1, description="probability of a vertical flip")


class SizeWeights(Strict):
    small: float = Field(1.0, ge=0, description="weight of boxes with sqrt(area) < size_thresholds[0]")
    medium: float = Field(1.0, ge=0, description="weight of boxes between the thresholds")
    large: float = Field(1.0, ge=0, description="weight of boxes with sqrt(area) >= size_thresholds[1]")


class DetectionLoss(Strict):
    size_weights: SizeWeights = Field(SizeWeights(), description="box-regression weight per matched ground "
                                      "truth by its size bucket")
    size_thresholds: tuple[float, float] = Field(
        (32.0, 96.0), description="px, sqrt of the box area in ORIGINAL image coordinates; small < t0 <= "
        "medium < t1 <= large (exactly 32 px is medium, as COCO's area < 32^2 for small)")
    size_weight_cls: bool = Field(False, description="weight the classification terms of matched "
                                  "anchors/proposals too")

    @field_validator("size_thresholds")
    @classmethod
    def _increasing(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] < v[1]:
            raise ValueError("two increasing positive sizes, e.g. [32, 96]")
        return v


class DetectionEval(Strict):
    resolution: int | None = Field(None, ge=32, description="evaluation resolution (longest side); "
                                   "default train.resolution")
    backend: Literal["faster_coco_eval", "pycocotools"] = Field(
        "faster_coco_eval", description="COCO evaluator (same numbers; faster_coco_eval is ~10x faster; "
        "pycocotools is used if it is not installed)")
    area_ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="extra size ranges in sqrt-area px, e.g. {tiny: [0, 16]}, reported "
        "as map_<name> and ar_<name>")
    confusion_iou: float = Field(0.5, gt=0, le=1, description="IoU for the confusion matrix")
    confusion_score: float = Field(0.3, ge=0, le=1, description="score threshold for the confusion matrix")

    @field_validator("area_ranges")
    @classmethod
    def _ranges(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (lo, hi) in v.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"{name!r}: use lower-case letters, digits and '_' (it names metrics)")
            if name in ("small", "medium", "large", "all"):
                raise ValueError(f"{name!r} is COCO's own range; pick another name")
            if not 0 <= lo < hi:
                raise ValueError(f"{name}: need 0 <= low < high, got [{lo}, {hi}]")
        return v


class DetectionBase(Strict):
    model: DetectionModel = DetectionModel()
    train: DetectionTrain = DetectionTrain()
    augment: DetectionAugment = DetectionAugment()
    loss: DetectionLoss = DetectionLoss()
    post: DetectionPost = DetectionPost()
    eval: DetectionEval = DetectionEval()


def evaluate_files(gt: Path, pred: Path, options: dict[str, Any]) -> dict[str, float]:
    """`sweeper eval` for detection: a COCO results file against COCO ground truth, with
    `backend` and `area_range` (["tiny=0,16", ...], sqrt-area px) from the command line."""
    from sweeper.tasks.detection.coco_eval import evaluate_coco, load_coco_gt, load_detections

    ranges = {}
    for text in options.get("area_range") or []:
        name, _, bounds = text.partition("=")
        try:
            lo, hi = (float(v) for v in bounds.split(","))
        except ValueError:
            raise ValueError(f"--area-range: expected NAME=LO,HI (e.g. tiny=0,16), got {text!r}") from None
        ranges[name.strip()] = (lo, hi)
    return evaluate_coco(load_coco_gt(gt), load_detections(pred), area_ranges=ranges or None,
                         backend=options.get("backend") or "faster_coco_eval")


SPEC = TaskSpec(
    name="detection",
    base=DetectionBase,
    entry="sweeper.tasks.detection.task:DetectionTask",
    description="COCO object detection (torchvision Faster R-CNN / RetinaNet / FCOS on timm backbones)",
    data_formats=("coco",),
    metrics=("map", "map50", "map75", "map_small", "map_medium", "map_large",
             "ar_1", "ar_10", "ar_100", "ar_small", "ar_medium", "ar_large", "train/loss",
             "model/params_m", "train/images_per_s", "gpu/peak_mem_gib"),  # the last on GPUs only
    # ap/<class>, and map_<name> / ar_<name> of eval.area_ranges
    metric_prefixes=("ap/", "map_", "ar_"),
    eval_grid_keys=("post.score_thresh", "post.max_dets", "post.nms_iou"),
    leaderboard_columns=("map", "map50", "map_small", "train/loss"),
    detail_prefixes=("ap/", "ar_", "train/"),
    evaluator="sweeper.tasks.detection.spec:evaluate_files",
    eval_options={"backend": "faster_coco_eval or pycocotools (same numbers)",
                  "area_range": "NAME=LO,HI in sqrt-area px, reported as map_NAME / ar_NAME"},
    synthesize="sweeper.tasks.detection.synth:make_synthetic_coco",
    backbone_keys=("model.backbone",),
    path_keys=("model.weights",),
    checkpoint_keys=("model.init_from",),
    check_data="sweeper.tasks.detection.coco_io:check_coco_split",
    check_objective="sweeper.tasks.detection.objective:check_metric",
)
