"""The incident manager's consumer: alerts from the bus into the alert sink.

It commits a batch's offsets only after the sink has written it, and the sink skips alert ids it already holds,
so a crash anywhere between the two redelivers the batch and changes nothing twice.
"""

from __future__ import annotations

import logging

from control_plane.core.bus import Bus, topics
from control_plane.core.bus.worker import PollingWorker
from security.alerts.model import decode
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
        self.sink.handle(decode(records, "incident manager"))
        self._consumer.commit(records)
        return len(records)

    def finish(self) -> None:
        """Handle what is already published, and leave the group."""
        try:
            self.drain()
        finally:
            self._consumer.close()
