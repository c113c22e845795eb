"""What the server, not the sender, decides about an event: dataset, observer, ingest time, id, window time.

``event.dataset`` and ``observer.*`` come from the route and the credential, so a compromised sensor cannot
pass its events off as another source's or as the control plane's own audit trail. ``@timestamp`` is clamped to
the ingest time within a configured skew, so a forged future (or ancient) timestamp cannot hide an event from
detection windows; the sender's claim is kept in ``refsys.claimed_timestamp`` and every clamp is counted.

Stamping runs once per event on the ingest path, so it avoids what costs there: the two-level fields are
written with ``ecs.put_child`` (no path splitting), and a time already in the canonical form within bounds is
compared as text (fixed width RFC 3339 strings sort like the instants they name) instead of being parsed and
rendered again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from control_plane.core import clock
from security import ecs


@dataclass(frozen=True)
class Stamp:
    source: str
    dataset: str
    observer: str
    ingested: datetime
    max_future_skew: timedelta
    max_past_skew: timedelta | None

    @cached_property
    def ingested_text(self) -> str:
        return clock.rfc3339(self.ingested)

    @cached_property
    def bounds_text(self) -> tuple[str | None, str] | None:
        """The earliest (None: unbounded) and latest event times kept, in canonical form; None when one of
        them has no canonical form (a year before 1000), so that times are compared as instants instead."""
        latest = clock.rfc3339(self.ingested + self.max_future_skew)
        earliest = (
            clock.rfc3339(self.ingested - self.max_past_skew) if self.max_past_skew is not None else None
        )
        if not clock.is_canonical(latest) or (earliest is not None and not clock.is_canonical(earliest)):
            return None
        return earliest, latest


def stamp(doc: dict[str, Any], stamp: Stamp, *, fallback_id: str) -> bool:
    """Apply the server's fields to ``doc`` in place; True when its time had to be clamped."""
    doc.pop("observer", None)
    ecs.put_child(doc, "observer", "name", stamp.observer)
    ecs.put_child(doc, "observer", "product", stamp.source)
    ecs.put_child(doc, "event", "dataset", stamp.dataset)
    ecs.put_child(doc, "event", "ingested", stamp.ingested_text)
    if not ecs.get_child(doc, "event", "module"):
        ecs.put_child(doc, "event", "module", stamp.source)
    if not ecs.get_child(doc, "event", "id"):
        ecs.put_child(doc, "event", "id", fallback_id)
    return _clamp_time(doc, stamp)


def _clamp_time(doc: dict[str, Any], stamp: Stamp) -> bool:
    claimed = doc.get("@timestamp")
    if isinstance(claimed, str) and (bounds := stamp.bounds_text) is not None:
        earliest_text, latest_text = bounds
        within = claimed <= latest_text and (earliest_text is None or claimed >= earliest_text)
        if within and clock.canonical_moment(claimed) is not None:
            return False  # already what rendering the parsed time would give, and nothing to clamp
    try:
        moment = clock.parse_rfc3339(claimed) if isinstance(claimed, str) else None
    except ValueError:
        moment = None
    if moment is None:
        doc["@timestamp"] = stamp.ingested_text
        if claimed is not None:
            ecs.put(doc, "refsys.claimed_timestamp", str(claimed))
        return claimed is not None
    latest = stamp.ingested + stamp.max_future_skew
    earliest = stamp.ingested - stamp.max_past_skew if stamp.max_past_skew is not None else None
    bounded = min(moment, latest) if earliest is None else min(max(moment, earliest), latest)
    doc["@timestamp"] = clock.rfc3339(bounded)
    if bounded != moment:
        ecs.put(doc, "refsys.claimed_timestamp", claimed)
        return True
    return False


def lag_seconds(doc: dict[str, Any], ingested: datetime) -> float | None:
    """How late the event arrived: ingest time minus its (clamped) event time."""
    try:
        text = doc["@timestamp"]
        moment = clock.canonical_moment(text) if isinstance(text, str) else None
        return (ingested - (moment or clock.parse_rfc3339(text))).total_seconds()
    except (KeyError, ValueError):
        return None
