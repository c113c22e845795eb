"""The serving stages of detection on the bus: matching workers and the correlation stage.

Matching is stateless: any number of workers share the ``telemetry`` topic's partitions (consumer group
``detect``), evaluate every event and publish match records to ``matches`` keyed by (correlation, group
values), so one correlation window always lands on one partition. The correlation stage (group ``correlate``)
keeps one engine per partition it owns, publishes alerts to ``alerts`` as they fire, and every
``checkpoint_every_s`` saves each partition's state with the offset it covers (``checkpoints``) before it
commits those offsets on the bus; a restart restores the state and skips what it already holds, so a replay
never counts a match twice, and an alert raised again by a replay keeps its id.

Rules change while serving (uploads, enable/disable): each stage asks the rule source for its version on
every batch and rebuilds; the correlation stage carries its windows over into the new engine.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from control_plane.core import clock
from control_plane.core.bus import Bus, Record, topics
from control_plane.core.bus.worker import PollingWorker
from security import ecs
from security.alerts.model import Alert
from security.detection.checkpoints import Checkpoints
from security.detection.evaluation import Correlator, Detector, epoch
from security.detection.ruleset import RuleSet

log = logging.getLogger(__name__)

MATCH_GROUP = "detect"
CORRELATE_GROUP = "correlate"
POLL_RECORDS = 2000
POLL_TIMEOUT_S = 0.2
SEQ_OFFSET_SLOTS = 4096
"""Ingest order = ingest time (µs) then bus offset: ``seq = µs * SLOTS + offset % SLOTS``, the same on replay."""


class RuleSource(Protocol):
    """Where stages get their rules: the current set and a version that changes whenever it does."""

    @property
    def version(self) -> int: ...

    def current(self) -> RuleSet: ...


class StaticRules:
    """A rule set that never changes (tests, ``refsys ingest``)."""

    version = 0

    def __init__(self, ruleset: RuleSet) -> None:
        self._ruleset = ruleset

    def current(self) -> RuleSet:
        return self._ruleset


def ingest_seq(doc: dict[str, Any], offset: int) -> int:
    ingested = epoch(ecs.get_child(doc, "event", "ingested")) or 0.0
    return int(ingested * 1_000_000) * SEQ_OFFSET_SLOTS + offset % SEQ_OFFSET_SLOTS


def rules_digest(ruleset: RuleSet) -> str:
    texts = sorted(text.text for text in {id(t): t for t in ruleset.origins.values()}.values())
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()


class StageMetrics:
    """The stages' Prometheus series; one set per registry, shared by every worker."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events = Counter(
            "refsys_detection_events", "Events evaluated by the matching stage.", registry=registry
        )
        self.matches = Counter(
            "refsys_detection_matches", "Match records published to the matches topic.", registry=registry
        )
        self.alerts = Counter(
            "refsys_detection_alerts", "Alerts raised by the correlation stage (replays included).", ["kind"],
            registry=registry,
        )  # fmt: skip
        self.late = Counter(
            "refsys_detection_late_matches", "Matches too late for their correlation window, dropped.",
            registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "refsys_detection_ingest_to_alert_seconds", "From an event's ingest time to its alert.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=registry,
        )  # fmt: skip


class MatchingWorker(PollingWorker):
    """Stateless: telemetry in, match records out; commits after publishing (at-least-once)."""

    def __init__(self, bus: Bus, rules: RuleSource, metrics: StageMetrics, *, member_id: str) -> None:
        super().__init__(
            f"refsys-{member_id}",
            bus.consumer(topics.TELEMETRY, MATCH_GROUP, member_id=member_id),
            poll_timeout_s=POLL_TIMEOUT_S,
        )
        self.bus = bus
        self.rules = rules
        self.metrics = metrics
        self._version = -1
        self._detector: Detector | None = None

    def detector(self) -> Detector:
        if self._detector is None or self.rules.version != self._version:
            self._version = self.rules.version
            self._detector = Detector(self.rules.current())
        return self._detector

    def run_once(self, timeout_s: float = POLL_TIMEOUT_S) -> int:
        records = self._consumer.poll(max_records=POLL_RECORDS, timeout_s=timeout_s)
        if not records:
            return 0
        detector = self.detector()
        by_key: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            for key, match in detector.match_records(record.value, ingest_seq(record.value, record.offset)):
                by_key.setdefault(key, []).append(match)
        for key, matches in by_key.items():
            self.bus.publish(topics.MATCHES, key, matches)
        self._consumer.commit(records)
        self.metrics.events.inc(len(records))
        self.metrics.matches.inc(sum(len(m) for m in by_key.values()))
        return len(records)


