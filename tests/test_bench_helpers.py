"""The pure pieces of the benchmarks: ASHA's rungs as Ray computes them, the successive-halving
replay on known curves, and the rank correlation (numbers checked by hand or against Ray/scipy)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import asha  # noqa: E402  (bench/ is a folder of scripts, not a package)


@pytest.mark.parametrize("max_t, grace, rf", [(6, 1, 3), (20, 2, 3), (100, 1, 4), (9, 3, 3), (4, 4, 2)])
def test_asha_milestones_are_rays(max_t: int, grace: int, rf: int) -> None:
    from ray.tune.schedulers import AsyncHyperBandScheduler

    sched = AsyncHyperBandScheduler(time_attr="epoch", metric="m", mode="max", max_t=max_t, grace_period=grace,
                                    reduction_factor=rf)
    rays = sorted(m for m, _ in sched._brackets[0]._rungs if m < max_t)
    assert asha.asha_milestones(max_t, grace, rf) == rays


def test_sha_replay_keeps_the_best_third_at_each_rung() -> None:
    # 9 trials, 6 epochs, rungs at 1 and 3: 9 x 1 + 3 x 2 + 1 x 3 = 18 trial-epochs
    curves = [{e: (i + 1) * e / 100 for e in range(1, 7)} for i in range(9)]
    out = asha.sha_replay(curves, max_t=6, grace=1, rf=3)
    assert out["rungs"] == [1, 3] and out["trial_epochs"] == 18 and out["fraction_of_fifo"] == round(18 / 54, 3)
    assert out["best_final"] == curves[8][6]
    # a late bloomer (worst at epoch 1, best at the end) is lost: what ASHA risks
    curves[0] = {1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0, 5: 1.0, 6: 1.0}
    assert asha.sha_replay(curves, max_t=6, grace=1, rf=3)["best_final"] == curves[8][6] < 1.0


def test_spearman() -> None:
    assert asha.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert asha.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert asha.spearman([1, 1, 1], [1, 2, 3]) is None
