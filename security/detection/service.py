"""Detection's running parts, composed by the app (serving stages on the bus) and by ``refsys ingest`` (inline).

``Detection`` runs ``detection.matching_workers`` matching workers and one correlation stage in threads of
``refsys serve``. ``InlineDetection`` is the same two stages without the bus, for in-process ingestion, whose
events never pass through the telemetry topic (``Intake.deliver_to_store``): its windows live as long as the
command, and are judged at its end.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from control_plane.core.bus import Bus
from control_plane.core.config import DetectionSettings
from security.alerts.model import Alert
from security.detection.checkpoints import Checkpoints
from security.detection.evaluation import Correlator, Detector
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


class InlineDetection:
    """Both stages in the caller's thread: events in, alerts out, handed to ``sinks`` as they fire."""

    def __init__(
        self,
        rules: RuleSource,
        *,
        lateness: float = 0.0,
        sinks: Sequence[Callable[[list[Alert]], object]] = (),
    ) -> None:
        ruleset = rules.current()
        self.detector = Detector(ruleset)
        self.correlator = Correlator(ruleset, lateness=lateness)
        self.sinks = list(sinks)
        self._seq = 0

    def __call__(self, docs: Sequence[Mapping[str, Any]]) -> None:
        alerts: list[Alert] = []
        for doc in docs:
            for _key, record in self.detector.match_records(doc, self._seq):
                alerts += self.correlator.feed(record)
            self._seq += 1
        self._hand_over(alerts)

    def close(self) -> None:
        """The input is over: judge the windows still open."""
        self._hand_over(self.correlator.flush())

    def _hand_over(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        for sink in self.sinks:
            sink(alerts)
