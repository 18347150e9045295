"""Size-weighted detection losses: torchvision's heads, with each matched ground truth weighted.

Why: on datasets dominated by large objects the box losses are dominated by them too;
``loss.size_weights`` up-weights small (or any) objects where it matters, in the regression of the
anchors/proposals matched to them, without touching matching, sampling or normalisation.

Contract
--------
* :func:`size_bucket_weights` maps box sizes (sqrt of the area, px, in ORIGINAL image coordinates so
  the buckets do not move with ``train.resolution``) to per-box weights. Buckets, as in the schema:
  small ``s < t0``; medium ``t0 <= s < t1``; large ``s >= t1`` (a 32 x 32 box is medium, as
  COCO's "small = area < 32^2"). :func:`attach_size_weights` puts them on training targets.
* Training targets may carry ``weights`` (float ``[N]``, one per ground-truth box). When any
  target in the batch has them, every box-regression term weights each matched anchor/proposal
  by its matched ground truth's weight: RPN and RoI-head box losses (Faster R-CNN), RetinaNet's
  regression, FCOS's GIoU regression *and* centerness (a per-positive term of the same box branch:
  weighting it with the regression keeps each object's regression/centerness balance as
  torchvision has it, and with all weights ``w`` the whole box branch scales by ``w``). With
  ``size_weight_cls`` the classification terms of positive (matched) samples are weighted too
  (RPN objectness, RoI cross-entropy, focal losses); background and ignored samples keep weight 1.
* Normalisers (number of sampled anchors, of foreground anchors, of images) are torchvision's, so
  all weights ``w`` scale the box terms by exactly ``w``; without ``weights`` the losses *are*
  torchvision's (the code path is theirs); all-ones weights equal them to float precision.
* Tasks never import Ray or MLflow; this module imports torch/torchvision only.

Usage::

    targets = attach_size_weights(targets, trial_config["loss"])  # needs targets' "sizes"
    losses = model(images, targets)   # a model from model.build_model: heads below
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder, BoxLinearCoder
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import (complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss,
                             sigmoid_focal_loss)

BUCKETS: tuple[str, ...] = ("small", "medium", "large")


def size_bucket_weights(sizes: Tensor, thresholds: Sequence[float], weights: Mapping[str, float]) -> Tensor:
    """Per-box weight (float32, same shape and device as ``sizes``) from sqrt-area sizes in px.

    ``thresholds = (t0, t1)``: small ``s < t0``, medium ``t0 <= s < t1``, large ``s >= t1``;
    ``weights`` maps ``small``/``medium``/``large`` to a weight (a missing bucket weighs 1).
    """
    unknown = set(weights) - set(BUCKETS)
    if unknown:
        raise ValueError(f"loss.size_weights: unknown bucket(s) {sorted(unknown)}; known: {', '.join(BUCKETS)}")
    t0, t1 = (float(t) for t in thresholds)
    if not 0 < t0 < t1:
        raise ValueError(f"loss.size_thresholds: need two increasing positive sizes, got {list(thresholds)}")
    small, medium, large = (float(weights.get(name, 1.0)) for name in BUCKETS)
    sizes = sizes.to(torch.float32)
    out = torch.full_like(sizes, medium)
    out = torch.where(sizes < t0, torch.full_like(sizes, small), out)
    return torch.where(sizes >= t1, torch.full_like(sizes, large), out)


def size_weights_active(loss_cfg: Mapping[str, Any] | None) -> bool:
    """Whether ``loss.size_weights`` changes anything (any bucket weight other than 1)."""
    weights = (loss_cfg or {}).get("size_weights") or {}
    return any(float(weights.get(name, 1.0)) != 1.0 for name in BUCKETS)


def attach_size_weights(targets: list[dict[str, Tensor]], loss_cfg: Mapping[str, Any] | None) -> list[dict[str, Tensor]]:
    """Targets with ``weights`` from their ``sizes`` (sqrt area, original px) per ``loss_cfg``.

    Returned unchanged when every bucket weighs 1, so default configs run torchvision's own losses.
    """
    if not size_weights_active(loss_cfg):
        return targets
    out = []
    for i, t in enumerate(targets):
        if "sizes" not in t:
            raise ValueError(f"loss.size_weights: training target {i} has no 'sizes' entry (sqrt of each "
                             "box's area in original image px), which size weighting needs")
        w = size_bucket_weights(t["sizes"], loss_cfg.get("size_thresholds", (32.0, 96.0)), loss_cfg["size_weights"])
        out.append({**t, "weights": w})
    return out


def set_size_weight_cls(model: nn.Module, enabled: bool) -> None:
    """Weight the classification terms of positive samples too (``loss.size_weight_cls``)."""
    for module in model.modules():
        if isinstance(module, _WEIGHTED):
            module.size_weight_cls = bool(enabled)


# --------------------------------------------------------------------------- shared pieces
def _has_weights(targets: list[dict[str, Tensor]] | None) -> bool:
    return targets is not None and any("weights" in t for t in targets)


def matched_weights(target: Mapping[str, Tensor], matched_idxs: Tensor, positive: Tensor) -> Tensor:
    """Weight per anchor/proposal: its matched ground truth's ``weights`` entry where ``positive``,
    else 1 (background, ignored, or a target without weights)."""
    ones = torch.ones(matched_idxs.shape, dtype=torch.float32, device=matched_idxs.device)
    gt_weights = target.get("weights")
    if gt_weights is None:
        return ones
    if gt_weights.shape != target["boxes"].shape[:1]:
        raise ValueError(f"target 'weights' must hold one weight per box: shape {tuple(gt_weights.shape)} "
                         f"for {len(target['boxes'])} boxes")
    if gt_weights.numel() == 0:
        return ones
    return torch.where(positive, gt_weights.to(ones)[matched_idxs.clamp(min=0)], ones)


def _one_stage_weights(targets: list[dict[str, Tensor]], matched_idxs: list[Tensor]) -> list[Tensor] | None:
    """The one-stage heads' (RetinaNet, FCOS) weight per anchor/location and image: its matched
    ground truth's where matched (index >= 0), else 1; None when no target carries ``weights``,
    so the head runs torchvision's own loss."""
    if not _has_weights(targets):
        return None
    return [matched_weights(t, m, m >= 0) for t, m in zip(targets, matched_idxs)]


