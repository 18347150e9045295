"""DBNet loss: OHEM against brute force, masking, perfect predictions, weights, finite gradients."""
from __future__ import annotations

import math

import pytest
import torch

from sweeper.tasks.dbnet.loss import DBLoss, balanced_bce, dice_loss, masked_l1


def _bce(x: float, y: float) -> float:
    p = 1.0 / (1.0 + math.exp(-x))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def _case(seed: int = 0, b: int = 2, h: int = 12, w: int = 16) -> tuple[dict, dict]:
    """Random predictions and a label batch with text, a don't-care block and a threshold band."""
    g = torch.Generator().manual_seed(seed)
    prob = torch.zeros(b, h, w)
    prob[:, 3:6, 4:10] = 1.0
    prob_mask = torch.ones(b, h, w)
    prob_mask[:, 8:11, 10:15] = 0.0
    thresh = 0.3 + 0.4 * torch.rand(b, h, w, generator=g)
    thresh_mask = torch.zeros(b, h, w)
    thresh_mask[:, 1:8, 2:12] = 1.0
    out = {"prob_logits": torch.randn(b, 1, h, w, generator=g) * 3,
           "thresh": torch.rand(b, 1, h, w, generator=g),
           "binary": torch.rand(b, 1, h, w, generator=g)}
    out["prob"] = torch.sigmoid(out["prob_logits"])
    batch = {"prob": prob, "prob_mask": prob_mask, "thresh": thresh, "thresh_mask": thresh_mask}
    return out, batch


def _brute_force_bce(logits, target, mask, ratio: float) -> tuple[float, int]:
    pos, neg = [], []
    for x, y, m in zip(logits.flatten().tolist(), target.flatten().tolist(), mask.flatten().tolist()):
        if m > 0.5:
            (pos if y > 0.5 else neg).append(_bce(x, y))
    k = min(len(neg), int(len(pos) * ratio))
    hardest = sorted(neg, reverse=True)[:k]
    return (sum(pos) + sum(hardest)) / (len(pos) + k + 1e-6), k


@pytest.mark.parametrize("ratio", [3.0, 1.0, 0.5])
def test_ohem_matches_brute_force_and_keeps_exactly_ratio_negatives(ratio):
    out, batch = _case()
    logits = out["prob_logits"].clone().requires_grad_(True)
    loss = balanced_bce(logits, batch["prob"], batch["prob_mask"], ohem_ratio=ratio)
    expected, k = _brute_force_bce(logits.detach()[:, 0], batch["prob"], batch["prob_mask"], ratio)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    n_pos = int(batch["prob"].sum())                        # 2 images x 18 px
    assert k == int(n_pos * ratio)
    # Gradient flows to exactly the positives and the k mined negatives.
    loss.backward()
    touched = logits.grad[:, 0] != 0
    assert int((touched & (batch["prob"] > 0.5)).sum()) == n_pos
    assert int((touched & (batch["prob"] < 0.5)).sum()) == k
    assert not (touched & (batch["prob_mask"] == 0)).any()


def test_ohem_uses_all_negatives_when_there_are_few():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    target = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    mask = torch.ones(1, 4)
    expected = (_bce(2, 1) + _bce(-1, 1) + _bce(0.5, 1) + _bce(3, 0)) / (4 + 1e-6)
    assert balanced_bce(logits, target, mask, 3.0).item() == pytest.approx(expected, rel=1e-6)


