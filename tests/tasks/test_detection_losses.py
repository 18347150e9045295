"""Size-weighted detection losses: bucket assignment, and the exact effect of per-GT weights.

Every weighted loss is checked on constructed matches against torchvision's own loss: all-ones
weights give torchvision's value, uniform weights w scale the box terms by exactly w, and mixed
weights act per matched ground truth (the loss is linear in the per-GT weights).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from sweeper.tasks.detection.losses import (WeightedFCOSHead, WeightedRetinaNetHead, WeightedRoIHeads, WeightedRPN,
                                            attach_size_weights, matched_weights, size_bucket_weights,
                                            size_weights_active, weighted_fastrcnn_loss)
from sweeper.tasks.detection.model import build_model

WEIGHTS = {"small": 3.0, "medium": 1.5, "large": 1.0}
Losses = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- buckets
@pytest.mark.parametrize("size, bucket", [
    (0.0, "small"),
    (31.999, "small"),
    (32.0, "medium"),     # exactly 32 px (a 32 x 32 box) is medium: the schema's rule, small is s < 32
    (64.0, "medium"),
    (95.999, "medium"),
    (96.0, "large"),      # the same rule at the upper threshold: large is s >= 96
    (1000.0, "large"),
])
def test_size_bucket_at_boundaries(size: float, bucket: str) -> None:
    w = size_bucket_weights(torch.tensor([size]), (32, 96), WEIGHTS)
    assert w.dtype == torch.float32 and float(w[0]) == WEIGHTS[bucket]


def test_size_bucket_of_a_32_px_square_box_is_medium() -> None:
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0], [10.0, 10.0, 41.0, 42.0], [0.0, 0.0, 96.0, 96.0]])
    sizes = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()  # 32, sqrt(31*32) < 32, 96
    assert size_bucket_weights(sizes, (32.0, 96.0), WEIGHTS).tolist() == [1.5, 3.0, 1.0]


def test_size_bucket_weights_defaults_and_errors() -> None:
    sizes = torch.tensor([4, 40, 400])  # ints are fine
    assert size_bucket_weights(sizes, (32, 96), {"small": 2.0}).tolist() == [2.0, 1.0, 1.0]
    assert size_bucket_weights(torch.zeros(0), (32, 96), WEIGHTS).shape == (0,)
    with pytest.raises(ValueError, match=r"loss\.size_weights: unknown bucket\(s\) \['smal'\]"):
        size_bucket_weights(sizes, (32, 96), {"smal": 2.0})
    with pytest.raises(ValueError, match=r"loss\.size_thresholds: need two increasing positive sizes"):
        size_bucket_weights(sizes, (96, 32), WEIGHTS)


def test_attach_size_weights() -> None:
    targets = [{"boxes": torch.zeros(3, 4), "sizes": torch.tensor([10.0, 32.0, 100.0])},
               {"boxes": torch.zeros(0, 4), "sizes": torch.zeros(0)}]
    neutral = {"size_weights": {"small": 1.0, "medium": 1.0, "large": 1.0}, "size_thresholds": (32, 96)}
    assert not size_weights_active(neutral) and not size_weights_active(None)
    assert attach_size_weights(targets, neutral) is targets  # torchvision's own losses by default
    cfg = {"size_weights": WEIGHTS, "size_thresholds": (32, 96)}
    out = attach_size_weights(targets, cfg)
    assert out[0]["weights"].tolist() == [3.0, 1.5, 1.0] and out[1]["weights"].shape == (0,)
    assert "weights" not in targets[0]  # inputs are not modified
    with pytest.raises(ValueError, match=r"loss\.size_weights: training target 1 has no 'sizes' entry"):
        attach_size_weights([targets[0], {"boxes": torch.zeros(1, 4)}], cfg)


def test_matched_weights() -> None:
    target = {"boxes": torch.zeros(2, 4), "weights": torch.tensor([3.0, 0.5])}
    matched = torch.tensor([0, 1, -1, -2, 1, 0])
    assert matched_weights(target, matched, matched >= 0).tolist() == [3.0, 0.5, 1.0, 1.0, 0.5, 3.0]
    no_gt = {"boxes": torch.zeros(0, 4), "weights": torch.zeros(0)}
    assert matched_weights(no_gt, torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.bool)).tolist() == [1.0] * 3
    assert matched_weights({"boxes": torch.zeros(2, 4)}, matched, matched >= 0).tolist() == [1.0] * 6
    with pytest.raises(ValueError, match=r"one weight per box: shape \(1,\) for 2 boxes"):
        matched_weights({"boxes": torch.zeros(2, 4), "weights": torch.ones(1)}, matched, matched >= 0)


# --------------------------------------------------------------------------- exact weighting
def _assert_weighted(loss: Callable[[list[torch.Tensor] | None, bool], Losses], n_gt: list[int],
                     box_keys: set[str], cls_keys: set[str], exact_keys: set[str]) -> None:
    """``loss(weights per image or None, weight_cls)`` against itself without weights (torchvision's).

    The samples matched to the first GT predict it exactly (class and box), so its share of the
    class terms and of ``exact_keys`` is 0: that pins each weight to the right GT (linearity alone
    would not see two GTs' weights swapped).
    """
    ref = loss(None, False)
    assert set(ref) == box_keys | cls_keys
    close = dict(rtol=1e-5, atol=1e-7)

    def full(value: float) -> list[torch.Tensor]:
        return [torch.full((n,), value) for n in n_gt]

    for weight_cls in (False, True):  # all-ones weights: torchvision's losses
        for k, v in loss(full(1.0), weight_cls).items():
            torch.testing.assert_close(v, ref[k], **close)
    for weight_cls in (False, True):  # uniform weights: box terms exactly x w
        got = loss(full(2.5), weight_cls)
        for k in box_keys:
            torch.testing.assert_close(got[k], 2.5 * ref[k], **close)
        for k in cls_keys:
            if weight_cls:
                assert float(got[k]) > float(ref[k]) * (1 + 1e-4)  # positives weigh more, background the same
            else:
                torch.testing.assert_close(got[k], ref[k], **close)
    # per matched GT: L(w) = L(0) + sum_g w_g (L(e_g) - L(0)), e_g = weight 1 on GT g only
    total = sum(n_gt)
    mixed = torch.tensor([3.0, 0.5, 1.5, 2.0, 0.25, 4.0][:total])

    def split(flat: torch.Tensor) -> list[torch.Tensor]:
        return list(flat.split(n_gt))

    for weight_cls in (False, True):
        zero = loss(full(0.0), weight_cls)
        parts = [loss(split(torch.eye(total)[g]), weight_cls) for g in range(total)]
        got = loss(split(mixed), weight_cls)
        for k in box_keys | cls_keys:
            expected = zero[k] + sum(w * (p[k] - zero[k]) for w, p in zip(mixed.tolist(), parts))
            torch.testing.assert_close(got[k], expected, **close)
        for k in box_keys:
            assert float(zero[k]) == 0.0 and all(float(p[k]) > 0 for p in parts[1:])  # every GT has matches
            assert (abs(float(parts[0][k])) < 1e-6) == (k in exact_keys), k
        for k in cls_keys if weight_cls else ():
            shares = [float(p[k] - zero[k]) for p in parts]
            assert abs(shares[0]) < 1e-6 and all(share > 0 for share in shares[1:]), (k, shares)


def _exact_logits(num_classes: int, label: int) -> torch.Tensor:
    """Logits so confident in ``label`` that focal, cross-entropy and BCE losses are ~0."""
    logits = torch.full((num_classes,), -30.0)
    logits[label] = 30.0
    return logits


def _with_weights(targets: list[dict], weights: list[torch.Tensor] | None) -> list[dict]:
    if weights is None:
        return targets
    return [{**t, "weights": w} for t, w in zip(targets, weights)]


GT = [  # three images: two boxes, one box, none (a negatives-only image)
    {"boxes": torch.tensor([[4.0, 6.0, 30.0, 28.0], [34.0, 30.0, 62.0, 60.0]]), "labels": torch.tensor([1, 2])},
    {"boxes": torch.tensor([[10.0, 12.0, 50.0, 44.0]]), "labels": torch.tensor([2])},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
]
N_GT = [2, 1, 0]


def _grid_anchors(stride: int, size: int, extent: int = 64) -> torch.Tensor:
    c = torch.arange(stride / 2, extent, stride)
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    centres = torch.stack([cx.flatten(), cy.flatten()], 1)
    return torch.cat([centres - size / 2, centres + size / 2], 1)


def _centre_matches(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Index of the first GT containing each anchor's centre (-1: background; -2 on every 7th
    background anchor, torchvision's "between thresholds" = ignored)."""
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    matched = torch.full((len(anchors),), -1, dtype=torch.int64)
    for g in reversed(range(len(boxes))):
        inside = (centres > boxes[g, :2]).all(1) & (centres < boxes[g, 2:]).all(1)
        matched[inside] = g
    matched[(matched == -1) & (torch.arange(len(anchors)) % 7 == 0)] = -2
    return matched


def test_retinanet_head_weights_per_matched_gt() -> None:
    torch.manual_seed(0)
    anchors = [_grid_anchors(8, 16)] * 3
    matched = [_centre_matches(a, t["boxes"]) for a, t in zip(anchors, GT)]
    outputs = {"cls_logits": torch.randn(3, len(anchors[0]), 3), "bbox_regression": 0.3 * torch.randn(3, len(anchors[0]), 4)}
    torchvision_head, head = RetinaNetHead(8, 1, 3), WeightedRetinaNetHead(8, 1, 3)
    first = matched[0] == 0  # anchors of the first GT classify and regress it exactly
    outputs["cls_logits"][0, first] = _exact_logits(3, int(GT[0]["labels"][0]))
    outputs["bbox_regression"][0, first] = head.regression_head.box_coder.encode_single(
        GT[0]["boxes"][[0] * int(first.sum())], anchors[0][first])
    reference = torchvision_head.compute_loss(GT, outputs, anchors, matched)

    def loss(weights: list[torch.Tensor] | None, weight_cls: bool) -> Losses:
        if weights is None:
            return reference
        head.size_weight_cls = weight_cls
        return head.compute_loss(_with_weights(GT, weights), outputs, anchors, matched)

    _assert_weighted(loss, N_GT, {"bbox_regression"}, {"classification"}, {"bbox_regression"})


def test_fcos_head_weights_per_matched_gt() -> None:
    torch.manual_seed(0)
    anchors = [_grid_anchors(8, 8)] * 3
    matched = [_centre_matches(a, t["boxes"]).clamp(min=-1) for a, t in zip(anchors, GT)]  # FCOS: no ignores
    a = len(anchors[0])
    outputs = {"cls_logits": torch.randn(3, a, 3), "bbox_regression": torch.rand(3, a, 4) + 0.2,
               "bbox_ctrness": torch.randn(3, a, 1)}
    torchvision_head, head = FCOSHead(32, 1, 3), WeightedFCOSHead(32, 1, 3)
    first = matched[0] == 0  # locations of the first GT classify and regress it exactly (centerness BCE is not 0)
    outputs["cls_logits"][0, first] = _exact_logits(3, int(GT[0]["labels"][0]))
    outputs["bbox_regression"][0, first] = head.box_coder.encode(anchors[0][first], GT[0]["boxes"][[0] * int(first.sum())])
    reference = torchvision_head.compute_loss(GT, outputs, anchors, matched)

    def loss(weights: list[torch.Tensor] | None, weight_cls: bool) -> Losses:
        if weights is None:
            return reference
        head.size_weight_cls = weight_cls
        return head.compute_loss(_with_weights(GT, weights), outputs, anchors, matched)

    # centerness is weighted with the regression: a per-positive term of the same box branch
    _assert_weighted(loss, N_GT, {"bbox_regression", "bbox_ctrness"}, {"classification"}, {"bbox_regression"})


def _rpn(cls: type) -> RegionProposalNetwork:
    return cls(AnchorGenerator(((16,),), ((1.0,),)), RPNHead(8, 1), fg_iou_thresh=0.5, bg_iou_thresh=0.3,
               batch_size_per_image=32, positive_fraction=0.5, pre_nms_top_n={"training": 100, "testing": 100},
               post_nms_top_n={"training": 50, "testing": 50}, nms_thresh=0.7)


def test_rpn_weights_per_matched_gt() -> None:
    torch.manual_seed(0)
    anchors = [torch.cat([_grid_anchors(8, 16), _grid_anchors(8, 32)])] * 3
    objectness, deltas = torch.randn(3 * len(anchors[0]), 1), 0.2 * torch.randn(3 * len(anchors[0]), 4)

    def run(rpn: RegionProposalNetwork, targets: list[dict]) -> tuple[Losses, list[torch.Tensor]]:
        labels, matched_boxes = rpn.assign_targets_to_anchors(anchors, targets)
        regression_targets = rpn.box_coder.encode(matched_boxes, anchors)
        torch.manual_seed(1)  # the same random positive/negative sample every time
        obj, box = rpn.compute_loss(objectness, deltas, labels, regression_targets)
        return {"loss_objectness": obj, "loss_rpn_box_reg": box}, labels

    tv_rpn = _rpn(RegionProposalNetwork)
    ref_labels, matched_boxes = tv_rpn.assign_targets_to_anchors(anchors, GT)
    first = (ref_labels[0] == 1) & (matched_boxes[0] == GT[0]["boxes"][0]).all(1)  # anchors matched to GT 0
    assert first.any()
    deltas[: len(anchors[0])][first] = tv_rpn.box_coder.encode_single(matched_boxes[0][first], anchors[0][first])
    objectness[: len(anchors[0])][first] = 30.0
    reference, _ = run(tv_rpn, GT)
    rpn = _rpn(WeightedRPN)
    _, labels = run(rpn, _with_weights(GT, [torch.ones(n) for n in N_GT]))
    assert all(torch.equal(a, b) for a, b in zip(labels, ref_labels))  # torchvision's assignment
    assert sum(int((lab == 1).sum()) for lab in labels) < 16  # every positive is sampled: exact linearity

    def loss(weights: list[torch.Tensor] | None, weight_cls: bool) -> Losses:
        if weights is None:
            return reference
        rpn.size_weight_cls = weight_cls
        return run(rpn, _with_weights(GT, weights))[0]

    _assert_weighted(loss, N_GT, {"loss_rpn_box_reg"}, {"loss_objectness"}, {"loss_rpn_box_reg"})
    assert rpn._anchor_weights is None  # consumed by compute_loss


def test_fastrcnn_loss_weights_per_sample() -> None:
    torch.manual_seed(0)
    labels = [torch.tensor([1, 2, 0, 0, 2, 1, 0]), torch.tensor([2, 0, 2, 0])]
    matched = [torch.tensor([0, 1, 0, 0, 1, 0, 0]), torch.tensor([0, 0, 0, 0])]  # clamped, as torchvision's
    targets = [GT[0], GT[1]]
    n = sum(len(x) for x in labels)
    logits, regression = torch.randn(n, 3), 0.2 * torch.randn(n, 3 * 4)
    regression_targets = [0.2 * torch.randn(len(x), 4) for x in labels]
    for i in torch.where((matched[0] == 0) & (labels[0] > 0))[0]:  # proposals of the first GT: exact
        regression.view(n, 3, 4)[i, labels[0][i]] = regression_targets[0][i]
        logits[i] = _exact_logits(3, int(labels[0][i]))
    reference = dict(zip(("loss_classifier", "loss_box_reg"),
                         fastrcnn_loss(logits, regression, labels, regression_targets)))

    def loss(weights: list[torch.Tensor] | None, weight_cls: bool) -> Losses:
        if weights is None:
            return reference
        per_sample = [matched_weights({**t, "weights": w}, m, lab > 0)
                      for t, w, m, lab in zip(targets, weights, matched, labels)]
        return dict(zip(("loss_classifier", "loss_box_reg"), weighted_fastrcnn_loss(
            logits, regression, labels, regression_targets, per_sample, weight_cls)))

    _assert_weighted(loss, [2, 1], {"loss_box_reg"}, {"loss_classifier"}, {"loss_box_reg"})


# --------------------------------------------------------------------------- whole detectors
BOX_TERMS = {"faster_rcnn": {"loss_box_reg", "loss_rpn_box_reg"}, "retinanet": {"bbox_regression"},
             "fcos": {"bbox_regression", "bbox_ctrness"}}


@pytest.mark.parametrize("arch", sorted(BOX_TERMS))
def test_detector_box_losses_scale_by_the_weights(arch: str) -> None:
    torch.manual_seed(0)
    cfg = {"arch": arch, "backbone": "mobilenetv3_small_100", "fpn_channels": 16, "box_batch_size_per_image": 64}
    model = build_model(cfg, num_classes=3, resolution=64).train()
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]

    def losses(model: torch.nn.Module, weight: float | None) -> Losses:
        torch.manual_seed(1)  # Faster R-CNN samples anchors and proposals at random
        targets = GT if weight is None else _with_weights(GT, [torch.full((n,), weight) for n in N_GT])
        with torch.no_grad():
            return model(images, targets)

    reference = losses(model, None)
    assert all(math.isfinite(float(v)) for v in reference.values())
    for k, v in losses(model, 1.0).items():
        torch.testing.assert_close(v, reference[k], rtol=1e-5, atol=1e-7)
    doubled = losses(model, 2.0)
    for k, v in doubled.items():
        expected = 2 * reference[k] if k in BOX_TERMS[arch] else reference[k]
        torch.testing.assert_close(v, expected, rtol=1e-5, atol=1e-7)
    # with loss.size_weight_cls the classification of positives is weighted too
    cls_model = build_model(cfg, num_classes=3, resolution=64, loss_cfg={"size_weight_cls": True}).train()
    weighted = [m for m in cls_model.modules()
                if isinstance(m, (WeightedRPN, WeightedRoIHeads, WeightedRetinaNetHead, WeightedFCOSHead))]
    assert len(weighted) == (2 if arch == "faster_rcnn" else 1) and all(m.size_weight_cls for m in weighted)
    cls_model.load_state_dict(model.state_dict())  # the same weights, so the same reference
    for k, v in losses(cls_model, 2.0).items():
        if k in BOX_TERMS[arch]:
            torch.testing.assert_close(v, doubled[k], rtol=1e-5, atol=1e-7)
        else:
            assert float(v) > float(reference[k])
    for k, v in losses(cls_model, 0.0).items():  # positives weigh nothing; background still counts
        if k not in BOX_TERMS[arch]:
            assert 0 < float(v) < float(reference[k])
