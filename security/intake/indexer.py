"""The store indexer: telemetry from the bus into the event store.

It commits a batch's offsets only after the store has written it, and the store ignores ids it already holds,
so a crash anywhere between the two redelivers and never loses or doubles an event.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from control_plane.core.bus import Bus, topics
from control_plane.core.bus.worker import PollingWorker
from security.store.base import EventStore

STORE_GROUP = "store"
"""The indexer's consumer group; its backlog on the telemetry topic is the intake's spool."""
POLL_RECORDS = 5000
POLL_TIMEOUT_S = 0.5
RATE_SMOOTHING = 0.3


class StoreIndexer(PollingWorker):
    def __init__(
        self,
        *,
        bus: Bus,
        store: EventStore,
        registry: CollectorRegistry,
        on_drain_rate: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__(
            "refsys-store-indexer", bus.consumer(topics.TELEMETRY, STORE_GROUP), poll_timeout_s=POLL_TIMEOUT_S
        )
        self.bus = bus
        self.store = store
        self.on_drain_rate = on_drain_rate
        self._rate_per_s: float | None = None
        self.stored_total = 0
        """Events this indexer wrote that the store did not hold yet (re-deliveries are not counted)."""
        self._stored = Counter(
            "refsys_store_events_written",
            "Events the indexer wrote to the store (new ones only).",
            registry=registry,
        )
        self._write_seconds = Histogram(
            "refsys_store_write_duration_seconds",
            "Time to write one batch into the event store.",
            registry=registry,
        )
        Gauge(
            "refsys_bus_backlog_events", "Telemetry events published but not yet stored.", registry=registry
        ).set_function(lambda: self.bus.backlog(topics.TELEMETRY, STORE_GROUP) or 0)

    def run_once(self, timeout_s: float = POLL_TIMEOUT_S) -> int:
        """Store one polled batch and commit it; returns how many records it held."""
        records = self._consumer.poll(max_records=POLL_RECORDS, timeout_s=timeout_s)
        if not records:
            return 0
        started = time.perf_counter()
        written = self.store.write([record.value for record in records])
        elapsed = time.perf_counter() - started
        self._consumer.commit(records)
        self.stored_total += written
        self._stored.inc(written)
        self._write_seconds.observe(elapsed)
        self._note_rate(len(records) / max(elapsed, 1e-6))
        return len(records)

    def finish(self) -> None:
        """Store what is already published, and leave the group."""
        try:
            self.drain()
        finally:
            self._consumer.close()

    def _note_rate(self, rate_per_s: float) -> None:
        previous = self._rate_per_s
        self._rate_per_s = (
            rate_per_s if previous is None else previous + RATE_SMOOTHING * (rate_per_s - previous)
        )
        if self.on_drain_rate is not None:
            self.on_drain_rate(self._rate_per_s)
