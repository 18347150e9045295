"""The DBNet text-detection task: train and evaluate one trial, as plain PyTorch.

Contract (see :class:`sweeper.tasks.Task`):

* ``DBNetTask(config, device)`` loads the UFO or ICDAR-2015 data (:mod:`.data`, polygons
  validated), builds DBNet (:mod:`.model`), the loss (:mod:`.loss`), optimizer and LR schedule
  (:mod:`sweeper.tasks.training`) from the validated trial config (a nested dict is validated
  into it; :mod:`.spec` holds every default), seeded from ``train.seed``; ``model.init_from``
  fills the built DBNet from a file (:mod:`sweeper.tasks.init_from`). ``runtime`` says what it
  resolved: device, AMP on/off, channels_last, and with ``init_from`` what it loaded.
* ``train_one_epoch(epoch)`` seeds the epoch's data order and trains with
  :func:`~sweeper.tasks.training.run_epoch` -> ``train/loss`` and its terms, ``train/lr``,
  ``train/images_per_s``; a NaN/inf loss raises :class:`~sweeper.tasks.NonFiniteLossError`.
* ``evaluate()`` runs the network ONCE over the validation split and keeps the probability maps;
  post-processing (:mod:`.postprocess`) then runs for the ``post`` settings and for every point
  of ``eval_grid`` (``post.box_thresh`` x ``post.thresh`` x ...) on those same maps, and each
  point is scored with ``eval.metric`` (``icdar15`` | ``cleval`` | ``cleval_per_image``). Returned:
  ``precision``, ``recall``, ``hmean`` of the point best for ``objective.metric`` in
  ``objective.mode`` (the sweep's objective, usually max ``hmean``), ``best/<key>`` and
  ``default/<objective>``.

Usage::

    task = DBNetTask(trial_config)
    for epoch in range(1, 4):
        print(task.train_one_epoch(epoch), task.evaluate())
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from sweeper.config.trial import as_trial_config
from sweeper.tasks.dbnet.data import TextDetDataset, collate, load_icdar2015, load_ufo
from sweeper.tasks.dbnet.hmean import TextSample, icdar15_hmean
from sweeper.tasks.dbnet.loss import DBLoss
from sweeper.tasks.dbnet.model import build_dbnet
from sweeper.tasks.dbnet.postprocess import polygons_from_prob
from sweeper.tasks.dbnet.spec import SPEC
from sweeper.tasks.folds import held_out_for
from sweeper.tasks.init_from import load_init
from sweeper.tasks.training import (Optimization, best_over_grid, device_settings, loader_settings, run_epoch,
                                    seed_everything)

#: the `post` keys an eval grid may sweep (each scored on the same probability maps)
POST_KEYS = tuple(k.removeprefix("post.") for k in SPEC.eval_grid_keys)


def _metric_fn(name: str):  # noqa: ANN202 - returns the evaluator
    if name == "icdar15":
        return icdar15_hmean
    from sweeper.tasks.dbnet import cleval

    if name == "cleval":
        return cleval.cleval
    if name == "cleval_per_image":
        return cleval.cleval_per_image
    raise ValueError(f"eval.metric: unknown metric {name!r}; known: icdar15, cleval, cleval_per_image")


def _load(fmt: str, ann: str, images: str) -> list:
    if fmt == "ufo":
        return load_ufo(ann, images)
    if fmt == "icdar2015":
        return load_icdar2015(ann, images)
    raise ValueError(f"data.format: dbnet reads ufo or icdar2015, not {fmt!r}")


class DBNetTask:
    """One trial's DBNet, data and optimizer; see the module docstring for the contract."""

    def __init__(self, config: Any, device: str = "cpu") -> None:
        self.cfg = cfg = as_trial_config(config, "dbnet")
        if cfg.data is None:
            raise ValueError("data: the dbnet task needs a text dataset (data.train, data.val, data.images)")
        train = cfg.train
        self.device = torch.device(device)
        # the model keeps its default memory format (channels_last was never measured for DBNet)
        self.runtime: dict[str, Any] = device_settings(self.device, amp=train.amp, channels_last=False)
        self.use_amp = self.runtime["amp"]
        self.grid = {k: list(v) for k, v in cfg.eval_grid.items()}
        for key in self.grid:
            if key.removeprefix("post.") not in POST_KEYS:
                raise ValueError(f"eval_grid.{key}: only post.{', post.'.join(POST_KEYS)} can be swept at evaluation")
        self.metric = _metric_fn(cfg.eval.metric)
        seed_everything(train.seed)

        fmt = cfg.data.format or SPEC.data_formats[0]
        train_images = _load(fmt, cfg.data.train, cfg.data.images)
        if cfg.data.fold is not None:  # cross-validation: the held-out fold of data.train replaces data.val
            held = held_out_for([im.name for im in train_images], cfg.data.folds, cfg.data.fold)
            val_images = [im for im, h in zip(train_images, held) if h]
            train_images = [im for im, h in zip(train_images, held) if not h]
        else:
            val_images = _load(fmt, cfg.data.val, cfg.data.images)
        if train.max_train_images:
            train_images = train_images[: train.max_train_images]
        labels = cfg.labels.model_dump()
        self.train_ds = TextDetDataset(train_images, train.resolution, train=True, hflip=train.hflip, label_cfg=labels)
        self.val_ds = TextDetDataset(val_images, train.resolution, train=False, hflip=0.0, label_cfg=labels)
        batch, loader = train.batch_size, loader_settings(train.workers, device=self.device)
        self.generator = torch.Generator()
        self.train_loader = DataLoader(self.train_ds, batch_size=batch, shuffle=True, collate_fn=collate,
                                       generator=self.generator, drop_last=len(self.train_ds) > batch, **loader)
        self.val_loader = DataLoader(self.val_ds, batch_size=batch, shuffle=False, collate_fn=collate, **loader)

        self.model = build_dbnet(cfg.model.model_dump(), train.resolution)
        if cfg.model.init_from:
            self.runtime["init_from"] = load_init(self.model, cfg.model.init_from).summary()
        self.model.to(self.device)
        self.loss = DBLoss(**cfg.loss.model_dump())
        self.opt = Optimization(self.model, train, len(self.train_loader), amp=self.use_amp,
                                cuda=self.device.type == "cuda")

    # ---------------------------------------------------------------- training
    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (1-based); the data order depends only on (seed, epoch)."""
        self.generator.manual_seed(self.cfg.train.seed * 100_003 + epoch)
        return run_epoch(self.model, self.train_loader, self._losses, self.opt, epoch=epoch, prepare=self._to_device,
                         micro=self.cfg.train.micro_batches, amp=self.use_amp)

    def _to_device(self, batch: tuple[torch.Tensor, dict[str, torch.Tensor], list]) -> tuple[torch.Tensor, dict]:
        """One loader batch as DBNet trains on it: images and label maps on the device (metas stay)."""
        images, maps, _ = batch
        maps = {k: v.to(self.device, non_blocking=True) for k, v in maps.items()}
        return images.to(self.device, non_blocking=True), maps

    def _losses(self, images: torch.Tensor, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """DBLoss of one micro-batch (its `loss` entry is the weighted total). The network runs
        under the caller's autocast, the loss in float32 outside it; hard-negative mining (OHEM)
        then runs per micro-batch."""
        out = self.model(images)
        with torch.autocast("cuda", enabled=False):
            return self.loss({k: v.float() for k, v in out.items()}, maps)

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict_maps(self) -> list[tuple[np.ndarray, dict[str, Any]]]:
        """One forward pass over the validation split: (probability map cropped to the image
        content, meta) per image. Post-processing runs on these, once per grid point."""
        self.model.eval()
        out = []
        for images, _, metas in self.val_loader:
            with torch.autocast("cuda", enabled=self.use_amp):
                prob = self.model(images.to(self.device, non_blocking=True))["prob"]
            prob = prob.float().squeeze(1).cpu().numpy()
            for p, meta in zip(prob, metas):
                h, w = meta["orig_size"]
                rh, rw = max(1, round(h * meta["scale"])), max(1, round(w * meta["scale"]))
                out.append((p[:rh, :rw], meta))
        return out

    def _score(self, maps: list[tuple[np.ndarray, dict[str, Any]]], post: Mapping[str, Any]) -> dict[str, float]:
        samples = []
        for prob, meta in maps:
            polys, scores = polygons_from_prob(
                prob, thresh=post["thresh"], box_thresh=post["box_thresh"], unclip_ratio=post["unclip_ratio"],
                max_candidates=int(post["max_candidates"]), min_size=int(post["min_size"]),
                mode=self.cfg.post.mode, scale=meta["scale"], orig_size=tuple(meta["orig_size"]))
            samples.append(TextSample(name=str(meta["name"]), gt=list(meta["polys"]), gt_texts=list(meta["texts"]),
                                      gt_ignore=list(meta["ignore"]), det=list(polys), det_scores=list(scores)))
        result = self.metric(samples)
        return {k: float(result[k]) for k in ("precision", "recall", "hmean")}

    def evaluate(self) -> dict[str, float]:
        """Precision/recall/hmean on the validation split (best eval-grid point, see module doc)."""
        maps = self.predict_maps()
        defaults = {f"post.{k}": getattr(self.cfg.post, k) for k in POST_KEYS}
        return best_over_grid(self.grid, defaults,
                              lambda point: self._score(maps, {k.removeprefix("post."): v for k, v in point.items()}),
                              self.cfg.objective.metric, self.cfg.objective.mode)

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (see :class:`~sweeper.tasks.training.Optimization`)."""
        return self.opt.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (possibly saved on another device)."""
        self.opt.load_state_dict(state)
