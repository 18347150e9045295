"""DBNet loss: balanced BCE on the probability map, masked L1 on the threshold map, dice on the binary map.

Contract
--------
``DBLoss(prob=5.0, thresh=10.0, binary=1.0, ohem_ratio=3.0)(out, batch)`` returns
``{"loss", "loss_prob", "loss_thresh", "loss_binary"}`` where ``loss = prob * loss_prob +
thresh * loss_thresh + binary * loss_binary`` and the three terms are *unweighted* (so logged curves
stay comparable across weight sweeps). The 5 / 10 / 1 defaults are what MhLiao/DB, mmocr and the
Upstage baseline use (DOMAIN.md §1.3); the paper's 1 / 10 / 1 is one ``prob=1.0`` away.

* ``out``: ``"prob_logits"`` (B, 1, H, W) pre-sigmoid probability map, and in training ``"thresh"``
  (threshold map) and ``"binary"`` (approximate binary map, sigmoid(k (P - T))). A missing
  ``"thresh"`` / ``"binary"`` (an eval-mode forward) makes that term 0.
* ``batch``: ``"prob"``, ``"prob_mask"``, ``"thresh"``, ``"thresh_mask"`` (B, H, W) from
  ``labels.make_labels``. Prediction maps may carry the channel dim (B, 1, H, W); it is squeezed.
* Every term is reduced over the whole batch (pixels of all images pooled), is computed in float32
  (safe under autocast), and is 0, never NaN, when its mask is empty.

Usage::

    criterion = DBLoss(ohem_ratio=3.0)
    losses = criterion(model(images), maps)   # maps: dict of (B, H, W) tensors
    losses["loss"].backward()
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _as_bhw(x: Tensor) -> Tensor:
    """(B, 1, H, W) -> (B, H, W) in float32; other shapes pass through (the loss is elementwise)."""
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    return x.float()


def _zero(like: Tensor) -> Tensor:
    """A 0 that stays attached to the graph, so ``backward()`` works on an all-masked batch."""
    return like.sum() * 0.0


def balanced_bce(logits: Tensor, target: Tensor, mask: Tensor, ohem_ratio: float = 3.0,
                 eps: float = 1e-6) -> Tensor:
    """BCE-with-logits over all positive pixels plus the hardest negatives (online hard-negative mining).

    Text covers a few percent of a page, so plain BCE would be dominated by easy background. Keep
    every positive (target > 0.5 inside ``mask``) and the k negatives with the largest loss, with
    k = min(#negatives, floor(ohem_ratio * #positives)); the loss is their sum / (#pos + k + eps).
    A batch without positives therefore gives 0, like the reference implementations.
    """
    logits, target, mask = _as_bhw(logits), _as_bhw(target), _as_bhw(mask)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    valid = mask > 0.5
    pos = valid & (target > 0.5)
    neg = valid & ~(target > 0.5)
    n_pos = int(pos.sum())
    n_neg = min(int(neg.sum()), int(n_pos * ohem_ratio))
    if n_pos + n_neg == 0:
        return _zero(logits)
    total = loss[pos].sum()
    if n_neg > 0:
        total = total + torch.topk(loss[neg], n_neg, sorted=False).values.sum()
    return total / (n_pos + n_neg + eps)


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean |pred - target| over pixels where mask > 0 (mask-weighted); 0 for an empty mask."""
    pred, target, mask = _as_bhw(pred), _as_bhw(target), _as_bhw(mask)
    denom = mask.sum()
    if denom <= 0:
        return _zero(pred)
    return ((pred - target).abs() * mask).sum() / denom


def dice_loss(pred: Tensor, target: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """1 - 2 sum(p g m) / (sum(p m) + sum(g m) + eps), pooled over the batch; 0 for an empty mask.

    Dice is scale-free, which suits the binary map: its sigmoid(k (P - T)) saturates, so a BCE on it
    would give vanishing or exploding gradients. As in the references, a masked region with no text
    and near-zero predictions scores ~1 with ~0 gradient (it is constant, not a penalty).
    """
    pred, target, mask = _as_bhw(pred), _as_bhw(target), _as_bhw(mask)
    if mask.sum() <= 0:
        return _zero(pred)
    inter = (pred * target * mask).sum()
    union = (pred * mask).sum() + (target * mask).sum() + eps
    return 1.0 - 2.0 * inter / union


class DBLoss(nn.Module):
    """Weighted sum of the three DBNet terms; see the module docstring for inputs and outputs."""

    def __init__(self, prob: float = 5.0, thresh: float = 10.0, binary: float = 1.0,
                 ohem_ratio: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        if ohem_ratio < 0:
            raise ValueError(f"DBLoss: ohem_ratio must be >= 0, got {ohem_ratio}")
        self.weights = {"prob": float(prob), "thresh": float(thresh), "binary": float(binary)}
        self.ohem_ratio = float(ohem_ratio)
        self.eps = float(eps)

    def extra_repr(self) -> str:
        w = self.weights
        return f"prob={w['prob']}, thresh={w['thresh']}, binary={w['binary']}, ohem_ratio={self.ohem_ratio}"

    def forward(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if "prob_logits" not in out:
            raise KeyError(f"DBLoss needs out['prob_logits'] (pre-sigmoid probability map); got keys {sorted(out)}")
        logits = out["prob_logits"]
        loss_prob = balanced_bce(logits, batch["prob"], batch["prob_mask"], self.ohem_ratio, self.eps)
        if "thresh" in out:
            loss_thresh = masked_l1(out["thresh"], batch["thresh"], batch["thresh_mask"])
        else:
            loss_thresh = _zero(logits.float())
        if "binary" in out:
            loss_binary = dice_loss(out["binary"], batch["prob"], batch["prob_mask"], self.eps)
        else:
            loss_binary = _zero(logits.float())
        w = self.weights
        loss = w["prob"] * loss_prob + w["thresh"] * loss_thresh + w["binary"] * loss_binary
        return {"loss": loss, "loss_prob": loss_prob, "loss_thresh": loss_thresh, "loss_binary": loss_binary}