def test_bce_is_stable_for_extreme_logits():
    logits = torch.tensor([[1000.0, -1000.0, 1000.0, -1000.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    loss = balanced_bce(logits, target, torch.ones(1, 4), 3.0)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(2000.0 / 4, rel=1e-3)  # two wrong by 1000
    assert torch.isfinite(logits.grad).all()


def test_masked_terms_ignore_dont_care_pixels():
    out, batch = _case()
    base = DBLoss()(out, batch)
    changed = {k: v.clone() for k, v in out.items()}
    outside_prob = (batch["prob_mask"] == 0).unsqueeze(1)
    outside_thresh = (batch["thresh_mask"] == 0).unsqueeze(1)
    changed["prob_logits"][outside_prob] = 50.0
    changed["binary"][outside_prob] = 1.0
    changed["thresh"][outside_thresh] = -7.0
    after = DBLoss()(changed, batch)
    for key in base:
        assert after[key].item() == pytest.approx(base[key].item(), rel=1e-6), key
    # ...while a change inside the masks does move each term.
    changed["prob_logits"][~outside_prob] += 1.0
    changed["binary"][~outside_prob] *= 0.5
    changed["thresh"][~outside_thresh] += 0.1
    moved = DBLoss()(changed, batch)
    for key in ("loss_prob", "loss_thresh", "loss_binary"):
        assert moved[key].item() != pytest.approx(base[key].item(), rel=1e-4), key


def test_perfect_prediction_gives_zero_dice_and_l1():
    _, batch = _case()
    assert dice_loss(batch["prob"].unsqueeze(1), batch["prob"], batch["prob_mask"]).item() == pytest.approx(0, abs=1e-6)
    assert masked_l1(batch["thresh"].unsqueeze(1), batch["thresh"], batch["thresh_mask"]).item() == 0.0
    out = {"prob_logits": (batch["prob"] * 40 - 20).unsqueeze(1), "thresh": batch["thresh"].clone(),
           "binary": batch["prob"].clone()}
    losses = DBLoss()(out, batch)
    assert losses["loss"].item() == pytest.approx(0, abs=1e-6)


def test_masked_l1_is_mask_weighted_mean():
    pred = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    target = torch.zeros(1, 4)
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    assert masked_l1(pred, target, mask).item() == pytest.approx(4 / 3)


def test_empty_masks_give_zero_not_nan_and_backprop():
    out, batch = _case()
    out = {k: v.clone().requires_grad_(True) for k, v in out.items()}
    batch = dict(batch, prob_mask=torch.zeros_like(batch["prob_mask"]),
                 thresh_mask=torch.zeros_like(batch["thresh_mask"]))
    losses = DBLoss()(out, batch)
    for key, value in losses.items():
        assert value.item() == 0.0, key
    losses["loss"].backward()
    assert all(torch.isfinite(v.grad).all() for v in out.values() if v.grad is not None)
    # No text at all (mask full, no positives): OHEM mines nothing, so 0 as in the references.
    no_text = dict(batch, prob=torch.zeros_like(batch["prob"]), prob_mask=torch.ones_like(batch["prob"]))
    assert DBLoss()(out, no_text)["loss_prob"].item() == 0.0


def test_weights_combine_5_10_1_by_default_and_are_configurable():
    out, batch = _case(seed=3)
    default = DBLoss()(out, batch)
    parts = default["loss_prob"], default["loss_thresh"], default["loss_binary"]
    assert default["loss"].item() == pytest.approx(5 * parts[0].item() + 10 * parts[1].item() + parts[2].item())
    custom = DBLoss(prob=1.0, thresh=2.5, binary=0.0)(out, batch)
    assert custom["loss"].item() == pytest.approx(parts[0].item() + 2.5 * parts[1].item())
    for key in ("loss_prob", "loss_thresh", "loss_binary"):  # terms are reported unweighted
        assert custom[key].item() == pytest.approx(default[key].item())
    assert "ohem_ratio=3.0" in repr(DBLoss())


def test_missing_optional_outputs_and_missing_logits():
    out, batch = _case()
    only_prob = DBLoss()({"prob_logits": out["prob_logits"]}, batch)
    assert only_prob["loss_thresh"].item() == 0 and only_prob["loss_binary"].item() == 0
    assert only_prob["loss"].item() == pytest.approx(5 * only_prob["loss_prob"].item())
    with pytest.raises(KeyError, match="prob_logits"):
        DBLoss()({"prob": out["prob"]}, batch)
    with pytest.raises(ValueError, match="ohem_ratio"):
        DBLoss(ohem_ratio=-1)


def test_gradients_are_finite_through_a_tiny_head():
    out, batch = _case(seed=5)
    torch.manual_seed(0)
    feats = torch.randn(2, 4, 12, 16)
    head = torch.nn.Conv2d(4, 2, 3, padding=1)
    y = head(feats)
    logits, t = y[:, :1] * 20, torch.sigmoid(y[:, 1:])
    pred = {"prob_logits": logits, "prob": torch.sigmoid(logits), "thresh": t,
            "binary": torch.sigmoid(50 * (torch.sigmoid(logits) - t))}
    losses = DBLoss()(pred, batch)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in head.parameters())
