"""What a trial reports, beside its task's metrics: the keys the trainable writes and the
searcher, the scheduler and tracking read. One module, so the protocol is declared once.

    tune.report({**metrics, EPOCH: 3, EPOCHS_TOTAL: 12, BEST_OBJECTIVE: 0.41})

Standard library only: the trainable (Ray), the searcher (Optuna) and the MLflow readers import it.
"""
from __future__ import annotations

from typing import Any

#: the trial's epoch, 1-based: ASHA's time attribute and the MLflow step
EPOCH = "epoch"
#: the epochs the trial was planned to train, so "finished" can be told from "stopped early"
EPOCHS_TOTAL = "epochs_total"
#: the best objective value the trial has reached so far (what the leaderboard sorts by)
BEST_OBJECTIVE = "best_objective"
#: how often the out-of-memory fallback retried, and the micro-batches it trains with now
OOM_RETRIES = "oom_retries"
MICRO_BATCHES = "train/micro_batches"
#: the effective config the trial trains with (JSON text, secrets redacted), in its first report
#: after each (re)start: what MLflow logs as params and trial_config.json
TRIAL_CONFIG = "sweeper/trial_config"


class NonFiniteLossError(RuntimeError):
    """Raised by a task when the training loss becomes NaN/inf: the trial fails with this reason,
    and tracking records it as `diverged` (a property of the configuration, not a crash)."""


def stopped_early(result: dict[str, Any] | None, max_t: int) -> bool:
    """A trial that ended (no error) before its planned epochs and before `max_t` was stopped.

    Ray marks the last result `done` both when a trial returns and when a scheduler stops it,
    so the epoch count is what tells them apart.
    """
    if not result:
        return False
    epoch = result.get(EPOCH)
    planned = min(result.get(EPOCHS_TOTAL) or max_t, max_t)
    return epoch is not None and epoch < planned


def is_divergence(error: BaseException | None) -> bool:
    """Whether a trial's error (as Ray pickled it: a RayTaskError whose `cause` is the trial's own
    exception) is a NonFiniteLossError: decided by the exception's type, not by its text."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, NonFiniteLossError):
            return True
        seen.add(id(error))
        error = getattr(error, "cause", None) or error.__cause__
    return False
