"""ASHA's rung schedule as plain arithmetic: where a trial can be stopped, without Ray.

The dry-run plan prints it and the benchmarks replay with it, so it must not import Ray (a dry
run answers in well under a second); `tests/test_scheduler.py` checks it against a real
`AsyncHyperBandScheduler`.
"""
from __future__ import annotations

import math


def asha_rungs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The epochs at which Ray's ASHA (`AsyncHyperBandScheduler`, one bracket) may stop a trial
    that reports every epoch from 1: where it records the trial in a rung and compares it with
    the trials recorded there before. Pure arithmetic: it imports and starts nothing.

    What Ray's bracket does (ray/tune/schedulers/async_hyperband.py, `_Bracket`): its milestones
    are `grace_period * reduction_factor ** k` for k = 0, 1, ... up to `max_t`; a result at epoch
    e is recorded in the highest milestone <= e that holds no record of the trial yet; a result
    at `max_t` or later stops the trial before the bracket sees it. So whole-number milestones are
    the rungs themselves (grace 1, factor 3, max_t 9: [1, 3]); a fractional one is passed at the
    next whole epoch (factor 2.5: 1, 2.5, 6.25 -> [1, 3, 7]); where several are passed in one
    epoch (small factors) only the highest is recorded then, and the ones left empty are
    recorded at later epochs that pass no milestone of their own (grace 1, factor 1.2, max_t 20:
    every epoch to 16, then 19). Milestones at or above `max_t` are left out here: Ray may list
    one (or not, as its float logarithm rounds), but no trial is judged there.
    """
    if not (0 < grace_period <= max_t):
        raise ValueError(f"ASHA needs 0 < grace_period <= max_t, got grace_period {grace_period}, max_t {max_t}")
    if not reduction_factor > 1:
        raise ValueError(f"ASHA needs reduction_factor > 1, got {reduction_factor}")
    pending, k = [], 0  # milestones below max_t, ascending, computed as Ray computes them
    while (milestone := grace_period * reduction_factor ** k) < max_t:
        pending.append(milestone)
        k += 1
    rungs = []
    for epoch in range(1, max_t):
        passed = [m for m in pending if m <= epoch]
        if passed:
            pending.remove(passed[-1])
            rungs.append(epoch)
        elif not pending:
            break
    return rungs


def auto_grace_period(max_t: int, warmup_epochs: float = 0.0) -> int:
    """`scheduler.grace_period: auto`: the first epoch ASHA may stop a trial at, in epochs.

    Never before one full epoch's evaluation after the LR warmup has ended
    (`ceil(warmup_epochs) + 1` with a warmup: at the end of the warmup's own epoch a run has just
    reached its peak LR and says little about where it is going), and otherwise a quarter of
    `max_t`, but no more than 3 epochs: `min(3, ceil(max_t / 4))`. On the replay benchmark
    (`bench/replay.py`, README "Performance") from-scratch DBNet runs rank late (Ray's grace-1
    ASHA returned a configuration 2.3% worse than the best, median over arrival orders; the
    default, grace 2 there, 0%), while a grace beyond 3 epochs cost long runs more than a third of
    exhaustive training (25-epoch curves: grace 3 used 30%, grace 7 50%) for no regret gained.
    At most `max_t`.
    """
    after_warmup = math.ceil(warmup_epochs) + 1 if warmup_epochs > 0 else 1
    return max(1, min(max_t, max(after_warmup, min(3, math.ceil(max_t / 4)))))


def promotion_rungs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The epochs at which promotion-based ASHA (`sweeper.promotion.PromotionASHA`) pauses a
    trial: each milestone `grace_period * reduction_factor ** k` below `max_t`, rounded up to
    the whole epoch that passes it, each once (grace 1, factor 3, max_t 9: [1, 3]; factor 2.5:
    [1, 3, 7]). Every trial is paused at each of them, so, unlike `asha_rungs`, several
    milestones passed in one epoch are one rung. Pure arithmetic: it imports and starts nothing.
    """
    if not (0 < grace_period <= max_t):
        raise ValueError(f"ASHA needs 0 < grace_period <= max_t, got grace_period {grace_period}, max_t {max_t}")
    if not reduction_factor > 1:
        raise ValueError(f"ASHA needs reduction_factor > 1, got {reduction_factor}")
    rungs, k = [], 0
    while (milestone := grace_period * reduction_factor ** k) < max_t:
        epoch = -int(-milestone // 1)  # ceil, exact for whole-number milestones
        if epoch < max_t and (not rungs or epoch > rungs[-1]):
            rungs.append(epoch)
        k += 1
    return rungs
