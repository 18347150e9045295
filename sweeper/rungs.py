"""ASHA's rung schedule as plain arithmetic: where a trial can be stopped, without Ray.

The dry-run plan prints it and the benchmarks replay with it, so it must not import Ray (a dry
run answers in well under a second); `tests/test_scheduler.py` checks it against a real
`AsyncHyperBandScheduler`.
"""
from __future__ import annotations


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
