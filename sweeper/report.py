"""Report metrics from your own training script to a `task: command` sweep.

    from sweeper.report import report

    for epoch in range(1, epochs + 1):
        ...train, validate...
        report(epoch=epoch, **{"val/hmean": hmean, "train/loss": loss})

It prints one line, ``SWEEPER_METRICS {"epoch": 3, "val/hmean": 0.97, ...}``, which the sweep
reads from the script's stdout. Standard library only and safe to call outside a sweep (the line
is just printed), so the script keeps working on its own. Without sweeper installed in the
script's environment, printing the same line yourself is equivalent.
"""
from __future__ import annotations

import json
import math
import sys
from typing import Any

PREFIX = "SWEEPER_METRICS"


def _plain(value: Any) -> Any:
    """Numbers (also numpy / torch scalars, via .item()) as JSON; NaN/inf as null."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report(epoch: int, **metrics: Any) -> None:
    """Print one epoch's metrics for the sweep (epoch counts from 1; 0-based scripts are detected)."""
    record = {"epoch": int(epoch), **{k: _plain(v) for k, v in metrics.items()}}
    sys.stdout.write(f"{PREFIX} {json.dumps(record)}\n")
    sys.stdout.flush()
