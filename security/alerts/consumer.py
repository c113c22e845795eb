"""The incident manager's consumer: alerts from the bus into the alert sink.

It commits a batch's offsets only after the sink has written it, and the sink skips alert ids it already holds,
so a crash anywhere between the two redelivers the batch and changes nothing twice.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from control_plane.core.bus import Bus, Record, topics
from security.alerts.model import Alert
from security.alerts.service import AlertSink

log = logging.getLogger(__name__)

INCIDENTS_GROUP = "incidents"
"""The incident manager's consumer group on the alerts topic (the notifier has its own)."""
POLL_RECORDS = 500
POLL_TIMEOUT_S = 0.5
ERROR_BACKOFF_S = 2.0


class AlertConsumer:
    def __init__(self, *, bus: Bus, sink: AlertSink) -> None:
        self.sink = sink
        self._consumer = bus.consumer(topics.ALERTS, INCIDENTS_GROUP)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, timeout_s: float = POLL_TIMEOUT_S) -> int:
        """Handle one polled batch and commit it; returns how many records it held."""
        records = self._consumer.poll(max_records=POLL_RECORDS, timeout_s=timeout_s)
        if not records:
            return 0
        self.sink.handle([alert for record in records if (alert := _alert(record)) is not None])
        self._consumer.commit(records)
        return len(records)

    def drain(self) -> int:
        """Handle everything published so far; returns the records handled."""
        handled = 0
        while count := self.run_once(timeout_s=0):
            handled += count
        return handled

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="refsys-incidents", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, handle what is already published, and leave the group (once)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self.drain()
        finally:
            self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            # A database or bus hiccup must not end the consumer: back off, then retry the same batch.
            except Exception as exc:
                log.warning("incident manager: %s; retrying in %.0f s", exc, ERROR_BACKOFF_S)
                self._stop.wait(ERROR_BACKOFF_S)


def _alert(record: Record) -> Alert | None:
    """The alert a record carries, or None (logged) for a record that is not one: retrying cannot fix it, and
    holding it back would stall every alert behind it."""
    value: Any = record.value
    try:
        return Alert.from_record(value)
    except (KeyError, TypeError, ValueError) as exc:
        log.error(
            "alerts topic: partition %d offset %d is not an alert (%r); skipped",
            record.partition,
            record.offset,
            exc,
        )
        return None