def per_box_loss(loss_type: str, box_coder: BoxCoder, anchors: Tensor, gt_boxes: Tensor, pred: Tensor) -> Tensor:
    """torchvision's ``_box_loss`` with one value per box instead of the sum."""
    if loss_type == "l1":
        return F.l1_loss(pred, box_coder.encode_single(gt_boxes, anchors), reduction="none").sum(-1)
    if loss_type == "smooth_l1":
        return F.smooth_l1_loss(pred, box_coder.encode_single(gt_boxes, anchors), reduction="none", beta=1.0).sum(-1)
    iou_losses = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss, "ciou": complete_box_iou_loss}
    if loss_type not in iou_losses:
        raise ValueError(f"unsupported box loss {loss_type!r}; known: l1, smooth_l1, {', '.join(iou_losses)}")
    return iou_losses[loss_type](box_coder.decode_single(pred, anchors), gt_boxes, reduction="none", eps=1e-7)


# --------------------------------------------------------------------------- Faster R-CNN
class WeightedRPN(RegionProposalNetwork):
    """torchvision's RPN; with target ``weights``, its losses weight each anchor by its match.

    torchvision's forward hands only labels and matched boxes from ``assign_targets_to_anchors``
    to ``compute_loss``; the per-anchor weights travel from one to the other through
    ``_anchor_weights`` (set and consumed within one forward). No parameters of its own, so a
    built RPN can be re-typed to this class (the model builder does).
    """

    size_weight_cls: bool = False
    _anchor_weights: list[Tensor] | None = None

    def assign_targets_to_anchors(
        self, anchors: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        self._anchor_weights = None
        if not _has_weights(targets):
            return super().assign_targets_to_anchors(anchors, targets)
        # torchvision's assignment, keeping the matched indices for the weights
        labels, matched_gt_boxes, weights = [], [], []
        for anchors_per_image, target in zip(anchors, targets):
            gt_boxes = target["boxes"]
            if gt_boxes.numel() == 0:
                matched_idxs = torch.full((anchors_per_image.shape[0],), self.proposal_matcher.BELOW_LOW_THRESHOLD,
                                          dtype=torch.int64, device=anchors_per_image.device)
                matched_gt_boxes.append(torch.zeros(anchors_per_image.shape, dtype=torch.float32,
                                                    device=anchors_per_image.device))
            else:
                matched_idxs = self.proposal_matcher(self.box_similarity(gt_boxes, anchors_per_image))
                matched_gt_boxes.append(gt_boxes[matched_idxs.clamp(min=0)])
            labels_per_image = (matched_idxs >= 0).to(torch.float32)
            labels_per_image[matched_idxs == self.proposal_matcher.BELOW_LOW_THRESHOLD] = 0.0
            labels_per_image[matched_idxs == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(labels_per_image)
            weights.append(matched_weights(target, matched_idxs, matched_idxs >= 0))
        self._anchor_weights = weights
        return labels, matched_gt_boxes

    def compute_loss(
        self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        weights, self._anchor_weights = self._anchor_weights, None
        if weights is None:
            return super().compute_loss(objectness, pred_bbox_deltas, labels, regression_targets)
        sampled_pos_inds, sampled_neg_inds = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(sampled_pos_inds, dim=0))[0]
        neg = torch.where(torch.cat(sampled_neg_inds, dim=0))[0]
        sampled = torch.cat([pos, neg], dim=0)
        objectness = objectness.flatten()
        labels_all, targets_all, w = torch.cat(labels), torch.cat(regression_targets), torch.cat(weights)
        box = F.smooth_l1_loss(pred_bbox_deltas[pos], targets_all[pos], beta=1 / 9, reduction="none").sum(-1)
        box_loss = (box * w[pos]).sum() / sampled.numel()
        # BCE's `weight` keeps the mean's denominator (the number of sampled anchors), as wanted
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness[sampled], labels_all[sampled], weight=w[sampled] if self.size_weight_cls else None)
        return objectness_loss, box_loss


def weighted_fastrcnn_loss(
    class_logits: Tensor,
    box_regression: Tensor,
    labels: list[Tensor],
    regression_targets: list[Tensor],
    weights: list[Tensor],
    weight_cls: bool = False,
) -> tuple[Tensor, Tensor]:
    """torchvision's ``fastrcnn_loss`` with a weight per sampled proposal (1 for background)."""
    labels_all, targets_all, w = torch.cat(labels), torch.cat(regression_targets), torch.cat(weights)
    if weight_cls:
        classification_loss = (F.cross_entropy(class_logits, labels_all, reduction="none") * w).sum() / labels_all.numel()
    else:
        classification_loss = F.cross_entropy(class_logits, labels_all)
    pos = torch.where(labels_all > 0)[0]
    box_regression = box_regression.reshape(class_logits.shape[0], box_regression.size(-1) // 4, 4)
    box = F.smooth_l1_loss(box_regression[pos, labels_all[pos]], targets_all[pos], beta=1 / 9, reduction="none")
    return classification_loss, (box.sum(-1) * w[pos]).sum() / labels_all.numel()


class WeightedRoIHeads(RoIHeads):
    """torchvision's box RoI heads; with target ``weights``, each sampled proposal's losses are
    weighted by its matched ground truth (training forward below; boxes only, no masks/keypoints).
    No parameters of its own, so a built RoIHeads can be re-typed to this class."""

    size_weight_cls: bool = False

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if not (self.training and _has_weights(targets)) or self.has_mask() or self.has_keypoint():
            return super().forward(features, proposals, image_shapes, targets)
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        # matched_idxs are clamped to 0 for background: the labels say which proposals matched
        weights = [matched_weights(t, m, lab > 0) for t, m, lab in zip(targets, matched_idxs, labels)]
        loss_classifier, loss_box_reg = weighted_fastrcnn_loss(
            class_logits, box_regression, labels, regression_targets, weights, self.size_weight_cls)
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}


# --------------------------------------------------------------------------- RetinaNet
def _sum(values: list[Tensor]) -> Tensor:
    out = values[0]
    for v in values[1:]:
        out = out + v
    return out


class WeightedRetinaNetHead(RetinaNetHead):
    """torchvision's RetinaNet head; with target ``weights``, focal (with ``size_weight_cls``) and
    regression losses weight each foreground anchor by its matched ground truth."""

    size_weight_cls: bool = False

    def compute_loss(
        self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        weights = _one_stage_weights(targets, matched_idxs)
        if weights is None:
            return super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        if self.size_weight_cls:
            classification = self._classification_loss(targets, head_outputs["cls_logits"], matched_idxs, weights)
        else:
            classification = self.classification_head.compute_loss(targets, head_outputs, matched_idxs)
        return {"classification": classification,
                "bbox_regression": self._regression_loss(targets, head_outputs, anchors, matched_idxs, weights)}

    def _classification_loss(self, targets: list[dict[str, Tensor]], cls_logits: Tensor, matched_idxs: list[Tensor],
                             weights: list[Tensor]) -> Tensor:
        """RetinaNetClassificationHead.compute_loss, with a weight per anchor."""
        losses = []
        for target, logits, matched, w in zip(targets, cls_logits, matched_idxs, weights):
            foreground = matched >= 0
            gt_classes = torch.zeros_like(logits)
            gt_classes[foreground, target["labels"][matched[foreground]]] = 1.0
            valid = matched != self.classification_head.BETWEEN_THRESHOLDS
            focal = sigmoid_focal_loss(logits[valid], gt_classes[valid], reduction="none").sum(-1)
            losses.append((focal * w[valid]).sum() / max(1, foreground.sum()))
        return _sum(losses) / len(targets)

    def _regression_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor],
                         anchors: list[Tensor], matched_idxs: list[Tensor], weights: list[Tensor]) -> Tensor:
        """RetinaNetRegressionHead.compute_loss, with a weight per foreground anchor."""
        head = self.regression_head
        losses = []
        for target, regression, anchors_per_image, matched, w in zip(
                targets, head_outputs["bbox_regression"], anchors, matched_idxs, weights):
            fg = torch.where(matched >= 0)[0]
            per_box = per_box_loss(head._loss_type, head.box_coder, anchors_per_image[fg],
                                   target["boxes"][matched[fg]], regression[fg])
            losses.append((per_box * w[fg]).sum() / max(1, fg.numel()))
        return _sum(losses) / max(1, len(targets))


