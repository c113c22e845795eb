"""Catalog upkeep in the background: retention evictions, and a rescan of products held while clamd was down.

Both are idempotent and cheap when there is nothing to do, so one thread runs them on a fixed interval; a
failure is logged and tried again at the next round, never fatal to the server.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from control_plane.core import clock
from control_plane.core.audit.trail import Actor
from pipelines.catalog import Catalog, PublishedProduct

log = logging.getLogger(__name__)

ACTOR = Actor(subject="refsys:catalog-upkeep")
INTERVAL_S = 3600.0


class CatalogUpkeep:
    def __init__(
        self,
        catalog: Catalog,
        *,
        rescan: Callable[[Actor], list[PublishedProduct]],
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.catalog = catalog
        self.rescan = rescan
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> None:
        try:
            evicted = self.catalog.evict_expired(clock.utcnow())
            if evicted:
                log.info("catalog upkeep: %d products past their retention evicted", evicted)
            if self.catalog.scanner is not None:
                released = self.rescan(ACTOR)
                if released:
                    log.info("catalog upkeep: %d held products scanned again", len(released))
        except Exception:  # the next round tries again; the server must not stop over upkeep
            log.exception("catalog upkeep failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="refsys-catalog-upkeep", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.run_once()