class CorrelationWorker(PollingWorker):
    """Stateful: one correlator per owned partition of ``matches``; alerts out; state checkpointed with offsets."""

    def __init__(
        self,
        bus: Bus,
        rules: RuleSource,
        checkpoints: Checkpoints,
        metrics: StageMetrics,
        *,
        lateness: float,
        max_groups: int,
        checkpoint_every_s: float,
        member_id: str = "correlate-0",
        on_alerts: Callable[[list[Alert]], None] | None = None,
    ) -> None:
        super().__init__(
            f"refsys-{member_id}",
            bus.consumer(topics.MATCHES, CORRELATE_GROUP, member_id=member_id),
            poll_timeout_s=POLL_TIMEOUT_S,
        )
        self.bus = bus
        self.rules = rules
        self.checkpoints = checkpoints
        self.metrics = metrics
        self.lateness = lateness
        self.max_groups = max_groups
        self.checkpoint_every_s = checkpoint_every_s
        self.on_alerts = on_alerts
        self._correlators: dict[int, Correlator] = {}
        self._covered: dict[int, int] = {}
        """Per partition: the last offset whose match is in the state (-1: none)."""
        self._uncommitted: list[Record] = []
        self._version = -1
        self._digest = ""
        self._last_checkpoint = time.monotonic()
        Gauge(
            "refsys_correlation_groups",
            "Correlation groups held in the stage's windows.",
            registry=metrics.registry,
        ).set_function(lambda: sum(c.engine.group_count() for c in list(self._correlators.values())))
        Gauge(
            "refsys_correlation_evicted_groups",
            "Groups evicted past detection.max_groups since the state began (kept across restarts).",
            registry=metrics.registry,
        ).set_function(
            lambda: sum(c.engine.counters["evicted_groups"] for c in list(self._correlators.values()))
        )

    def _correlator(self, partition: int) -> Correlator:
        if self.rules.version != self._version:
            self._reload()
        correlator = self._correlators.get(partition)
        if correlator is None:
            correlator = self._new_correlator()
            saved = self.checkpoints.load(partition)
            if saved is not None:
                self._covered[partition] = saved[0]
                correlator.engine.restore(saved[1])
            else:
                self._covered[partition] = -1
            self._correlators[partition] = correlator
        return correlator

    def _new_correlator(self) -> Correlator:
        return Correlator(self.rules.current(), lateness=self.lateness, max_groups=self.max_groups)

    def _reload(self) -> None:
        """New rules: carry each partition's windows over (correlations that still exist keep their state)."""
        self._version = self.rules.version
        self._digest = rules_digest(self.rules.current())
        for partition, old in list(self._correlators.items()):
            fresh = self._new_correlator()
            fresh.engine.restore(old.engine.snapshot())
            self._correlators[partition] = fresh

    def run_once(self, timeout_s: float = POLL_TIMEOUT_S) -> int:
        records = self._consumer.poll(max_records=POLL_RECORDS, timeout_s=timeout_s)
        self._drop_revoked()
        alerts: list[Alert] = []
        for record in records:
            correlator = self._correlator(record.partition)
            if record.offset <= self._covered[record.partition]:
                continue  # already in the restored state
            late_before = correlator.engine.counters["dropped_late"]
            fired = correlator.feed(record.value)
            self.metrics.late.inc(correlator.engine.counters["dropped_late"] - late_before)
            self._covered[record.partition] = record.offset
            ingested = record.value.get("ingested")
            if fired and isinstance(ingested, int | float):
                self.metrics.latency.observe(max(0.0, clock.utcnow().timestamp() - ingested))
            alerts += fired
        self._uncommitted += records
        if alerts:
            self._publish(alerts)
        if self._uncommitted and time.monotonic() - self._last_checkpoint >= self.checkpoint_every_s:
            self.checkpoint()
        return len(records)

    def _publish(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            self.bus.publish(topics.ALERTS, alert.id, [alert.to_record()])
            self.metrics.alerts.labels(alert.kind).inc()
        if self.on_alerts is not None:
            self.on_alerts(alerts)

    def checkpoint(self) -> None:
        """Save every owned partition's state with its covered offset, then commit those offsets on the bus."""
        if self.rules.version != self._version:
            self._reload()
        # Only partitions read since their last checkpoint can have changed: the others are saved already.
        for partition in sorted({r.partition for r in self._uncommitted} & set(self._correlators)):
            engine = self._correlators[partition].engine
            self.checkpoints.save(partition, self._covered[partition], engine.snapshot(), self._digest)
        self._consumer.commit(self._uncommitted)
        self._uncommitted = []
        self._last_checkpoint = time.monotonic()

    def _drop_revoked(self) -> None:
        """Partitions another member now owns: forget them (it restores them from their checkpoints)."""
        owned = self._consumer.assignment
        for partition in [p for p in self._correlators if p not in owned]:
            del self._correlators[partition]
            self._covered.pop(partition, None)
            self._uncommitted = [r for r in self._uncommitted if r.partition != partition]

    def recover(self) -> None:
        """A batch failed midway: its matches may be in the windows, its alerts not yet out. Drop the windows
        and rewind, so each partition restarts from its checkpoint and the batch comes again (alerts keep ids)."""
        self._correlators.clear()
        self._covered.clear()
        self._uncommitted = []
        self._consumer.rewind()

    def finish(self) -> None:
        """Save the windows (so a restart resumes from here), then leave the group."""
        try:
            if self._uncommitted:
                self.checkpoint()
        finally:
            self._consumer.close()
