"""The incident manager's consumer: alerts from the bus into the alert sink.

It commits a batch's offsets only after the sink has written it, and the sink skips alert ids it already holds,
so a crash anywhere between the two redelivers the batch and changes nothing twice.
"""

from __future__ import annotations

import logging
from typing import Any

from control_plane.core.bus import Bus, Record, topics
from control_plane.core.bus.worker import PollingWorker
from security.alerts.model import Alert
from security.alerts.service import AlertSink

log = logging.getLogger(__name__)

INCIDENTS_GROUP = "incidents"
"""The incident manager's consumer group on the alerts topic (the notifier has its own)."""
POLL_RECORDS = 500
POLL_TIMEOUT_S = 0.5


class AlertConsumer(PollingWorker):
    def __init__(self, *, bus: Bus, sink: AlertSink) -> None:
        super().__init__(
            "refsys-incidents", bus.consumer(topics.ALERTS, INCIDENTS_GROUP), poll_timeout_s=POLL_TIMEOUT_S
        )
        self.sink = sink

    def run_once(self, timeout_s: float = POLL_TIMEOUT_S) -> int:
        """Handle one polled batch and commit it; returns how many records it held."""
        records = self._consumer.poll(max_records=POLL_RECORDS, timeout_s=timeout_s)
        if not records:
            return 0
        self.sink.handle([alert for record in records if (alert := _alert(record)) is not None])
        self._consumer.commit(records)
        return len(records)

    def finish(self) -> None:
        """Handle what is already published, and leave the group."""
        try:
            self.drain()
        finally:
            self._consumer.close()


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
