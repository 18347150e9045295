"""Durations as a sweep file writes them: `90s`, `30m`, `12h`, `1d`, `1h30m`, or plain seconds.

    parse_duration("1h30m") == 5400.0;  parse_duration(45) == 45.0;  format_duration(5400) == "1h30m"

`budget.time_limit`, `budget.trial_time_limit` and, with `scheduler.time_attr: time_total_s`,
`scheduler.grace_period` and `scheduler.max_t` take them. Standard library only: the schema
imports it, and `--dry-run` must stay fast.
"""
from __future__ import annotations

import math
import re

#: seconds per unit letter; a duration is one or more `<number><unit>` parts, largest unit first
UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
#: the longest duration accepted (a typo such as `12000h` would otherwise mean "never")
MAX_SECONDS = 366 * 86400


def parse_duration(value: object) -> float:
    """Seconds in `value`: a number of seconds, or text such as `90s`, `30m`, `12h`, `1d`, `1h30m`
    (units d, h, m, s, each at most once, largest first). Raises ValueError saying what is
    accepted for anything else, zero, negative or above a year."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration: write e.g. 90s, 30m, 12h, 1d, 1h30m or a number of seconds")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            seconds = _parse_parts(text, value)
    else:
        raise ValueError(f"{value!r} is not a duration: write e.g. 90s, 30m, 12h, 1d, 1h30m or a number of seconds")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{value!r}: a duration must be positive and finite")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{value!r} is more than a year ({MAX_SECONDS} s): a typo?")
    return seconds


def _parse_parts(text: str, original: str) -> float:
    parts = _PART.findall(text)
    units = [unit for _, unit in parts]
    order = list(UNITS)
    if (not parts or "".join(n + u for n, u in parts) != text or len(set(units)) != len(units)
            or units != sorted(units, key=order.index)):
        raise ValueError(f"{original!r} is not a duration: write e.g. 90s, 30m, 12h, 1d, 1h30m (units d, h, m, s, "
                         "largest first) or a number of seconds")
    return float(sum(float(n) * UNITS[u] for n, u in parts))


def format_duration(seconds: float) -> str:
    """`5400` -> `1h30m`, `90` -> `1m30s`, `0.5` -> `0.5s`: how the plan and messages show a duration."""
    if seconds < 1:
        return f"{seconds:g}s"
    rest, out = int(round(seconds)), []
    for unit, size in UNITS.items():
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out) or "0s"
