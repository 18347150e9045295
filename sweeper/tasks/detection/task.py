"""The detection task: train and evaluate one trial's detector, as plain PyTorch.

Contract (see :class:`sweeper.tasks.Task`)
------------------------------------------
* ``DetectionTask(config, device)`` builds the data (:mod:`.data`), the detector (:mod:`.model`),
  the optimizer and a per-iteration LR schedule from the validated trial config (``data.*``,
  ``model.*``, ``train.*``, ``post.*``, ``eval_grid``; a nested dict is validated into it, so the
  schema in :mod:`.spec` holds every default), after seeding python/numpy/torch from ``train.seed``.
  ``model.init_from`` fills the built detector from a file (:func:`.model.init_detector`).
  ``runtime`` says what it resolved: device, AMP on/off, channels_last, and with ``init_from`` what
  it loaded (``runtime["init_from"]``: file, loaded count, re-initialised / missing / unexpected names).
* ``train_one_epoch(epoch)`` sets the epoch's resolution and data order, then trains with
  :func:`~sweeper.tasks.training.run_epoch` -> ``train/loss`` (mean over the epoch's steps),
  ``train/lr`` (the last step's LR), ``train/images_per_s`` and the mean of each loss term
  (``train/loss_<name>``). A NaN/inf loss raises :class:`~sweeper.tasks.NonFiniteLossError`
  naming epoch, step and value.
* ``evaluate()`` -> COCO metrics of the validation split (``map``, ..., ``ap/<class>``), computed
  by :func:`.coco_eval.evaluate_coco` on boxes mapped back to original image coordinates. With an
  ``eval_grid`` (``post.score_thresh`` and/or ``post.max_dets``) the model runs once, at the
  loosest setting, and every grid point filters those detections: the metrics of the best point
  for the objective (``objective.metric`` in ``objective.mode``, default: max ``map``) are
  returned, plus ``best/<key>`` for each grid key and ``default/<objective>`` (score at ``post``; MLflow forbids "@" in metric names).
* ``state_dict()``/``load_state_dict()`` carry model, optimizer, scheduler, GradScaler and the
  python/numpy/torch RNG states: a restored task continues exactly as the original would have.
  The data order is a function of (seed, epoch), so it needs no state of its own.

Usage::

    task = DetectionTask(trial_config, device="cpu")
    for epoch in range(1, task.cfg.train.epochs + 1):
        print(task.train_one_epoch(epoch), task.evaluate())
    torch.save(task.state_dict(), "ckpt.pt")
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import batched_nms

from sweeper.config.trial import as_trial_config
from sweeper.tasks.training import (
    Optimization,
    best_over_grid,
    device_settings,
    loader_settings,
    run_epoch,
    seed_everything,
)
from sweeper.tasks.detection.coco_eval import evaluate_coco
from sweeper.tasks.detection.coco_io import read_json
from sweeper.tasks.detection.confusion import confusion_from_coco, write_confusion
from sweeper.tasks.detection.data import (
    CocoDetection,
    coco_fold,
    make_loader,
    resolution_at,
    set_loader_epoch,
    to_original_coords,
)
from sweeper.tasks.detection.losses import size_bucket_weights
from sweeper.tasks.detection.model import build_model, init_detector, set_postprocess, set_resolution
from sweeper.tasks.detection.spec import SPEC

#: eval_grid keys that can be scored from one forward pass (filters on kept detections; NMS is
#: re-applied at each post.nms_iou to the pass's un-suppressed candidates).
GRID_KEYS = SPEC.eval_grid_keys
#: detections per image kept by the forward pass when NMS is re-applied later (no NMS in the pass)
NMS_GRID_CANDIDATES = 5000


class DetectionTask:
    """One trial's detector, data and optimizer; see the module docstring for the contract."""

    def __init__(self, config: Any, device: str = "cpu") -> None:
        self.cfg = cfg = as_trial_config(config, "detection")
        if cfg.data is None:
            raise ValueError("data: the detection task needs a COCO dataset (data.train, data.val, data.images)")
        train = cfg.train
        self.device = torch.device(device)
        self.use_cuda = self.device.type == "cuda"
        self.runtime: dict[str, Any] = device_settings(self.device, amp=train.amp, channels_last=True)
        self.use_amp = self.runtime["amp"]
        self.grid = self._parse_grid(cfg.eval_grid)
        seed_everything(train.seed)

        self.eval_resolution = cfg.eval.resolution or train.resolution
        train_gt, val_file = None, cfg.data.val
        if cfg.data.fold is not None:  # cross-validation: the held-out fold of data.train replaces data.val
            train_gt, self.val_gt = coco_fold(cfg.data.train, cfg.data.folds, cfg.data.fold)
            val_file = cfg.data.train
        else:
            self.val_gt = read_json(cfg.data.val, "annotation")  # parsed once: the val dataset and the evaluator
        self.train_ds = CocoDetection(
            cfg.data.train, cfg.data.images, resolution=train.resolution, hflip=train.hflip, train=True,
            max_images=train.max_train_images, augment=cfg.augment.model_dump(), seed=train.seed, gt=train_gt,
        )
        self.val_ds = CocoDetection(val_file, cfg.data.images, resolution=self.eval_resolution, gt=self.val_gt)
        self.train_ds.check_categories(self.val_ds)
        loader = loader_settings(train.workers, device=self.device)
        self.train_loader = make_loader(self.train_ds, batch_size=train.batch_size, shuffle=True, seed=train.seed,
                                        workers=loader["num_workers"], pin_memory=loader["pin_memory"])
        self.val_loader = make_loader(self.val_ds, batch_size=train.batch_size, shuffle=False, seed=train.seed,
                                      workers=loader["num_workers"], pin_memory=loader["pin_memory"])

        self.model = build_model(cfg.model.model_dump(), len(self.train_ds.categories) + 1, train.resolution,
                                 cfg.post.model_dump(), loss_cfg=cfg.loss.model_dump())
        if cfg.model.init_from:
            self.runtime["init_from"] = init_detector(self.model, cfg.model.init_from)
        self.model.to(self.device)
        if self.runtime["channels_last"]:
            self.model.to(memory_format=torch.channels_last)

        self.opt = Optimization(self.model, train, len(self.train_loader), amp=self.use_amp, cuda=self.use_cuda)

    @staticmethod
    def _parse_grid(grid: Mapping[str, Any]) -> dict[str, list[Any]]:
        out = {}
        for key, values in grid.items():
            if key not in GRID_KEYS:
                raise ValueError(
                    f"eval_grid.{key}: only {', '.join(GRID_KEYS)} can be grid-evaluated for "
                    "detection (they filter one forward pass's detections)"
                )
            if not isinstance(values, (list, tuple)) or not values:
                raise ValueError(f"eval_grid.{key}: expected a non-empty list of values, got {values!r}")
            out[key] = list(values)
        return out

    # ---------------------------------------------------------------- training
    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (1-based); see the module docstring for the returned metrics."""
        train = self.cfg.train
        res = resolution_at(epoch, train.epochs, train.resolution, train.resolution_schedule)
        self.train_ds.set_resolution(res)
        set_resolution(self.model, res)
        self.train_ds.set_epoch(epoch, train.epochs)
        set_loader_epoch(self.train_loader, seed=train.seed, epoch=epoch)
        # in train mode a torchvision detector is its own loss function: (images, targets) -> loss dict
        return run_epoch(self.model, self.train_loader, self.model, self.opt, epoch=epoch, prepare=self._to_device,
                         micro=train.micro_batches, amp=self.use_amp)

    def _to_device(self, batch: tuple[list[torch.Tensor], list[dict[str, Any]]]) -> tuple[list, list]:
        """One loader batch as the detector trains on it: images and targets on the device."""
        images, targets = batch
        return [im.to(self.device, non_blocking=True) for im in images], [self._target(t) for t in targets]

    def _target(self, t: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """What the detector trains on; `weights` (per box, by its size bucket) when the size
        weights are not all 1."""
        out = {"boxes": t["boxes"].to(self.device, non_blocking=True), "labels": t["labels"].to(self.device, non_blocking=True)}
        weights = self.cfg.loss.size_weights.model_dump()
        if any(float(w) != 1.0 for w in weights.values()):
            out["weights"] = size_bucket_weights(t["sizes"], self.cfg.loss.size_thresholds, weights).to(self.device)
        return out

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict(self) -> list[dict[str, Any]]:
        """One pass over the validation set (at ``eval.resolution``) at the loosest eval settings.

        Returns per image ``image_id`` and numpy ``boxes`` (xyxy, ORIGINAL coordinates),
        ``scores`` (descending) and ``labels``. With ``post.nms_iou`` in the eval grid the pass
        runs without NMS (IoU 1.0 suppresses nothing) and keeps ``model_boxes`` (the detector's own
        coordinates) so :meth:`_coco_results` can apply NMS at each grid IoU exactly as the
        detector's postprocessing would have: score filter, NMS per class, top ``max_dets``.
        """
        post = self.cfg.post
        thresholds = [post.score_thresh, *self.grid.get("post.score_thresh", [])]
        max_dets = [post.max_dets, *self.grid.get("post.max_dets", [])]
        nms_grid = "post.nms_iou" in self.grid
        self.model.eval()
        set_resolution(self.model, self.eval_resolution)
        set_postprocess(self.model, score_thresh=min(thresholds),
                        max_dets=NMS_GRID_CANDIDATES if nms_grid else max(max_dets),
                        nms_iou=1.0 if nms_grid else post.nms_iou)
        out = []
        try:
            for images, targets in self.val_loader:
                images = [im.to(self.device, non_blocking=True) for im in images]
                with torch.autocast("cuda", enabled=self.use_amp):
                    preds = self.model(images)
                for pred, tgt in zip(preds, targets):
                    order = torch.argsort(pred["scores"].float(), descending=True, stable=True)
                    model_boxes = pred["boxes"][order].float().cpu()
                    item = {
                        "image_id": tgt["image_id"],
                        "boxes": to_original_coords(model_boxes, tgt["scale"], tgt["orig_size"]).numpy(),
                        "scores": pred["scores"][order].float().cpu().numpy(),
                        "labels": pred["labels"][order].cpu().numpy(),
                    }
                    if nms_grid:
                        item["model_boxes"] = model_boxes
                    out.append(item)
        finally:
            set_postprocess(self.model, score_thresh=post.score_thresh, max_dets=post.max_dets, nms_iou=post.nms_iou)
        return out

    @staticmethod
    def _kept(p: Mapping[str, Any], score_thresh: float, max_dets: int, nms_iou: float | None) -> np.ndarray:
        """Indices of the detections a forward pass at these settings would have returned."""
        # Strictly greater, as torchvision's own score filter: a grid point then scores exactly
        # what a forward pass at that threshold would have kept.
        keep = np.flatnonzero(p["scores"] > score_thresh)
        if nms_iou is not None and "model_boxes" in p and len(keep):
            idx = torch.as_tensor(keep)
            kept = batched_nms(p["model_boxes"][idx], torch.as_tensor(p["scores"][keep]),
                               torch.as_tensor(p["labels"][keep]), float(nms_iou))
            keep = keep[kept.numpy()]  # batched_nms returns them by descending score
        return keep[: int(max_dets)]

    def _coco_results(self, preds: list[dict[str, Any]], score_thresh: float, max_dets: int,
                      nms_iou: float | None = None) -> list[dict[str, Any]]:
        cat_ids = self.train_ds.label_to_cat_id
        results = []
        for p in preds:
            for i in self._kept(p, score_thresh, max_dets, nms_iou):
                x1, y1, x2, y2 = (float(v) for v in p["boxes"][i])
                results.append({
                    "image_id": p["image_id"],
                    "category_id": cat_ids[int(p["labels"][i])],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(p["scores"][i]),
                })
        return results

    def evaluate(self) -> dict[str, float]:
        """COCO metrics on the validation split; see the module docstring for the eval grid."""
        preds = self.predict()
        cache: dict[tuple[float, int, float], dict[str, float]] = {}
        area_ranges, backend = self.cfg.eval.area_ranges or None, self.cfg.eval.backend

        def score(point: Mapping[str, Any]) -> dict[str, float]:
            key = (float(point["post.score_thresh"]), int(point["post.max_dets"]), float(point["post.nms_iou"]))
            if key not in cache:
                cache[key] = evaluate_coco(self.val_gt, self._coco_results(preds, *key), area_ranges=area_ranges,
                                           backend=backend)
            return cache[key]

        post, objective = self.cfg.post, self.cfg.objective
        defaults = {f"post.{k}": getattr(post, k) for k in ("score_thresh", "max_dets", "nms_iou")}
        metrics = best_over_grid(self.grid, defaults, score, objective.metric.removeprefix("val/"), objective.mode)
        if self.cfg.artifacts_dir:
            self._write_confusion(preds)
        return metrics

    def _write_confusion(self, preds: list[dict[str, Any]]) -> None:
        """The confusion matrix (background included) at eval.confusion_iou / confusion_score,
        with the `post` NMS and max_dets, written as JSON and PNG into the artifacts directory."""
        iou, score_thresh = self.cfg.eval.confusion_iou, self.cfg.eval.confusion_score
        results = self._coco_results(preds, -1.0, self.cfg.post.max_dets, self.cfg.post.nms_iou)
        matrix, names = confusion_from_coco(self.val_gt, results, iou=iou, score=score_thresh)
        write_confusion(matrix, names, Path(self.cfg.artifacts_dir), iou=iou, score=score_thresh)

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (see :class:`~sweeper.tasks.training.Optimization`)."""
        return self.opt.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (possibly saved on another device)."""
        self.opt.load_state_dict(state)
