"""The replay simulator (sweeper.replay) on fabricated learning curves: real Ray schedulers, driven
by recorded results, judged by compute and regret."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from sweeper.replay import SCHEDULERS, Curve, Setting, available, replay, replay_named
from sweeper.scheduler import PersistentASHA


def crossing_curves(n: int, epochs: int, seed: int = 0) -> list[Curve]:
    """Saturating curves with random finals and speeds: fast starters and slow ones cross."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        final, speed = rng.uniform(0.3, 0.9), rng.uniform(0.3, 3.0)
        values = tuple(final * (1 - math.exp(-3 * speed * e / epochs)) + rng.gauss(0, 0.005)
                       for e in range(1, epochs + 1))
        cost = rng.uniform(0.5, 2.0)
        out.append(Curve(values=values, epoch_s=(cost,) * epochs, key=f"c{i}"))
    return out


def late_bloomer_set(n: int = 11, epochs: int = 9) -> list[Curve]:
    """n - 1 steady curves and one that is the worst for two epochs, the best from epoch 3 on."""
    curves = [Curve(values=tuple(0.2 + 0.03 * i + 0.01 * e for e in range(1, epochs + 1)), key=f"steady{i}")
              for i in range(n - 1)]
    bloomer = (0.01, 0.05, *(0.6 + 0.02 * e for e in range(3, epochs + 1)))
    return [*curves, Curve(values=bloomer, key="bloomer")]


def asha(grace: int, max_t: int, rf: float = 3) -> PersistentASHA:
    return PersistentASHA(time_attr="epoch", max_t=max_t, grace_period=grace, reduction_factor=rf, state_path=None)


@pytest.mark.parametrize("workers", [1, 3, 8])
def test_fifo_trains_everything_and_returns_the_best(workers: int) -> None:
    curves = crossing_curves(30, 6)
    r = replay_named("fifo", curves, mode="max", max_t=6, workers=workers, seed=1)
    assert r.compute_fraction == 1.0 and r.cost_fraction == pytest.approx(1.0)
    assert r.regret == 0.0 and r.trial_epochs == 180
    assert r.chosen == max(range(30), key=lambda i: curves[i].values[-1])
    assert r.epochs == (6,) * 30
    assert r.wall_s >= sum(c.epoch_s[0] * 6 for c in curves) / workers  # no worker does two epochs at once


def test_grace_1_asha_loses_the_late_bloomer_and_a_later_grace_keeps_it() -> None:
    curves = late_bloomer_set()
    bloomer = len(curves) - 1
    early = [replay(curves, lambda: asha(1, 9), mode="max", max_t=9, workers=2, seed=s) for s in range(20)]
    late = [replay(curves, lambda: asha(3, 9), mode="max", max_t=9, workers=2, seed=s) for s in range(20)]
    # it loses whenever it arrives after two others: at epoch 1 it is the worst of any rung
    lost = [r for r in early if r.chosen != bloomer]
    assert len(lost) >= 12 and all(r.regret > 0.25 for r in lost)
    assert all(r.epochs[bloomer] == 1 for r in lost)
    assert all(r.chosen == bloomer and r.regret == 0.0 for r in late)
    assert np.median([r.compute_fraction for r in late]) < 1.0  # still stops the steady ones


def test_replay_is_deterministic_for_a_seed_and_leaves_numpy_alone() -> None:
    curves = crossing_curves(40, 8)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    runs = [replay(curves, lambda: SCHEDULERS["ray-asha"](Setting(8, 40)), mode="max", max_t=8, workers=4,
                   seed=s) for s in (7, 7, 8)]
    assert np.array_equal(np.random.get_state()[1], before)
    assert runs[0] == runs[1]
    assert runs[0].epochs != runs[2].epochs  # another arrival order, other trials stopped


