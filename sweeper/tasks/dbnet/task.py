"""The DBNet text-detection task: train and evaluate one trial, as plain PyTorch.

Contract (see :class:`sweeper.tasks.Task`):

* ``DBNetTask(config, device)`` loads the UFO or ICDAR-2015 data (:mod:`.data`, polygons
  validated), builds DBNet (:mod:`.model`), the loss (:mod:`.loss`), optimizer and LR schedule
  (:mod:`sweeper.tasks.training`), seeded from ``train.seed``.
* ``train_one_epoch(epoch)`` -> ``train/loss`` and its terms, ``train/lr``, ``train/images_per_s``;
  a NaN/inf loss raises :class:`~sweeper.tasks.NonFiniteLossError`.
* ``evaluate()`` runs the network ONCE over the validation split and keeps the probability maps;
  post-processing (:mod:`.postprocess`) then runs for the ``post`` settings and for every point
  of ``eval_grid`` (``post.box_thresh`` x ``post.thresh`` x ...) on those same maps, and each
  point is scored with ``eval.metric`` (``icdar15`` | ``cleval`` | ``cleval_per_image``). Returned:
  ``precision``, ``recall``, ``hmean`` of the best point, ``best/<key>`` and ``default/hmean``.

Usage::

    task = DBNetTask(trial_config)
    for epoch in range(1, 4):
        print(task.train_one_epoch(epoch), task.evaluate())
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from sweeper.tasks import NonFiniteLossError
from sweeper.tasks.dbnet.data import TextDetDataset, collate, load_icdar2015, load_ufo
from sweeper.tasks.dbnet.hmean import TextSample, icdar15_hmean
from sweeper.tasks.dbnet.loss import DBLoss
from sweeper.tasks.dbnet.model import build_dbnet
from sweeper.tasks.dbnet.postprocess import polygons_from_prob
from sweeper.tasks.training import (
    Optimization,
    loader_settings,
    best_over_grid,
    check_injected_oom,
    micro_batches,
    seed_everything,
)

POST_KEYS = ("thresh", "box_thresh", "unclip_ratio", "max_candidates", "min_size")


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

    def __init__(self, config: Mapping[str, Any], device: str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        data, train = config["data"], config["train"]
        self.train_cfg = train
        self.post = dict(config["post"])
        self.seed = int(train.get("seed", 0))
        self.use_amp = self.device.type == "cuda" and bool(train.get("amp", True))
        self.grid = {k: list(v) for k, v in (config.get("eval_grid") or {}).items()}
        for key in self.grid:
            if key.removeprefix("post.") not in POST_KEYS:
                raise ValueError(f"eval_grid.{key}: only post.{', post.'.join(POST_KEYS)} can be swept at evaluation")
        self.metric = _metric_fn(config.get("eval", {}).get("metric", "icdar15"))
        seed_everything(self.seed)

        res = int(train["resolution"])
        fmt = data.get("format") or "ufo"
        train_images = _load(fmt, data["train"], data["images"])
        if train.get("max_train_images"):
            train_images = train_images[: int(train["max_train_images"])]
        labels = dict(config.get("labels") or {})
        self.train_ds = TextDetDataset(train_images, res, train=True, hflip=float(train.get("hflip", 0.0)),
                                       label_cfg=labels)
        self.val_ds = TextDetDataset(_load(fmt, data["val"], data["images"]), res, train=False, hflip=0.0,
                                     label_cfg=labels)
        batch, loader = int(train["batch_size"]), loader_settings(train.get("workers"), device=self.device)
        self.generator = torch.Generator()
        self.train_loader = DataLoader(self.train_ds, batch_size=batch, shuffle=True, collate_fn=collate,
                                       generator=self.generator, drop_last=len(self.train_ds) > batch, **loader)
        self.val_loader = DataLoader(self.val_ds, batch_size=batch, shuffle=False, collate_fn=collate, **loader)

        self.model = build_dbnet(config["model"]).to(self.device)
        self.loss = DBLoss(**config.get("loss", {}))
        self.micro_batches = int(train.get("micro_batches", 1))
        self.opt = Optimization(self.model, train, len(self.train_loader), amp=self.use_amp,
                                cuda=self.device.type == "cuda")

    # ---------------------------------------------------------------- training
    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (1-based); the data order depends only on (seed, epoch)."""
        self.model.train()
        self.generator.manual_seed(self.seed * 100_003 + epoch)
        n_steps, n_images, total, lr = len(self.train_loader), 0, 0.0, 0.0
        terms: dict[str, float] = {}
        start = time.perf_counter()
        for step, (images, maps, _) in enumerate(self.train_loader, start=1):
            images = images.to(self.device, non_blocking=True)
            maps = {k: v.to(self.device, non_blocking=True) for k, v in maps.items()}
            lr = self.opt.lr
            self.opt.zero_grad()
            for part in micro_batches(images.shape[0], self.micro_batches):  # gradient accumulation
                check_injected_oom(images[part].shape[0])
                share = images[part].shape[0] / images.shape[0]
                with torch.autocast("cuda", enabled=self.use_amp):
                    out = self.model(images[part])
                # hard-negative mining (OHEM) then runs per micro-batch
                losses = self.loss({k: v.float() for k, v in out.items()}, {k: v[part] for k, v in maps.items()})
                value = float(losses["loss"].detach())
                if not math.isfinite(value):
                    parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items() if k != "loss")
                    raise NonFiniteLossError(f"epoch {epoch}, step {step}/{n_steps}: non-finite training loss {value} ({parts})")
                self.opt.backward(losses["loss"] * share)
                total += value * share
                for k, v in losses.items():
                    if k != "loss":
                        terms[k] = terms.get(k, 0.0) + float(v.detach()) * share
            self.opt.update()
            n_images += images.shape[0]
        steps = max(1, n_steps)
        metrics = {"train/loss": total / steps, "train/lr": lr,
                   "train/images_per_s": n_images / max(time.perf_counter() - start, 1e-9)}
        metrics.update({f"train/{k}": v / steps for k, v in terms.items()})
        return metrics

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
                mode=self.post.get("mode", "box"), scale=meta["scale"], orig_size=tuple(meta["orig_size"]))
            samples.append(TextSample(name=str(meta["name"]), gt=list(meta["polys"]), gt_texts=list(meta["texts"]),
                                      gt_ignore=list(meta["ignore"]), det=list(polys), det_scores=list(scores)))
        result = self.metric(samples)
        return {k: float(result[k]) for k in ("precision", "recall", "hmean")}

    def evaluate(self) -> dict[str, float]:
        """Precision/recall/hmean on the validation split (best eval-grid point, see module doc)."""
        maps = self.predict_maps()
        defaults = {f"post.{k}": self.post[k] for k in POST_KEYS}
        return best_over_grid(self.grid, defaults,
                              lambda point: self._score(maps, {k.removeprefix("post."): v for k, v in point.items()}),
                              "hmean")

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (see :class:`~sweeper.tasks.training.Optimization`)."""
        return self.opt.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (possibly saved on another device)."""
        self.opt.load_state_dict(state)
