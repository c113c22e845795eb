"""Detection's running parts, composed by the app (serving stages on the bus) and by ``refsys ingest`` (inline).

``Detection`` runs ``detection.matching_workers`` matching workers and one correlation stage in threads of
``refsys serve``; ``security.detection.evaluation.InlineDetection`` is the same two stages without the bus, for
in-process ingestion, whose
events never pass through the telemetry topic (``Intake.deliver_to_store``): its windows live as long as the
command, and are judged at its end.
"""

from __future__ import annotations

import socket

from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from control_plane.core.bus import Bus
from control_plane.core.config import DetectionSettings
from security.detection.checkpoints import Checkpoints
from security.detection.stages import (
    CORRELATE_GROUP,
    CorrelationWorker,
    MatchingWorker,
    RuleSource,
    StageMetrics,
)


class Detection:
    """The serving stages; ``start``/``stop`` with the app."""

    def __init__(
        self,
        settings: DetectionSettings,
        *,
        engine: Engine,
        bus: Bus,
        rules: RuleSource,
        registry: CollectorRegistry,
    ) -> None:
        self.rules = rules
        metrics = StageMetrics(registry)
        # Member ids stable across restarts (a restarted server takes its partitions back at once) and
        # distinct across hosts (servers sharing a PostgreSQL bus share the partitions out).
        host = socket.gethostname()
        self.matchers = [
            MatchingWorker(bus, rules, metrics, member_id=f"detect-{n}@{host}")
            for n in range(settings.matching_workers)
        ]
        self.correlator = CorrelationWorker(
            bus, rules, Checkpoints(engine, CORRELATE_GROUP), metrics,
            lateness=settings.lateness_s, max_groups=settings.max_groups,
            checkpoint_every_s=settings.checkpoint_every_s, member_id=f"correlate@{host}",
        )  # fmt: skip

    def start(self) -> None:
        for worker in self.matchers:
            worker.start()
        self.correlator.start()

    def stop(self) -> None:
        for worker in self.matchers:
            worker.stop()
        self.correlator.stop()
