"""`run_epoch`, the loop both tasks train with, against a plain PyTorch loop written here (zero_grad,
forward, sum the losses, backward, step): same parameters and losses exactly; micro-batches give a
whole batch's gradient; a NaN loss or NaN weights fail the trial. And `best_over_grid` honours the
objective's mode."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sweeper.tasks import NonFiniteLossError
from sweeper.tasks.detection.spec import DetectionTrain
from sweeper.tasks.training import Optimization, best_over_grid, run_epoch

#: plain SGD at a constant LR, no weight decay: what the reference loop's optimizer does too
TRAIN = DetectionTrain(epochs=1, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.0, schedule="constant",
                       warmup_epochs=0.0)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))


def make_batches(steps: int = 3, batch: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, 3, generator=gen), torch.randn(batch, 1, generator=gen)) for _ in range(steps)]


def losses_of(model: nn.Module):  # noqa: ANN201 - the loss function run_epoch takes
    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        pred = model(x)
        return {"loss_mse": ((pred - y) ** 2).mean(), "l1": (pred - y).abs().mean()}

    return loss_fn


def train(model: nn.Module, batches: list, micro: int = 1) -> dict[str, float]:
    opt = Optimization(model, TRAIN, len(batches), amp=False, cuda=False)
    return run_epoch(model, batches, losses_of(model), opt, epoch=1, prepare=lambda b: b, micro=micro)


def test_run_epoch_equals_a_plain_loop_exactly() -> None:
    batches = make_batches()
    model = make_model()
    metrics = train(model, batches)

    ref = make_model()
    opt = torch.optim.SGD(ref.parameters(), lr=TRAIN.lr, momentum=TRAIN.momentum)
    loss_fn = losses_of(ref)
    totals, terms = [], {"loss_mse": [], "l1": []}
    for x, y in batches:
        opt.zero_grad()
        losses = loss_fn(x, y)
        loss = sum(losses.values())
        loss.backward()
        opt.step()
        totals.append(float(loss.detach()))
        for k, v in losses.items():
            terms[k].append(float(v.detach()))

    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    assert metrics["train/loss"] == mean(totals)
    assert metrics["train/loss_mse"] == mean(terms["loss_mse"]) and metrics["train/loss_l1"] == mean(terms["l1"])
    assert metrics["train/lr"] == TRAIN.lr and metrics["train/images_per_s"] > 0


def test_a_loss_entry_is_the_total_and_not_a_term() -> None:
    """DBLoss weights its own terms: its `loss` is what trains, the other entries are logged."""
    model = make_model()
    opt = Optimization(model, TRAIN, 1, amp=False, cuda=False)
    x, y = make_batches(steps=1)[0]

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        l1 = (model(x) - y).abs().mean()
        return {"loss": 3.0 * l1, "loss_l1": l1}

    metrics = run_epoch(model, [(x, y)], loss_fn, opt, epoch=1, prepare=lambda b: b)
    assert set(metrics) == {"train/loss", "train/lr", "train/images_per_s", "train/loss_l1", "model/params_m"}
    assert metrics["train/loss"] == pytest.approx(3.0 * metrics["train/loss_l1"])


def test_two_micro_batches_give_one_batchs_gradient() -> None:
    batches = make_batches()
    whole, split = make_model(), make_model()
    a, b = train(whole, batches), train(split, batches, micro=2)
    for p, q in zip(whole.parameters(), split.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert b["train/loss_mse"] == pytest.approx(a["train/loss_mse"], rel=1e-6)  # equal halves: same mean


def test_dict_targets_are_split_per_key() -> None:
    """DBNet's label maps are a dict of batch tensors: each micro-batch gets its rows of each."""
    model = make_model()
    opt = Optimization(model, TRAIN, 1, amp=False, cuda=False)
    x, y = make_batches(steps=1)[0]
    seen = []

    def loss_fn(x: torch.Tensor, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seen.append((len(x), len(maps["y"])))
        return {"mse": ((model(x) - maps["y"]) ** 2).mean()}

    run_epoch(model, [(x, {"y": y})], loss_fn, opt, epoch=1, prepare=lambda b: b, micro=2)
    assert seen == [(2, 2), (2, 2)]


def test_a_nan_loss_or_nan_weights_raise_non_finite_loss_error() -> None:
    model = make_model()
    batches = make_batches(steps=2)
    opt = Optimization(model, TRAIN, len(batches), amp=False, cuda=False)

    def nan_loss(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss_a": model(x).mean() * float("nan"), "b": model(x).mean()}

    with pytest.raises(NonFiniteLossError, match=r"^epoch 3, step 1/2: non-finite training loss nan \(loss_a=nan, b="):
        run_epoch(model, batches, nan_loss, opt, epoch=3, prepare=lambda b: b)

    def broken(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        raise RuntimeError("matcher failed")

    with pytest.raises(RuntimeError, match="matcher failed") as info:  # finite weights: a real bug
        run_epoch(model, batches, broken, opt, epoch=1, prepare=lambda b: b)
    assert not isinstance(info.value, NonFiniteLossError)
    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1/2: model weights are NaN/inf \(forward failed"):
        run_epoch(model, batches, broken, opt, epoch=2, prepare=lambda b: b)


def test_best_over_grid_follows_the_objective_mode() -> None:
    """A `min` objective picks the smallest value; `max` the largest; the first of equals wins."""
    grid = {"post.t": [0.1, 0.5, 0.9, 0.3]}
    defaults = {"post.t": 0.7}

    def score(point: dict) -> dict[str, float]:
        t = point["post.t"]
        return {"err": abs(t - 0.45), "acc": round(1 - abs(t - 0.2), 6)}

    low = best_over_grid(grid, defaults, score, "err", "min")
    assert low["best/post.t"] == 0.5 and low["err"] == pytest.approx(0.05)
    assert low["default/err"] == pytest.approx(0.25)
    high = best_over_grid(grid, defaults, score, "acc", "max")
    assert high["best/post.t"] == 0.1 and high["default/acc"] == pytest.approx(0.5)  # 0.1 and 0.3 tie: first
    with pytest.raises(ValueError, match="objective.mode"):
        best_over_grid(grid, defaults, score, "err", "lowest")
    with pytest.raises(ValueError, match=r"objective.metric: 'map' is not an evaluation metric"):
        best_over_grid(grid, defaults, score, "map", "max")


def test_an_epoch_reports_the_parameter_count_and_on_cpu_no_gpu_memory() -> None:
    """What `constraints` bound: `model/params_m` (3*8+8 + 8*1+1 = 41 parameters); `gpu/peak_mem_gib`
    only where the model is on a GPU."""
    metrics = train(make_model(), make_batches())
    assert metrics["model/params_m"] == pytest.approx(41 / 1e6)
    assert "gpu/peak_mem_gib" not in metrics