# --------------------------------------------------------------------------- FCOS
class WeightedFCOSHead(FCOSHead):
    """torchvision's FCOS head; with target ``weights``, GIoU regression and centerness (and focal,
    with ``size_weight_cls``) weight each foreground location by its matched ground truth.

    ``norm_groups``: GroupNorm groups of the towers. torchvision fixes 32, which needs
    ``in_channels`` divisible by 32; the builder passes :func:`fcos_norm_groups` so narrow FPNs work too.
    """

    size_weight_cls: bool = False

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, num_convs: int = 4,
                 norm_groups: int = 32) -> None:
        nn.Module.__init__(self)  # FCOSHead.__init__ would build GroupNorm(32, ...) towers
        norm = partial(nn.GroupNorm, norm_groups)
        self.box_coder = BoxLinearCoder(normalize_by_size=True)
        self.classification_head = FCOSClassificationHead(in_channels, num_anchors, num_classes, num_convs,
                                                          norm_layer=norm)
        self.regression_head = FCOSRegressionHead(in_channels, num_anchors, num_convs, norm_layer=norm)

    def compute_loss(
        self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        weights = _one_stage_weights(targets, matched_idxs)
        if weights is None:
            return super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        # FCOSHead.compute_loss, with a weight per location (1 for background)
        gt_classes, gt_boxes = [], []
        for target, matched in zip(targets, matched_idxs):
            if len(target["labels"]) == 0:
                classes = target["labels"].new_zeros((len(matched),))
                boxes = target["boxes"].new_zeros((len(matched), 4))
            else:
                classes = target["labels"][matched.clip(min=0)]
                boxes = target["boxes"][matched.clip(min=0)]
            classes[matched < 0] = -1
            gt_classes.append(classes)
            gt_boxes.append(boxes)
        all_boxes, all_classes, all_anchors, all_w = (torch.stack(gt_boxes), torch.stack(gt_classes),
                                                      torch.stack(anchors), torch.stack(weights))
        foreground = all_classes >= 0
        num_foreground = max(1, foreground.sum().item())

        cls_logits = head_outputs["cls_logits"]
        cls_targets = torch.zeros_like(cls_logits)
        cls_targets[foreground, all_classes[foreground]] = 1.0
        focal = sigmoid_focal_loss(cls_logits, cls_targets, reduction="none").sum(-1)
        loss_cls = (focal * all_w).sum() if self.size_weight_cls else focal.sum()

        w_fg = all_w[foreground]
        pred_boxes = self.box_coder.decode(head_outputs["bbox_regression"], all_anchors)
        giou = generalized_box_iou_loss(pred_boxes[foreground], all_boxes[foreground], reduction="none")

        reg_targets = self.box_coder.encode(all_anchors, all_boxes)
        if len(reg_targets) == 0:
            ctrness_targets = reg_targets.new_zeros(reg_targets.size()[:-1])
        else:
            left_right, top_bottom = reg_targets[:, :, [0, 2]], reg_targets[:, :, [1, 3]]
            ctrness_targets = torch.sqrt((left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0])
                                         * (top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0]))
        ctrness = F.binary_cross_entropy_with_logits(head_outputs["bbox_ctrness"].squeeze(dim=2)[foreground],
                                                     ctrness_targets[foreground], reduction="none")
        return {"classification": loss_cls / num_foreground,
                "bbox_regression": (giou * w_fg).sum() / num_foreground,
                "bbox_ctrness": (ctrness * w_fg).sum() / num_foreground}


def fcos_norm_groups(channels: int) -> int:
    """GroupNorm groups for an FCOS head ``channels`` wide: torchvision's 32 where it divides, and
    at least 2 channels per group (one channel per group on a 1x1 level, such as P7 of a 128 px
    image, leaves a single value to normalise when one image is evaluated, and GroupNorm raises)."""
    groups = math.gcd(32, int(channels))
    return groups // 2 if groups == channels and groups > 1 else groups


_WEIGHTED = (WeightedRPN, WeightedRoIHeads, WeightedRetinaNetHead, WeightedFCOSHead)
