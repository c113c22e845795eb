"""What the server, not the sender, decides about an event: dataset, observer, ingest time, id, window time.

``event.dataset`` and ``observer.*`` come from the route and the credential, so a compromised sensor cannot
pass its events off as another source's or as the control plane's own audit trail. ``@timestamp`` is clamped to
the ingest time within a configured skew, so a forged future (or ancient) timestamp cannot hide an event from
detection windows; the sender's claim is kept in ``refsys.claimed_timestamp`` and every clamp is counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
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

    @property
    def ingested_text(self) -> str:
        return clock.rfc3339(self.ingested)


def stamp(doc: dict[str, Any], stamp: Stamp, *, fallback_id: str) -> bool:
    """Apply the server's fields to ``doc`` in place; True when its time had to be clamped."""
    doc.pop("observer", None)
    ecs.put(doc, "observer.name", stamp.observer)
    ecs.put(doc, "observer.product", stamp.source)
    ecs.put(doc, "event.dataset", stamp.dataset)
    ecs.put(doc, "event.ingested", stamp.ingested_text)
    if not ecs.get(doc, "event.module"):
        ecs.put(doc, "event.module", stamp.source)
    if not ecs.get(doc, "event.id"):
        ecs.put(doc, "event.id", fallback_id)
    return _clamp_time(doc, stamp)


def _clamp_time(doc: dict[str, Any], stamp: Stamp) -> bool:
    claimed = doc.get("@timestamp")
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
        return (ingested - clock.parse_rfc3339(doc["@timestamp"])).total_seconds()
    except (KeyError, ValueError):
        return None
