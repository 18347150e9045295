"""The DBNet text-detection task's declaration: its `base` schema and its spec (pydantic only;
the training code is `sweeper.tasks.dbnet.task`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sweeper.registry import Strict, TaskSpec
from sweeper.tasks.detection.spec import DetectionTrain


class DBNetModel(Strict):
    backbone: str = Field("resnet18", description="timm model name (features_only)")
    decoder: Literal["unet", "fpn"] = Field("unet", description="U-Net (receipt baseline) or FPN (DBNet paper)")
    pretrained: bool = Field(False, description="start the backbone from weights: `weights`' for it, else "
                             "timm's own (Hugging Face cache; a download unless HF_HUB_OFFLINE=1)")
    weights: str | dict[str, str] | None = Field(
        None, description="local .pth/.safetensors backbone weights: one file, {backbone: file}, or a "
        "directory of <backbone>.safetensors/.pth")
    channels: int = Field(64, ge=8, description="decoder width (channels): inner_channels and out_channels "
                          "unless they are set")
    inner_channels: int | None = Field(None, ge=8, description="decoder width inside, channels: U-Net laterals "
                                       "and fusions, FPN levels (the receipt baseline: 256); default `channels`")
    out_channels: int | None = Field(None, ge=8, description="decoder output width, channels: what the DB head "
                                     "reads (the receipt baseline: 64); default `channels`")
    k: float = Field(50.0, gt=0, description="differentiable-binarization steepness")
    init_from: str | None = Field(
        None, description="start the whole model from a file: a state dict (.pth/.pt/.safetensors), a "
        "trial_state.pt, or SWEEP_NAME:best; tensors of another shape stay as built")


class DBNetTrain(DetectionTrain):
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    warmup_epochs: float = Field(0.5, ge=0, description="linear warmup length, epochs")
    resolution: int = Field(640, ge=32, description="longest side in px; images padded to a square")
    hflip: float = Field(0.0, ge=0, le=1, description="probability of a horizontal flip (text reads badly mirrored)")
    resolution_schedule: None = Field(None, description="detection only")


class DBNetLabels(Strict):
    shrink_ratio: float = Field(0.4, gt=0, lt=1, description="r in D = A(1 - r^2)/L")
    thresh_min: float = Field(0.3, ge=0, le=1, description="threshold map far from the border")
    thresh_max: float = Field(0.7, ge=0, le=1, description="threshold map on the border")
    min_text_size: int = Field(8, ge=1, description="px; shorter text is excluded from the loss")


class DBNetLoss(Strict):
    prob: float = Field(5.0, ge=0, description="weight of balanced BCE on the probability map")
    thresh: float = Field(10.0, ge=0, description="weight of masked L1 on the threshold map")
    binary: float = Field(1.0, ge=0, description="weight of dice on the approximate binary map")
    ohem_ratio: float = Field(3.0, gt=0, description="hard negatives kept per positive pixel")


class DBNetPost(Strict):
    thresh: float = Field(0.3, gt=0, lt=1, description="binarise the probability map at this value")
    box_thresh: float = Field(0.4, ge=0, le=1, description="drop boxes whose mean probability is lower")
    unclip_ratio: float = Field(1.5, gt=0, description="expand shrunk boxes by D' = A * ratio / L")
    max_candidates: int = Field(500, ge=1, description="contours considered per image")
    min_size: int = Field(3, ge=1, description="px; shorter boxes are dropped")
    mode: Literal["box", "polygon"] = Field("box", description="quads (minAreaRect) or polygons")


class DBNetEval(Strict):
    metric: Literal["icdar15", "cleval", "cleval_per_image"] = Field("icdar15", description="Hmean protocol")


class DBNetBase(Strict):
    model: DBNetModel = DBNetModel()
    train: DBNetTrain = DBNetTrain()
    labels: DBNetLabels = DBNetLabels()
    loss: DBNetLoss = DBNetLoss()
    post: DBNetPost = DBNetPost()
    eval: DBNetEval = DBNetEval()


def evaluate_files(gt: Path, pred: Path, options: dict[str, Any]) -> dict[str, float]:
    """`sweeper eval` for text: predictions (ICDAR-2015 folder/zip or UFO JSON) against ground
    truth, scored with `metric` (icdar15, cleval or cleval_per_image)."""
    from sweeper.tasks.dbnet.hmean import icdar15_hmean, load_text_eval_pairs

    metric = options.get("metric") or "icdar15"
    fns = {"icdar15": icdar15_hmean}
    if metric in ("cleval", "cleval_per_image"):
        from sweeper.tasks.dbnet import cleval

        fns = {"cleval": cleval.cleval, "cleval_per_image": cleval.cleval_per_image}
    if metric not in fns:
        raise ValueError(f"--metric: unknown metric {metric!r}; known: icdar15, cleval, cleval_per_image")
    result = fns[metric](load_text_eval_pairs(gt, pred))
    return {k: float(result[k]) for k in ("precision", "recall", "hmean")}


SPEC = TaskSpec(
    name="dbnet",
    base=DBNetBase,
    entry="sweeper.tasks.dbnet.task:DBNetTask",
    description="DBNet text detection (receipts, documents) with ICDAR-2015 / CLEval Hmean",
    data_formats=("ufo", "icdar2015"),
    metrics=("hmean", "precision", "recall", "train/loss", "model/params_m", "train/images_per_s",
             "gpu/peak_mem_gib"),  # the first is a trial config's default objective
    eval_grid_keys=("post.thresh", "post.box_thresh", "post.unclip_ratio", "post.max_candidates", "post.min_size"),
    leaderboard_columns=("hmean", "precision", "recall", "train/loss"),
    evaluator="sweeper.tasks.dbnet.spec:evaluate_files",
    eval_options={"metric": "icdar15, cleval or cleval_per_image"},
    synthesize="sweeper.tasks.dbnet.synth:make_synthetic_receipts",
    backbone_keys=("model.backbone",),
    path_keys=("model.weights",),
    checkpoint_keys=("model.init_from",),
    check_data="sweeper.tasks.dbnet.text_io:check_text_split",
)
