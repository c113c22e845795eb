"""Background upkeep of a running server: audit checkpoints, aggregated refusal records, bus retention.

A thread, not an asyncio task: both jobs do blocking database and file I/O and must also run once more at
shutdown, after the event loop has stopped serving.
"""

from __future__ import annotations

import logging
import threading
import time

from control_plane.core import clock
from control_plane.core.audit.trail import Actor
from control_plane.core.bus import topics
from control_plane.core.services import Services

REFUSAL_FLUSH_INTERVAL_S = 5.0
BUS_COMPACTION_INTERVAL_S = 60.0
log = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="refsys-maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop, then flush every pending refusal aggregate and write a final checkpoint."""
        self._stop.set()
        self._thread.join(timeout=30)
        self.flush_refusals(everything=True)
        self.services.audit.checkpoint()

    def _run(self) -> None:
        interval = self.services.settings.audit.checkpoint_interval_s
        next_checkpoint = time.monotonic() + interval
        next_compaction = time.monotonic() + BUS_COMPACTION_INTERVAL_S
        while not self._stop.wait(min(REFUSAL_FLUSH_INTERVAL_S, interval)):
            try:
                self.flush_refusals()
                if time.monotonic() >= next_checkpoint:
                    self.services.audit.checkpoint()
                    next_checkpoint = time.monotonic() + interval
                if time.monotonic() >= next_compaction:
                    self.compact_bus()
                    next_compaction = time.monotonic() + BUS_COMPACTION_INTERVAL_S
            except Exception:  # keep upkeep alive across a transient database error; it retries next tick
                log.exception("upkeep failed; retrying")

    def compact_bus(self) -> None:
        """Drop bus batches that every consumer group has committed (retention at the lowest offset)."""
        for topic in topics.ALL_TOPICS:
            self.services.bus.compact(topic)

    def flush_refusals(self, *, everything: bool = False) -> None:
        for aggregate in self.services.refusals.drain(everything=everything):
            self.services.audit.append(
                actor=Actor(subject="refsys", client=aggregate.client),
                action="request.refused.aggregate",
                outcome="refused",
                target=aggregate.client,
                details={
                    "count": aggregate.count,
                    "window_start": clock.rfc3339(clock.from_timestamp(aggregate.window_start)),
                    "window_s": aggregate.window_s,
                    "reasons": aggregate.reasons,
                },
            )
