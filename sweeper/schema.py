"""The sweep-file schema: every key, its type, default and unit, validated by pydantic.

`sweeper.config` loads files into these models (includes, `--set`, paths, cross-field checks);
this module only says what a valid file looks like. Each task registers the schema of its
`base` block, the metrics it reports and the keys its evaluation grid can sweep, so a sweep file
is checked before anything heavy starts. No torch, Ray or MLflow here.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- task parameters
class DetectionModel(Strict):
    arch: Literal["faster_rcnn", "retinanet", "fcos"] = Field(
        "faster_rcnn", description="torchvision detector: two-stage faster_rcnn, one-stage retinanet or fcos")
    neck: Literal["fpn", "pafpn"] = Field("fpn", description="feature pyramid: fpn (top-down) or pafpn "
                                          "(FPN plus a bottom-up path aggregation path)")
    backbone: str = Field("resnet18", description="timm model name (features_only)")
    pretrained: bool = Field(False, description="load backbone weights from `weights` (never downloads)")
    weights: str | None = Field(None, description="local .pth/.safetensors backbone weights")
    fpn_channels: int = Field(256, ge=8, description="FPN width (channels)")
    anchor_sizes: list[int] | None = Field(None, description="px per FPN level; default 4 x stride")
    box_batch_size_per_image: int = Field(128, ge=1, description="Faster R-CNN ROIs sampled per image")


class DetectionTrain(Strict):
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
    seed: int = Field(0, description="seeds python, numpy, torch and the data order")
    workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="DataLoader worker processes; auto: 0 on CPU (the trial's cores train), "
        "min(4, trial CPUs - 1) on a GPU (the cores feed it)")
    grad_clip: float | None = Field(None, gt=0, description="max gradient norm")
    amp: bool = Field(True, description="mixed precision + channels_last, on CUDA only")
    max_train_images: int | None = Field(None, ge=1, description="use only the first N training images")
    micro_batches: int = Field(1, ge=1, description="split each batch into this many micro-batches (gradient "
                               "accumulation): same effective batch and LR schedule, less memory; doubled "
                               "automatically after a CUDA out-of-memory error")


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


class DBNetModel(Strict):
    backbone: str = Field("resnet18", description="timm model name (features_only)")
    decoder: Literal["unet", "fpn"] = Field("unet", description="U-Net (receipt baseline) or FPN (DBNet paper)")
    pretrained: bool = Field(False, description="load backbone weights from `weights` (never downloads)")
    weights: str | None = Field(None, description="local .pth/.safetensors backbone weights")
    channels: int = Field(64, ge=8, description="decoder width")
    k: float = Field(50.0, gt=0, description="differentiable-binarization steepness")


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


class NoopTrain(Strict):
    epochs: int = Field(1, ge=1, description="epochs (reports) per trial")
    sleep_s: float = Field(0.0, ge=0, description="seconds each epoch pretends to train")
    seed: int = Field(0, description="unused: the objective is deterministic")


class NoopBase(Strict):
    x: float = Field(0.5, description="a parameter to search; the score peaks at x = 0.3")
    y: float = Field(0.5, description="a parameter to search; the score peaks at y = 0.7")
    train: NoopTrain = NoopTrain()


class CommandBase(BaseModel):
    """`base` of the command task: the script's own fixed settings, passed like searched values."""

    model_config = ConfigDict(extra="allow", frozen=True)


#: per task: the schema of `base`, the metrics it reports, the keys `eval_grid` may sweep.
TASK_BASES: dict[str, type[BaseModel]] = {"detection": DetectionBase, "dbnet": DBNetBase, "command": CommandBase,
                                          "noop": NoopBase}
TASK_DATA_FORMATS: dict[str, tuple[str, ...]] = {"detection": ("coco",), "dbnet": ("ufo", "icdar2015"), "command": (),
                                                 "noop": ()}
