"""Which detection metrics a sweep's trials can report, checked before dispatch.

`map_<name>` / `ar_<name>` exist only when `eval.area_ranges` has `<name>`, and `ap/<class>`
only for a class of the dataset; an objective (or constraint) naming another would leave every
trial without its score, so the sweep is refused instead. Imports nothing heavy (called from
`sweeper validate`):

    check_metric("map_tiny", [{"eval": {"area_ranges": {}}}], None)
    # -> "eval.area_ranges has no 'tiny' entry ..."
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: metric families named by an `eval.area_ranges` entry (the COCO ranges are always reported)
RANGE_PREFIXES = ("map_", "ar_")
COCO_RANGES = ("small", "medium", "large")


def _ranges(config: Mapping[str, Any]) -> set[str]:
    value = (config.get("eval") or {}).get("area_ranges") if isinstance(config.get("eval"), Mapping) else None
    return set(value) if isinstance(value, Mapping) else set()


def check_metric(metric: str, configs: Sequence[Mapping[str, Any]],
                 categories: Sequence[str] | None) -> str | None:
    """Why some trial could not report `metric`, or None. `configs` are the trial configs a sweep
    can make (its base, and base with each searched or ablated value); `categories` the class
    names of the validation data (None when not read yet: classes are then not checked)."""
    for prefix in RANGE_PREFIXES:
        name = metric.removeprefix(prefix)
        if not metric.startswith(prefix) or name in COCO_RANGES or (prefix == "ar_" and name.isdigit()):
            continue
        per_config = [_ranges(c) for c in configs]
        missing = [names for names in per_config if name not in names]
        if missing:
            have = sorted(set().union(*per_config))
            some = " in some trials' configs" if len(missing) < len(per_config) else ""
            return (f"{metric!r} is reported only for an eval.area_ranges entry named {name!r}, which the "
                    f"trial config lacks{some} (entries: {', '.join(have) or 'none'}); add "
                    f"`eval: {{area_ranges: {{{name}: [LOW, HIGH]}}}}` (sqrt-area px) to base, or pick "
                    f"another metric ({', '.join(prefix + n for n in (*COCO_RANGES, *have))})")
    if metric.startswith("ap/") and categories is not None:
        name = metric.removeprefix("ap/")
        if name not in categories:
            return (f"{metric!r}: the dataset has no class {name!r}; its classes are "
                    f"{', '.join(categories) or 'none'} (ap/<class> for one of them)")
    return None
