"""What a trial reports, beside its task's metrics: the keys the trainable writes and the
searcher, the scheduler and tracking read. One module, so the protocol is declared once.

    tune.report({**metrics, EPOCH: 3, EPOCHS_TOTAL: 12, BEST_OBJECTIVE: 0.41, BEST_EPOCH: 2})

Standard library only: the trainable (Ray), the searcher (Optuna) and the MLflow readers import it.
"""
from __future__ import annotations

from typing import Any

#: the trial's epoch, 1-based: ASHA's time attribute and the MLflow step
EPOCH = "epoch"
#: instead of EPOCH, for a command trial on steps (`command.time_key: step`): the script's step
STEP = "step"
#: the trial's planned length in its time unit (epochs, or steps), so "finished" can be told from
#: "stopped early"
EPOCHS_TOTAL = "epochs_total"
#: the best objective value the trial has reached so far (what the leaderboard sorts by)
BEST_OBJECTIVE = "best_objective"
#: the epoch (or step) at which the trial reached BEST_OBJECTIVE: its best checkpoint
BEST_EPOCH = "best_epoch"
#: why a trial ended before its planned length, in the result that ended it (absent otherwise):
#: PATIENCE and SCRIPT come from the trainable, ASHA from the scheduler (`PersistentASHA`)
STOP_REASON = "stop_reason"
#: the stop reasons, as MLflow's `sweeper.stop_reason` tag shows them. COMPLETED: it ran its
#: planned length; PATIENCE: `early_stopping` ended it (it converged); ASHA: the scheduler
#: stopped it (pruned); SCRIPT: a command trial's script exited 0 before its planned length;
#: TIME_LIMIT: it used up its time budget (`budget.trial_time_limit`, or ASHA's `max_t` on
#: `scheduler.time_attr: time_total_s`), so it ran its course as the sweep defined it
COMPLETED, PATIENCE, ASHA, SCRIPT, TIME_LIMIT = "completed", "patience", "asha", "script", "time_limit"
#: the reasons under which a trial ended by itself: it counts as finished (statistics, Optuna COMPLETE)
SELF_STOPS = frozenset({COMPLETED, PATIENCE, SCRIPT, TIME_LIMIT})
#: the trial's training time in seconds, summed over its restarts (Ray adds it to every result;
#: ASHA's time attribute on `scheduler.time_attr: time_total_s`), and, on GPUs only, that wall
#: time times the GPUs the trial holds (absent on CPU, not 0)
TIME_TOTAL_S, GPU_SECONDS = "time_total_s", "gpu_seconds"
#: in the result a trial reports when `budget.time_limit` is reached: its epoch is checkpointed,
#: and it waits to be stopped with the sweep (`sweeper.time_budget`), resumable
PARKED = "sweeper/parked"
#: how often the out-of-memory fallback retried, and the micro-batches it trains with now
OOM_RETRIES = "oom_retries"
MICRO_BATCHES = "train/micro_batches"
#: the effective config the trial trains with (JSON text, secrets redacted), in its first report
#: after each (re)start: what MLflow logs as params and trial_config.json
TRIAL_CONFIG = "sweeper/trial_config"


class NonFiniteLossError(RuntimeError):
    """Raised by a task when the training loss becomes NaN/inf: the trial fails with this reason,
    and tracking records it as `diverged` (a property of the configuration, not a crash)."""


def time_attr(command: Any) -> str:
    """The result key a sweep's trials count time in (ASHA's `time_attr`, the MLflow step): EPOCH,
    or STEP for a command trial with `command.time_key: step` (`command` is the sweep's
    CommandConfig, or None for a built-in task)."""
    return STEP if command is not None and command.time_unit == "step" else EPOCH


def asha_time_attr(scheduler: Any, command: Any) -> str:
    """The result key ASHA's rungs count (`scheduler` is the sweep's Scheduler section): TIME_TOTAL_S
    on `time_attr: time_total_s`, else the trial's time unit (`time_attr`). The MLflow step and
    Optuna's intermediate-value step stay `time_attr` (whole epochs or steps) either way."""
    return TIME_TOTAL_S if getattr(scheduler, "time_attr", "epoch") == TIME_TOTAL_S else time_attr(command)


def stopped_early(result: dict[str, Any] | None, max_t: int, time_key: str = EPOCH) -> bool:
    """A trial that ended (no error) before its planned length and before `max_t`.

    Ray marks the last result `done` both when a trial returns and when a scheduler stops it,
    so the epoch (or step) count is what tells them apart; `stop_reason` says why.
    """
    if not result:
        return False
    epoch = result.get(time_key)
    planned = min(result.get(EPOCHS_TOTAL) or max_t, max_t)
    return epoch is not None and epoch < planned


def stop_reason(result: dict[str, Any] | None, max_t: int, time_key: str = EPOCH) -> str | None:
    """Why a trial that ended without an error ended: the reason its last result carries
    (PATIENCE, SCRIPT, or ASHA as the scheduler marked it), else COMPLETED when it reached its
    planned length; None when it ended early for no reason it recorded (the sweep itself stopped
    it: `budget.max_failed_trials`, a shutdown)."""
    if result and result.get(STOP_REASON):
        return str(result[STOP_REASON])
    return None if stopped_early(result, max_t, time_key) else COMPLETED


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