#: the key an ablation's seed sets, per task
TASK_SEED_KEYS: dict[str, str] = {"detection": "train.seed", "dbnet": "train.seed", "command": "seed",
                                  "noop": "train.seed"}
#: tasks whose `base` is free-form and whose metrics are whatever the script reports
OPEN_TASKS = ("command",)
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "detection": (
        "map", "map50", "map75", "map_small", "map_medium", "map_large",
        "ar_1", "ar_10", "ar_100", "ar_small", "ar_medium", "ar_large",
        "train/loss",
    ),
    "dbnet": ("precision", "recall", "hmean", "train/loss"),
    "noop": ("score", "train/loss"),
}
#: detection: ap/<class>, and map_<name> / ar_<name> of eval.area_ranges
TASK_METRIC_PREFIXES: dict[str, tuple[str, ...]] = {"detection": ("ap/", "map_", "ar_")}
TASK_EVAL_GRID_KEYS: dict[str, tuple[str, ...]] = {
    "detection": ("post.score_thresh", "post.max_dets", "post.nms_iou"),
    "dbnet": ("post.thresh", "post.box_thresh", "post.unclip_ratio", "post.max_candidates", "post.min_size"),
}


# --------------------------------------------------------------------------- sweep schema
class SynthData(Strict):
    images: int = Field(96, ge=4, description="images to generate (train + val)")
    size: int = Field(128, ge=32, description="image side, px")
    seed: int = Field(0, description="generator seed")


class DataConfig(Strict):
    format: Literal["coco", "ufo", "icdar2015"] | None = Field(
        None, description="coco (detection); ufo or icdar2015 (dbnet); default: the task's first")
    train: str = Field(description="training annotations: a COCO/UFO JSON file or an ICDAR-2015 gt folder")
    val: str = Field(description="validation annotations, like `train`")
    images: str = Field(description="directory the annotation file names are relative to")
    synth: SynthData | None = Field(None, description="generate synthetic data here if missing")


METRIC_SOURCE = re.compile(r"stdout|(csv|jsonl):.+")


