"""Checks of promotion-based ASHA (`scheduler.promote: true`) at load, before anything runs.

Promotion pauses every trial at every rung and resumes the best later, from the checkpoint of
that rung's epoch. So it needs ASHA (a scheduler with rungs), one bracket, rungs in epochs (a
built-in trainable checkpoints exactly there; a rung on `time_total_s` falls mid-epoch, and a
command trial's script restarts from its own checkpoints, which need not be the rung's), and a
search that creates trials for it to choose from: at least `reduction_factor` of them (with
fewer, the top 1/reduction_factor of the first rung is empty and every trial would stop at
`grace_period`). No torch, Ray or MLflow here.
"""
from __future__ import annotations

from pathlib import Path

from sweeper.config.sweep import SweepConfigError
from sweeper.schema import SweepFile


def check_promote(file: Path, spec: SweepFile, searched: bool) -> None:
    """Refuse `scheduler.promote: true` where promotion cannot work (`searched`: the sweep has a
    search space); the error names the field to change."""
    sched = spec.scheduler
    if not sched.promote:
        return
    if sched.name != "asha":
        raise SweepConfigError(file, "scheduler.promote", f"promotion pauses and resumes trials at ASHA's rungs; "
                               f"scheduler {sched.name!r} has no rungs: use scheduler.name: asha or remove promote")
    if sched.brackets != 1:
        raise SweepConfigError(file, "scheduler.brackets", f"promotion-based ASHA has one bracket, not "
                               f"{sched.brackets}: remove brackets or promote")
    if sched.time_attr != "epoch":
        raise SweepConfigError(file, "scheduler.time_attr", "promotion resumes a paused trial from the checkpoint of "
                               "its rung's epoch, and a rung in seconds falls mid-epoch: use time_attr: epoch with "
                               "promote")
    if spec.command is not None:
        raise SweepConfigError(file, "scheduler.promote", "promotion resumes a paused trial from the checkpoint of "
                               "its rung, and a command trial's script restarts from its own checkpoints: not "
                               "supported for task: command (use stop-based ASHA: remove promote)")
    if spec.ablation is not None or not searched:
        raise SweepConfigError(file, "scheduler.promote", "promotion chooses among the trials a search creates; "
                               + ("an ablation runs every variant alike: use scheduler.name: fifo"
                                  if spec.ablation is not None else "nothing is searched here: add keys to `search`"))
    if spec.search_alg.name != "grid" and spec.budget.num_samples < sched.reduction_factor:
        raise SweepConfigError(file, "budget.num_samples", f"{spec.budget.num_samples} trials with promote and "
                               f"reduction_factor {sched.reduction_factor:g}: the top 1/{sched.reduction_factor:g} "
                               "of the first rung would be empty and every trial would stop at grace_period; run "
                               "at least reduction_factor trials")
