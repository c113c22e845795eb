"""What each Sigma correlation type measures over the events of one window, and how its condition compares.

Kept apart from the engine so the measure of a window is a pure function of its entries: the engine decides
*which* windows to judge and *when*; this module only says *what* a window amounts to. The semantics follow
pySigma's SQLite correlation backend, so the two can be compared on the same streams: an event matched by
several referenced rules counts once, distinct values compare case-insensitively, sums and averages skip
values that are not numbers, and percentiles interpolate linearly between closest ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sigma.correlations import SigmaCorrelationConditionOperator as Op

# One buffered match: (event time, ingest sequence, slot of the referenced rule, value of the condition field,
# the event's reference). A tuple (smaller than a list; a snapshot turns it into a JSON list, read alike).
Entry = Sequence[Any]

COUNTING = frozenset({"event_count", "value_count", "temporal", "temporal_ordered"})


def normalise_value(value: Any) -> Any:
    """Sigma compares strings case-insensitively, so group keys and distinct values fold case."""
    return value.lower() if isinstance(value, str) else value


def as_number(value: Any) -> float | None:
    """Numbers and numeric strings count; anything else is skipped rather than read as 0 (as pySigma's SQL)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def percentile(values: Sequence[float], percent: int) -> float | None:
    """Linear interpolation at rank (n - 1) * p / 100, as pySigma's SQLite backend computes it."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * percent / 100
    low = int(position)
    fraction = position - low
    if low + 1 >= len(ordered):
        return ordered[low]
    return ordered[low] * (1 - fraction) + ordered[low + 1] * fraction


def longest_ordered_chain(entries: Sequence[Entry]) -> int:
    """How many referenced rules (in the order the correlation lists them) match in event order.

    Entries are sorted by (time, ingest sequence), so ties are ordered by ingest order. A chain takes rules
    with strictly increasing slots at strictly increasing positions; its longest length is what a
    ``temporal_ordered`` condition counts (all rules by default, fewer when the condition asks for fewer).
    """
    best: dict[int, int] = {}
    for entry in entries:
        slot = entry[2]
        length = 1 + max((n for s, n in best.items() if s < slot), default=0)
        if length > best.get(slot, 0):
            best[slot] = length
    return max(best.values(), default=0)


def measure(kind: str, entries: Sequence[Entry], percent: int | None) -> float | None:
    """The metric of one window; None when there is nothing to measure (no numeric value at all)."""
    by_event: dict[int, Any] = {}
    for entry in entries:
        by_event.setdefault(entry[1], entry[3])
    if kind == "event_count":
        return float(len(by_event))
    if kind == "value_count":
        return float(len({normalise_value(v) for v in by_event.values() if v is not None}))
    if kind == "temporal":
        return float(len({entry[2] for entry in entries}))
    if kind == "temporal_ordered":
        return float(longest_ordered_chain(entries))
    numbers = [n for n in (as_number(v) for v in by_event.values()) if n is not None]
    if not numbers:
        return None
    if kind == "value_sum":
        return sum(numbers)
    if kind == "value_avg":
        return sum(numbers) / len(numbers)
    if kind in ("value_percentile", "value_median"):
        return percentile(numbers, 50 if kind == "value_median" else percent or 0)
    raise ValueError(f"unknown correlation type {kind!r}")


def compare(metric: float | None, op: Op, count: float) -> bool:
    """A window with no metric never satisfies a condition (SQL NULL comparison semantics)."""
    if metric is None:
        return False
    if op is Op.GTE:
        return metric >= count
    if op is Op.GT:
        return metric > count
    if op is Op.LTE:
        return metric <= count
    if op is Op.LT:
        return metric < count
    if op is Op.EQ:
        return metric == count
    return metric != count
