"""The intake: one batch from a sender to durable ECS events on the telemetry bus, and dead letters.

A batch is framed, normalised by its source's adapter and stamped by the server; accepted events are published
to the ``telemetry`` topic and refused lines stored as dead letters, both before the call returns, so an
acknowledged batch is never lost. The store indexer consumes the topic separately; when it falls too far
behind, the intake refuses new batches with a retry delay instead of letting the spool grow without bound.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from control_plane.core import clock
from control_plane.core.bus import Bus, topics
from control_plane.core.config import TelemetrySettings
from security import ecs
from security.intake.dead_letters import DeadLetters
from security.intake.framing import decompress, frame_all
from security.intake.health import SourceHealthTracker
from security.intake.identity import Origin, derived_event_id, line_basis
from security.intake.indexer import STORE_GROUP
from security.intake.stamping import Stamp, lag_seconds, stamp
from security.sources.base import Parsed, Rejection, is_reserved
from security.sources.registry import ADAPTERS, adapter_for
from security.store.base import EventStore

PUBLISH_CHUNK = 1000
"""Events per bus batch (one row per batch on the embedded bus)."""
log = logging.getLogger(__name__)
BACKLOG_CHECK_INTERVAL_S = 1.0
SOURCE_DATASETS = frozenset(adapter.dataset for adapter in ADAPTERS.values())
"""Datasets written by a dedicated route; no other route may claim them."""


class UnknownSource(KeyError):
    """No adapter has that name."""


class SpoolFull(Exception):
    """The store indexer is too far behind; retry after ``retry_after_s``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"telemetry spool full; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass
class IngestResult:
    source: str
    dataset: str
    lines: int = 0
    accepted: int = 0
    ignored: int = 0
    """Lines that were neither events nor errors (a Keycloak log line from another logger)."""
    clamped: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "dataset": self.dataset,
            "lines": self.lines,
            "accepted": self.accepted,
            "rejected": len(self.rejected),
            "ignored": self.ignored,
            "clamped": self.clamped,
            "rejections": self.rejected,
        }


