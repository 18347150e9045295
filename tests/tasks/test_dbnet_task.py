"""DBNet model and task as plain PyTorch: build/forward, one epoch, the one-forward eval grid,
exact restore from a state dict, non-finite losses."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from sweeper.tasks.dbnet.spec import DBNetBase
from sweeper.tasks import NonFiniteLossError
from sweeper.tasks.dbnet.model import build_dbnet
from sweeper.tasks.dbnet.synth import make_synthetic_receipts
from sweeper.tasks.dbnet.task import DBNetTask


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenetv3_small_100"])
@pytest.mark.parametrize("decoder", ["unet", "fpn"])
def test_build_and_forward(backbone: str, decoder: str) -> None:
    model = build_dbnet({"backbone": backbone, "decoder": decoder, "channels": 16, "k": 50})
    out = model(torch.randn(2, 3, 96, 64))
    assert set(out) == {"prob_logits", "prob", "thresh", "binary"}
    for v in out.values():
        assert v.shape == (2, 1, 96, 64) and torch.isfinite(v).all()
    expected = torch.sigmoid(50 * (out["prob"] - out["thresh"]))
    assert torch.allclose(out["binary"], expected)


def test_unknown_decoder_and_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model.decoder"):
        build_dbnet({"backbone": "resnet18", "decoder": "fpnn"})
    with pytest.raises(ValueError, match="model.weights"):
        build_dbnet({"backbone": "resnet18", "weights": str(tmp_path / "nope.pth")})


def test_local_backbone_weights_are_loaded(tmp_path: Path) -> None:
    src = timm.create_model("resnet18")
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    model = build_dbnet({"backbone": "resnet18", "weights": str(tmp_path / "r18.pth"), "pretrained": True})
    assert torch.equal(model.backbone.conv1.weight, src.conv1.weight)


@pytest.fixture(scope="module")
def receipts(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_synthetic_receipts(tmp_path_factory.mktemp("r"), images=8, size=96, seed=0)


def make_config(receipts: dict, **train) -> dict:
    cfg = DBNetBase().model_dump()
    cfg["model"].update(channels=8)
    cfg["train"].update({"epochs": 2, "batch_size": 2, "resolution": 96, "warmup_epochs": 0, "lr": 3e-3, **train})
    cfg.update(task="dbnet", data={"format": "ufo", "train": receipts["train"], "val": receipts["val"],
                                   "images": receipts["images"]}, eval_grid={},
               objective={"metric": "hmean", "mode": "max"})
    return cfg


def test_one_epoch_and_the_eval_grid_uses_one_forward_pass(receipts: dict) -> None:
    cfg = make_config(receipts)
    cfg["eval_grid"] = {"post.box_thresh": [0.3, 0.5], "post.thresh": [0.2, 0.3]}
    task = DBNetTask(cfg)
    metrics = task.train_one_epoch(1)
    assert {"train/loss", "train/lr", "train/images_per_s", "train/loss_prob"} <= set(metrics)
    calls = []
    task.model.register_forward_hook(lambda *a: calls.append(1))
    result = task.evaluate()
    assert len(calls) == len(task.val_loader)  # 4 grid points, one pass
    assert {"precision", "recall", "hmean", "best/post.box_thresh", "best/post.thresh", "default/hmean"} <= set(result)
    assert all(0.0 <= result[k] <= 1.0 for k in ("precision", "recall", "hmean"))


@pytest.mark.parametrize("metric", ["icdar15", "cleval", "cleval_per_image"])
def test_every_metric_can_score_an_evaluation(receipts: dict, metric: str) -> None:
    cfg = make_config(receipts)
    cfg["eval"] = {"metric": metric}
    result = DBNetTask(cfg).evaluate()
    assert set(result) == {"precision", "recall", "hmean"}


def test_state_dict_round_trip_continues_identically(receipts: dict, tmp_path: Path) -> None:
    """Through a file loaded with weights_only=True, as the trainable restores checkpoints."""
    import numpy as np

    a = DBNetTask(make_config(receipts))
    a.train_one_epoch(1)
    torch.save(a.state_dict(), tmp_path / "state.pt")
    numpy_draw = np.random.random()
    loss_a = a.train_one_epoch(2)["train/loss"]
    np.random.seed(123)  # disturb the RNGs: the restore must bring them back
    torch.manual_seed(123)
    b = DBNetTask(make_config(receipts))
    b.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert np.random.random() == numpy_draw
    b.opt.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert b.train_one_epoch(2)["train/loss"] == loss_a


def test_non_finite_loss_raises(receipts: dict) -> None:
    task = DBNetTask(make_config(receipts, lr=1e12, optimizer="sgd"))
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        for epoch in (1, 2):
            task.train_one_epoch(epoch)


def _graded_maps(task: DBNetTask) -> list:
    """Probability maps a model might predict, from the validation labels: every other text line
    confident (0.9), the rest not (0.45), plus faint (0.45) false-positive bars in the empty rows.
    A low box_thresh then finds every line and the bars (best recall), a high one half the lines
    and nothing else (best hmean)."""
    import cv2
    import numpy as np

    out = []
    for _, labels, metas in task.val_loader:
        for prob, mask, meta in zip(labels["prob"].numpy(), labels["prob_mask"].numpy(), metas):
            h, w = (round(s * meta["scale"]) for s in meta["orig_size"])
            text = prob[:h, :w] > 0
            _, lines = cv2.connectedComponents(text.astype(np.uint8))
            graded = np.where(lines % 2 == 1, 0.9, 0.45).astype(np.float32) * text
            empty = set(np.flatnonzero(~text.any(1) & (mask[:h, :w].min(1) == 1)))
            bars = np.where(np.arange(w) % 16 < 10, 0.45, 0.0)[4:-4]
            for y in sorted(empty):
                if y % 8 == 0 and set(range(y, y + 5)) <= empty:
                    graded[y:y + 4, 4:-4] = bars
            out.append((graded, meta))
    return out


@pytest.mark.parametrize("objective, picked", [({"metric": "recall", "mode": "max"}, 0.3),
                                               ({"metric": "hmean", "mode": "max"}, 0.6),
                                               ({"metric": "precision", "mode": "min"}, 0.3)])
def test_the_eval_grid_picks_the_point_best_for_the_objective(receipts: dict, objective: dict, picked: float) -> None:
    cfg = make_config(receipts, resolution=192)  # text lines wide enough to survive the label shrink
    cfg.update(eval_grid={"post.box_thresh": [0.6, 0.3]}, objective=objective)
    task = DBNetTask(cfg)
    maps = _graded_maps(task)
    task.predict_maps = lambda: maps
    at = {bt: task._score(maps, {**task.cfg.post.model_dump(), "box_thresh": bt}) for bt in (0.6, 0.3)}
    assert at[0.3]["recall"] > at[0.6]["recall"] and at[0.3]["hmean"] < at[0.6]["hmean"]  # the grid disagrees
    result = task.evaluate()
    assert result["best/post.box_thresh"] == picked
    assert {k: result[k] for k in ("precision", "recall", "hmean")} == at[picked]
    assert f"default/{objective['metric']}" in result


def test_the_task_says_what_it_resolved_for_itself(receipts: dict) -> None:
    assert DBNetTask(make_config(receipts, amp=True)).runtime == {"device": "cpu", "amp": False, "channels_last": False}