def test_truncated_curves_end_where_they_stop() -> None:
    full = Curve(values=(0.1, 0.2, 0.3, 0.4))
    short = Curve(values=(0.5, 0.9))  # better, but it never reaches max_t
    r = replay([full, short], lambda: SCHEDULERS["fifo"](Setting(4, 2)), mode="max", max_t=4, workers=1, seed=0)
    assert r.trial_epochs == 6 and r.compute_fraction == 1.0 and r.epochs == (4, 2)
    # the scheduler returns what reached max_t; exhaustive training's best is the truncated curve's end
    assert r.chosen == 0 and r.regret == pytest.approx((0.9 - 0.4) / 0.9)
    only_short = replay([Curve(values=(0.5,)), Curve(values=(0.2, 0.3))], lambda: SCHEDULERS["fifo"](Setting(4, 2)),
                        mode="max", max_t=4, workers=2, seed=0)
    assert only_short.chosen == 1  # none reached max_t: the best at the furthest epoch reached


def test_min_mode_and_regret_direction() -> None:
    curves = [Curve(values=(1.0, 0.5)), Curve(values=(0.9, 0.8)), Curve(values=(2.0, 0.4))]
    r = replay(curves, lambda: asha(1, 2, rf=2), mode="min", max_t=2, workers=1, seed=3)
    best = 0.4
    assert r.regret == pytest.approx((curves[r.chosen].values[-1] - best) / best)
    fifo = replay(curves, lambda: SCHEDULERS["fifo"](Setting(2, 3)), mode="min", max_t=2, workers=1, seed=3)
    assert fifo.chosen == 2 and fifo.regret == 0.0


def test_top_k_after_one_epoch_spends_exactly_its_budget() -> None:
    curves = crossing_curves(20, 5)
    r = replay_named("top-k-after-1", curves, mode="max", max_t=5, workers=3, seed=0)
    k = 5  # a quarter of 20
    assert r.trial_epochs == 20 + k * 4
    assert sorted(r.epochs).count(5) == k
    first = sorted(range(20), key=lambda i: curves[i].values[0], reverse=True)[:k]
    assert {i for i, e in enumerate(r.epochs) if e == 5} == set(first)


def test_random_2x_gets_twice_our_defaults_epochs() -> None:
    curves = crossing_curves(60, 8)
    ours = replay_named("default", curves, mode="max", max_t=8, workers=4, seed=2)
    rand = replay_named("random-2x", curves, mode="max", max_t=8, workers=4, seed=2)
    assert all(e in (0, 8) for e in rand.epochs)  # FIFO on a subset
    assert rand.trial_epochs == pytest.approx(2 * ours.trial_epochs, abs=8)


@pytest.mark.parametrize("name", [n for n in SCHEDULERS if n != "fifo"])
def test_every_registered_scheduler_replays_within_bounds(name: str) -> None:
    if name not in available():
        pytest.skip(f"{name} needs PromotionASHA, not in this checkout")
    curves = crossing_curves(45, 9, seed=4)
    for workers in (2, 8):
        r = replay_named(name, curves, mode="max", max_t=9, workers=workers, seed=5, warmup_epochs=1)
        assert 0 < r.compute_fraction <= 1 and 0 < r.cost_fraction <= 1 and r.regret >= 0
        assert r.trial_epochs == sum(r.epochs) and max(r.epochs) <= 9
        if name not in ("random-2x",):
            assert r.compute_fraction < 1  # every one of them stops something on crossing curves


def test_hyperband_pauses_and_resumes_trials() -> None:
    """Ray's synchronous Hyperband pauses trials at its milestones and resumes the good ones:
    a resumed trial continues from its epoch (no epoch is trained twice)."""
    curves = crossing_curves(30, 9, seed=1)
    r = replay_named("hyperband", curves, mode="max", max_t=9, workers=2, seed=0)
    assert any(0 < e < 9 for e in r.epochs) and 9 in r.epochs
    assert r.trial_epochs == sum(r.epochs) <= 30 * 9


def test_bad_curves_are_refused() -> None:
    with pytest.raises(ValueError, match="no values"):
        Curve(values=())
    with pytest.raises(ValueError, match="finite"):
        Curve(values=(0.1, float("nan")))
    with pytest.raises(ValueError, match="epoch_s"):
        Curve(values=(0.1, 0.2), epoch_s=(1.0,))
    with pytest.raises(ValueError, match="mode"):
        replay([Curve(values=(1.0,))], lambda: SCHEDULERS["fifo"](Setting(1, 1)), mode="best", max_t=1, workers=1,
               seed=0)
    with pytest.raises(KeyError, match="known"):
        replay_named("asha-typo", [Curve(values=(1.0,))], mode="max", max_t=1, workers=1, seed=0)
