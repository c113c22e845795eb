"""Source health: per (source, observer) last-seen time, event and rejection rates, lag, and silence.

The Reference System's operators went weeks without Falco or Suricata events and nobody noticed. Here every
source is tracked from its first batch, and a source with an expected heartbeat (declared in configuration or by
the sender's ``Refsys-Heartbeat`` header) that stays quiet for longer turns into a ``source-silent`` event on
the telemetry bus: stored, searchable and detectable like any other event.

Counts accumulate in memory and are flushed to ``source_health`` every few seconds; silence is judged from that
table, so several replicas behind a load balancer agree on it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.engine import Engine

from control_plane.core import clock
from control_plane.core.db import dialect_insert
from security.intake.tables import source_health

RATE_WINDOW_S = 300.0
"""Rates in the API are averaged over the last five minutes."""
Key = tuple[str, str]


@dataclass
class _Unflushed:
    """What this replica saw of one (source, observer) since its last flush."""

    first_seen: datetime
    last_seen: datetime
    accepted: int = 0
    rejected: int = 0
    heartbeat_s: int | None = None


@dataclass(frozen=True)
class SilenceChange:
    """A source fell silent (``silent``) or spoke again after being silent."""

    source: str
    observer: str
    silent: bool
    last_seen: datetime
    expected_heartbeat_s: int


class SourceHealthTracker:
    def __init__(self, engine: Engine, *, declared: Mapping[str, int], registry: CollectorRegistry) -> None:
        """``declared``: expected heartbeat in seconds per source name, from configuration."""
        self.engine = engine
        self.declared = dict(declared)
        self._unflushed: dict[Key, _Unflushed] = {}
        self._recent: dict[Key, deque[tuple[float, int, int]]] = {}  # (monotonic time, accepted, rejected)
        self._lag_s: dict[Key, float] = {}
        self._lock = threading.Lock()
        labels = ["source", "observer"]
        self._events = Counter(
            "refsys_ingest_events", "Events accepted or rejected by the intake.", [*labels, "outcome"],
            registry=registry,
        )  # fmt: skip
        self._last_seen = Gauge(
            "refsys_source_last_seen_timestamp_seconds", "When a source last sent a batch.", labels,
            registry=registry,
        )  # fmt: skip
        self._lag = Gauge(
            "refsys_source_lag_seconds", "Median delay from event time to ingestion in a source's last batch.",
            labels, registry=registry,
        )  # fmt: skip
        self._silent = Gauge(
            "refsys_source_silent", "1 while a source with an expected heartbeat is silent.", labels,
            registry=registry,
        )  # fmt: skip

    def observe(
        self,
        source: str,
        observer: str,
        *,
        accepted: int,
        rejected: int,
        lag_s: float | None,
        heartbeat_s: int | None,
    ) -> None:
        """Count one batch; called by the intake once the batch is durable."""
        now, moment, key = clock.utcnow(), time.monotonic(), (source, observer)
        with self._lock:
            seen = self._unflushed.setdefault(key, _Unflushed(first_seen=now, last_seen=now))
            seen.last_seen = now
            seen.accepted += accepted
            seen.rejected += rejected
            seen.heartbeat_s = heartbeat_s or seen.heartbeat_s
            recent = self._recent.setdefault(key, deque())
            recent.append((moment, accepted, rejected))
            while recent[0][0] < moment - RATE_WINDOW_S:
                recent.popleft()
            if lag_s is not None:
                self._lag_s[key] = lag_s
        self._events.labels(source, observer, "accepted").inc(accepted)
        self._events.labels(source, observer, "rejected").inc(rejected)
        self._last_seen.labels(source, observer).set(now.timestamp())
        if lag_s is not None:
            self._lag.labels(source, observer).set(lag_s)

    def flush(self) -> None:
        """Merge what this replica saw into ``source_health``; ``last_seen`` only ever moves forward."""
        with self._lock:
            batch, self._unflushed = self._unflushed, {}
        if not batch:
            return
        column = source_health.c
        with self.engine.begin() as connection:
            latest = sa.func.max if connection.dialect.name == "sqlite" else sa.func.greatest
            for (source, observer), seen in sorted(batch.items()):
                insert = dialect_insert(connection)(source_health).values(
                    source=source,
                    observer=observer,
                    first_seen=seen.first_seen,
                    last_seen=seen.last_seen,
                    accepted=seen.accepted,
                    rejected=seen.rejected,
                    expected_heartbeat_s=seen.heartbeat_s,
                )
                connection.execute(
                    insert.on_conflict_do_update(
                        index_elements=["source", "observer"],
                        set_={
                            "last_seen": latest(column.last_seen, insert.excluded.last_seen),
                            "accepted": column.accepted + insert.excluded.accepted,
                            "rejected": column.rejected + insert.excluded.rejected,
                            "expected_heartbeat_s": sa.func.coalesce(
                                insert.excluded.expected_heartbeat_s, column.expected_heartbeat_s
                            ),
                        },
                    )
                )

    def check_silence(self, now: datetime | None = None) -> list[SilenceChange]:
        """Mark sources silent past their heartbeat (and clear those that spoke again); return the changes.

        The conditional UPDATE makes each change happen once even when several replicas check at once.
        """
        now = now or clock.utcnow()
        changes: list[SilenceChange] = []
        column = source_health.c
        with self.engine.begin() as connection:
            for row in connection.execute(sa.select(source_health)).all():
                heartbeat = self._heartbeat(row.source, row.expected_heartbeat_s)
                if heartbeat is None:
                    continue
                overdue = row.last_seen + timedelta(seconds=heartbeat) < now
                if overdue == (row.silent_since is not None):
                    continue
                where = (column.source == row.source, column.observer == row.observer)
                guard = column.silent_since.is_(None) if overdue else column.silent_since.is_not(None)
                result = connection.execute(
                    source_health.update().where(*where, guard).values(silent_since=now if overdue else None)
                )
                if result.rowcount:
                    changes.append(SilenceChange(row.source, row.observer, overdue, row.last_seen, heartbeat))
                    self._silent.labels(row.source, row.observer).set(1 if overdue else 0)
        return changes

    def snapshot(self) -> list[dict[str, Any]]:
        """Every known (source, observer) with totals, status, rates over the last five minutes and lag."""
        with self.engine.connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(sa.select(source_health))]
        moment = time.monotonic()
        with self._lock:
            for key, seen in self._unflushed.items():  # not flushed yet: show it anyway
                if not any((row["source"], row["observer"]) == key for row in rows):
                    rows.append({"source": key[0], "observer": key[1], "first_seen": seen.first_seen,
                                 "last_seen": seen.last_seen, "accepted": 0, "rejected": 0,
                                 "expected_heartbeat_s": seen.heartbeat_s, "silent_since": None})  # fmt: skip
            for row in rows:
                key = (row["source"], row["observer"])
                unflushed = self._unflushed.get(key)
                if unflushed is not None:
                    row["last_seen"] = max(row["last_seen"], unflushed.last_seen)
                    row["accepted"] += unflushed.accepted
                    row["rejected"] += unflushed.rejected
                recent = [item for item in self._recent.get(key, ()) if item[0] >= moment - RATE_WINDOW_S]
                row["events_per_s"] = round(sum(item[1] for item in recent) / RATE_WINDOW_S, 3)
                row["rejections_per_s"] = round(sum(item[2] for item in recent) / RATE_WINDOW_S, 3)
                row["lag_s"] = self._lag_s.get(key)
                row["expected_heartbeat_s"] = self._heartbeat(row["source"], row["expected_heartbeat_s"])
                row["status"] = "silent" if row["silent_since"] is not None else "ok"
        return sorted(rows, key=lambda row: (row["source"], row["observer"]))

    def _heartbeat(self, source: str, declared_by_sender: int | None) -> int | None:
        """Configuration wins over what a sender declares: operators decide what silence means."""
        return self.declared.get(source, declared_by_sender)
