"""The incident manager as the app and the CLI compose it: the alert sink and its consumer on the bus."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from control_plane.core.audit.trail import AuditTrail
from control_plane.core.bus import Bus
from control_plane.core.config import Settings
from security.alerts.consumer import AlertConsumer
from security.alerts.model import Alert
from security.alerts.service import AlertSink, HandleSummary


class IncidentManager:
    """``start``/``stop`` run the consumer of the ``alerts`` topic (group ``incidents``); ``handle`` is the same
    sink called directly, for in-process ingestion and tests."""

    def __init__(
        self, *, settings: Settings, engine: Engine, bus: Bus, audit: AuditTrail, registry: CollectorRegistry
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.bus = bus
        self.sink = AlertSink(engine=engine, audit=audit, settings=settings.alerts, registry=registry)
        self.consumer: AlertConsumer | None = None
        """Joins the consumer group only on ``start``, so that in-process use never holds partitions."""

    def handle(self, alerts: Sequence[Alert]) -> HandleSummary:
        return self.sink.handle(alerts)

    def start(self) -> None:
        self.sink.flush_audit()  # what a crash left between an incident change and its audit record
        self.consumer = AlertConsumer(bus=self.bus, sink=self.sink)
        self.consumer.start()

    def stop(self) -> None:
        if self.consumer is not None:
            self.consumer.stop()
