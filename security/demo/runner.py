"""The thread that feeds demo traffic into the intake while ``refsys serve --demo`` runs.

Every interval it asks the generator for what fell due since the last round and hands each batch to ``ingest``
(the app passes ``Intake.ingest``), as observer ``demo:<sensor>``, the way a sensor's shipper would post it. A
refused or failed batch (spool full, a bug) is logged and dropped: demo data is not worth retrying, and the
demo must go on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from security.demo.traffic import DemoTraffic

MAX_CATCH_UP_S = 10.0
"""After a pause longer than this (a suspended laptop, a stalled process) the demo resumes at its normal rate
instead of bursting out everything the gap would have held."""
log = logging.getLogger(__name__)


class Ingest(Protocol):
    def __call__(self, source: str, body: bytes, *, observer: str) -> object: ...


class DemoRunner:
    """Feeds ``traffic`` to ``ingest`` every ``interval_s`` from a daemon thread, until ``stop``."""

    def __init__(
        self,
        *,
        traffic: DemoTraffic,
        ingest: Ingest,
        interval_s: float = 1.0,
    ) -> None:
        self.traffic = traffic
        self.ingest = ingest
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="refsys-demo-traffic", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def tick(self, elapsed_s: float) -> None:
        """Ingest what fell due in the last ``elapsed_s`` seconds."""
        for batch in self.traffic.batches(min(elapsed_s, MAX_CATCH_UP_S)):
            try:
                self.ingest(batch.source, batch.body, observer=batch.observer)
            except Exception:  # one refused batch must not end the demo
                log.exception("demo batch of %s from %s not ingested", batch.source, batch.observer)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            try:
                self.tick(now - last)
            except Exception:  # a generator bug shows in the log, and the next round tries again
                log.exception("demo traffic round failed")
            last = now
