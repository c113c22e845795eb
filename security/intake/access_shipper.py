"""Ships the control plane's access log into telemetry: every request becomes a searchable, detectable event.

A logging handler on the access logger keeps the entries in a bounded buffer (never blocking a request on
I/O); the telemetry upkeep publishes them to the bus every few seconds. When the buffer is full the oldest
entries go and are counted, so a request flood costs bounded memory and the loss is visible on ``/metrics``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter

from control_plane.core.bus import Bus, topics
from control_plane.core.logs import ACCESS_LOGGER, JsonFormatter
from security.sources.control_plane import access_entry_to_ecs

MAX_BUFFERED = 50_000
PUBLISH_CHUNK = 1000
BUS_KEY = "refsys:access"


class AccessLogShipper(logging.Handler):
    def __init__(self, bus: Bus, registry: CollectorRegistry) -> None:
        super().__init__(level=logging.INFO)
        self.bus = bus
        self.setFormatter(JsonFormatter())
        self._entries: deque[dict[str, Any]] = deque(maxlen=MAX_BUFFERED)
        self._lock = threading.Lock()
        self._dropped = Counter(
            "refsys_access_log_dropped", "Access-log entries dropped because the shipping buffer was full.",
            registry=registry,
        )  # fmt: skip

    def attach(self) -> None:
        logger = logging.getLogger(ACCESS_LOGGER)
        logger.setLevel(logging.INFO)  # shipped whatever the console's log level is
        logger.addHandler(self)

    def detach(self) -> None:
        logging.getLogger(ACCESS_LOGGER).removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        entry = orjson.loads(self.format(record))
        with self._lock:
            if len(self._entries) == self._entries.maxlen:
                self._dropped.inc()
            self._entries.append(entry)

    def ship(self) -> int:
        """Publish the buffered entries as ECS events; returns how many."""
        with self._lock:
            entries = list(self._entries)
            self._entries.clear()
        docs = [access_entry_to_ecs(entry) for entry in entries]
        for start in range(0, len(docs), PUBLISH_CHUNK):
            self.bus.publish(topics.TELEMETRY, BUS_KEY, docs[start : start + PUBLISH_CHUNK])
        return len(docs)