class Intake:
    def __init__(
        self,
        *,
        bus: Bus,
        dead_letters: DeadLetters,
        health: SourceHealthTracker,
        settings: TelemetrySettings,
        registry: CollectorRegistry,
        enrichers: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None,
    ) -> None:
        """``enrichers``: per source, a function that adds context to each accepted document (Wazuh agent
        inventory); its failure is logged and counted, never a lost event."""
        self.bus = bus
        self.enrichers = dict(enrichers or {})
        self.dead_letters = dead_letters
        self.health = health
        self.settings = settings
        self.drain_rate_per_s = 1000.0
        """Updated by the indexer: how fast the spool drains, to size ``Retry-After``."""
        self._backlog_checked = float("-inf")
        self._backlog = 0
        self._lock = threading.Lock()
        self._store: EventStore | None = None
        self._then: Callable[[list[dict[str, Any]]], None] | None = None
        self.stored_total = 0
        """Events new to the store among those delivered by ``deliver_to_store``."""
        self._clamps = Counter(
            "refsys_ingest_clamped_timestamps", "Event times clamped to the ingest time window.", ["source"],
            registry=registry,
        )  # fmt: skip
        self._enrich_failures = Counter(
            "refsys_ingest_enrichment_failures", "Documents stored without their enrichment.", ["source"],
            registry=registry,
        )  # fmt: skip
        self._batch_seconds = Histogram(
            "refsys_ingest_batch_duration_seconds", "Time to frame, normalise and durably publish one batch.",
            ["source"], registry=registry,
        )  # fmt: skip

    def ingest(
        self,
        source: str,
        body: bytes,
        *,
        observer: str,
        origin: Origin = None,
        encoding: str | None = None,
        request_id: str | None = None,
        heartbeat_s: int | None = None,
    ) -> IngestResult:
        """Normalise ``body`` from ``source`` and make it durable; raises ``UnknownSource``, ``SpoolFull`` or
        ``framing.FramingError`` (the body as a whole is unreadable)."""
        started = time.perf_counter()
        try:
            adapter = adapter_for(source)
        except KeyError as exc:
            raise UnknownSource(str(exc)) from None
        self._refuse_when_spool_full()
        data = decompress(body, encoding, limit=self.settings.max_decompressed_bytes)
        now = clock.utcnow()
        stamp_for = Stamp(
            source=source,
            dataset=adapter.dataset,
            observer=observer,
            ingested=now,
            max_future_skew=timedelta(seconds=self.settings.max_future_skew_s),
            max_past_skew=(
                timedelta(seconds=self.settings.max_past_skew_s)
                if self.settings.max_past_skew_s is not None
                else None
            ),
        )
        result = IngestResult(source=source, dataset=adapter.dataset)
        framed = frame_all(data, adapter.framing)
        lines, offsets, rejections = framed.lines, framed.offsets, framed.rejections
        result.lines = len(lines) + len(rejections)
        docs: list[dict[str, Any]] = []
        produced: dict[int, int] = {}
        for outcome in adapter.parse(lines):
            if isinstance(outcome, Rejection):
                rejections.append(outcome)
                continue
            refusal = self._stamp(outcome, stamp_for, origin, offsets, produced)
            if refusal is not None:
                rejections.append(refusal)
                continue
            docs.append(outcome.doc)
        self._enrich(source, docs)
        result.clamped = sum(
            1 for doc in docs if ecs.get_child(doc, "refsys", "claimed_timestamp") is not None
        )
        self._publish(source, observer, docs)
        rejections.sort(key=lambda rejection: rejection.line.number)
        self.dead_letters.add(rejections, source=source, observer=observer, request_id=request_id)
        result.accepted = len(docs)
        result.rejected = [{"line": item.line.number, "reason": item.reason} for item in rejections]
        answered = set(produced) | {item.line.number for item in rejections}
        result.ignored = sum(1 for line in lines if line.number not in answered)
        lags = [lag for lag in (lag_seconds(doc, now) for doc in docs) if lag is not None]
        self.health.observe(
            source, observer, accepted=len(docs), rejected=len(rejections),
            lag_s=statistics.median(lags) if lags else None, heartbeat_s=heartbeat_s,
        )  # fmt: skip
        if result.clamped:
            self._clamps.labels(source).inc(result.clamped)
        self._batch_seconds.labels(source).observe(time.perf_counter() - started)
        return result

    def _stamp(
        self,
        parsed: Parsed,
        stamp_for: Stamp,
        origin: Origin,
        offsets: dict[int, int | None],
        produced: dict[int, int],
    ) -> Rejection | None:
        """Stamp one document; a sender asking for a reserved dataset is refused, never relabelled."""
        number = parsed.line.number
        event = parsed.doc.get("event")
        requested = ecs.get_child(parsed.doc, "event", "dataset")
        if isinstance(requested, str) and requested and requested != stamp_for.dataset:
            if is_reserved(requested):
                return Rejection(parsed.line, f"dataset {requested!r} is reserved for the control plane")
            if requested in SOURCE_DATASETS:
                # A generic sender must not pass its events off as a sensor's (e.g. suricata.eve).
                return Rejection(parsed.line, f"dataset {requested!r} belongs to another source's route")
            stamp_for = dataclasses.replace(stamp_for, dataset=requested)
        index = produced.get(number, 0)
        produced[number] = index + 1
        if type(event) is dict and event.get("id") and "event.id" not in parsed.doc:
            fallback_id = ""  # the event keeps its own id (stamp only fills a missing one): derive none
        else:
            basis = line_basis(origin, number=number, offset=offsets.get(number))
            fallback_id = derived_event_id(stamp_for.source, basis, index)
        stamp(parsed.doc, stamp_for, fallback_id=fallback_id)
        return None

    def _enrich(self, source: str, docs: list[dict[str, Any]]) -> None:
        enrich = self.enrichers.get(source)
        if enrich is None:
            return
        for doc in docs:
            try:
                enrich(doc)
            except Exception as exc:  # enrichment is a bonus: the event is kept without it
                self._enrich_failures.labels(source).inc()
                log.warning("enrichment of a %s event failed: %s", source, exc)

    def deliver_to_store(
        self, store: EventStore, *, then: Callable[[list[dict[str, Any]]], None] | None = None
    ) -> None:
        """From now on, write accepted events straight into ``store`` instead of publishing them to the
        telemetry topic.

        For in-process ingestion (``refsys ingest`` without ``--url``) only. Nothing is acknowledged to a sender
        there, so the bus makes a batch no more durable than the store's own commit does, while its round trip
        (encode, write, read back, decode every document) costs about a third of the work (bench/ingest_bench.py).
        The server keeps the bus: its 202 means "durable", and the store indexer drains at its own pace. What
        is delivered this way does not pass through the topic, so nothing else reading it sees those events:
        ``then`` gets each stored batch instead (in-process detection).
        """
        self._store = store
        self._then = then

    def _publish(self, source: str, observer: str, docs: list[dict[str, Any]]) -> None:
        if self._store is not None:
            self.stored_total += self._store.write(docs)
            if self._then is not None and docs:
                self._then(docs)
            return
        # One key per sender keeps a sender's events in order on one partition.
        key = f"{source}:{observer}"
        for start in range(0, len(docs), PUBLISH_CHUNK):
            self.bus.publish(topics.TELEMETRY, key, docs[start : start + PUBLISH_CHUNK])
        with self._lock:
            self._backlog += len(docs)  # until the next measurement, count what this batch added

    def _refuse_when_spool_full(self) -> None:
        with self._lock:
            if time.monotonic() - self._backlog_checked >= BACKLOG_CHECK_INTERVAL_S:
                self._backlog = self.bus.backlog(topics.TELEMETRY, STORE_GROUP) or 0
                self._backlog_checked = time.monotonic()
            backlog = self._backlog
        limit = self.settings.max_backlog_events
        if backlog > limit:
            wait = (backlog - limit * 0.8) / max(self.drain_rate_per_s, 1.0)
            raise SpoolFull(min(60, max(1, math.ceil(wait))))