class CommandConfig(Strict):
    run: str = Field(description="shell command; {overrides} is replaced by the trial's values, "
                     "{python} by this interpreter, {trial_dir} by the trial's directory")
    workdir: str = Field(".", description="directory the command runs in; absolute after load, must exist")
    overrides: Literal["hydra", "argparse", "env"] = Field(
        "hydra", description="hydra: key=value; argparse: --key value; env: SWEEPER_PARAM_<KEY>=value")
    metrics: str = Field("stdout", description="stdout (lines `SWEEPER_METRICS {json}`), csv:PATH or "
                         "jsonl:PATH (a file tailed while it grows; PATH may use {trial_dir} and globs)")
    checkpoint_dir_env: str | None = Field(
        "SWEEPER_CHECKPOINT_DIR", description="env var naming the directory the script saves to and "
        "resumes from; persisted as the trial checkpoint")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables")
    epochs: int | None = Field(None, ge=1, description="epochs the script trains; default scheduler.max_t")
    epoch_key: str | list[str] = Field("epoch", description="record key holding the epoch; a list is "
                                       "tried in order (MMEngine: [epoch, step])")
    first_epoch: Literal[0, 1] | None = Field(
        None, description="the number the script gives its first epoch; default: 0 if it reports an epoch 0")
    stop_grace_s: float = Field(10, ge=0, description="seconds between SIGTERM and SIGKILL when a trial is stopped")

    @field_validator("metrics")
    @classmethod
    def _metrics_source(cls, v: str) -> str:
        if not METRIC_SOURCE.fullmatch(v):
            raise ValueError("use stdout, csv:PATH or jsonl:PATH")
        return v

    @field_validator("checkpoint_dir_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError("must be an environment variable name")
        return v


class Ablation(Strict):
    factors: dict[str, list[Any]] = Field(description="dotted key -> values, each run against the baseline (`base`)")
    seeds: int | list[int] = Field(3, description="every variant runs with these seeds (N = 0..N-1)")
    seed_key: str | None = Field(None, description="the key a seed sets; default train.seed (command: seed)")
    full_factorial: bool = Field(False, description="all combinations instead of one factor at a time")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and v < 1:
            raise ValueError("needs at least 1 seed")
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("a non-empty list of distinct seeds")
        return v

    @property
    def seed_values(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


class Objective(Strict):
    metric: str = Field(description="metric to optimise, as the task reports it")
    mode: Literal["max", "min"] = "max"


class SearchAlg(Strict):
    name: Literal["optuna", "random", "grid"] = Field("optuna", description="optuna = model-based sampler")
    sampler: Literal["tpe"] = Field("tpe", description="Optuna sampler for name: optuna")
    seed: int | None = Field(0, description="sampler seed; null = random")


class Scheduler(Strict):
    name: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it may be stopped")
    reduction_factor: float = Field(3, gt=1, description="keep 1/reduction_factor at each rung")
    max_t: int | None = Field(None, ge=1, description="epochs; default train.epochs")
    brackets: int = Field(1, ge=1, description="ASHA brackets")


class Budget(Strict):
    num_samples: int = Field(8, ge=1, description="trials to run (grid: passes over the grid)")
    max_concurrent: int | None = Field(None, ge=1, description="trials at once; default what fits")
    max_failures: int = Field(0, ge=0, description="retries of a failed trial, from its checkpoint")
    oom_retries: int = Field(3, ge=0, description="after a CUDA out-of-memory error, retry the trial from its "
                             "last checkpoint with twice the micro-batches (half the per-step batch), this often")
    max_failed_trials: int | None = Field(None, ge=0, description="stop the sweep once more trials than this "
                                          "have failed (after their retries); null = never")


class Resources(Strict):
    cpu: float = Field(1, gt=0, description="CPUs per trial (also its torch threads)")
    gpu: float = Field(0, ge=0, description="GPUs per trial; fractions share a GPU")

    @field_validator("gpu")
    @classmethod
    def _whole_if_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("a trial may use a fraction of one GPU or whole GPUs, not e.g. 1.5")
        return v


class CheckpointPolicy(Strict):
    min_interval_s: float = Field(60, ge=0, description="seconds between a trial's checkpoints; "
                                  "the last epoch is always saved; 0 = every epoch")
    keep: int = Field(3, ge=3, description="checkpoints kept per trial (the best by the objective)")


class Tracking(Strict):
    uri: str = Field("sqlite:///mlruns.db", description="MLflow tracking URI")


class SweepFile(Strict):
    name: str = Field(description="sweep name: MLflow experiment and Ray experiment directory")
    task: str = Field(description="registered task")
    data: DataConfig | None = Field(None, description="dataset (built-in tasks)")
    command: CommandConfig | None = Field(None, description="the training command (task: command)")
    base: dict[str, Any] = Field(default_factory=dict, description="fixed trial settings")
    include: list[str] = Field(default_factory=list, description="search-space fragments")
    search: dict[str, Any] = Field(default_factory=dict, description="dotted key -> space")
    ablation: Ablation | None = Field(None, description="controlled variants of `base` with seeds, instead of `search`")
    eval_grid: dict[str, list[Any]] = Field(default_factory=dict, description="inference-time knobs")
    objective: Objective | list[Objective] = Field(description="metric + mode, or a list for a "
                                                   "multi-objective search (the first drives ASHA)")
    search_alg: SearchAlg = SearchAlg()
    scheduler: Scheduler = Scheduler()
    budget: Budget = Budget()
    resources: Resources = Resources()
    tracking: Tracking = Tracking()
    checkpoint: CheckpointPolicy = CheckpointPolicy()
    storage: str = Field("runs", description="Ray results root (local path or URI)")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError("use letters, digits, '.', '_' and '-' (it names directories)")
        return v
