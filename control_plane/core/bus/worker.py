"""A consumer's thread: poll, handle, commit, until stopped; a failed batch comes again after a back-off.

Why one class: every stage that reads a topic (the store indexer, detection, the incident manager) needs the
same loop, and the same promise. Polling moves the consumer's position past the batch, so after an exception
the worker rewinds to the group's committed offsets (``recover``) before it polls again: the failed batch is
handled again, never skipped (at-least-once). Subclasses write ``run_once`` (one batch, committed after its
effects), and override ``recover`` when they hold state derived from uncommitted records, and ``finish`` when
stopping needs more than leaving the group.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod

from control_plane.core.bus.base import Consumer

log = logging.getLogger(__name__)

ERROR_BACKOFF_S = 2.0


class PollingWorker(ABC):
    """``start`` runs ``run_once`` in a daemon thread until ``stop``; ``drain`` runs it until nothing is left."""

    def __init__(
        self,
        name: str,
        consumer: Consumer,
        *,
        poll_timeout_s: float = 0.5,
        backoff_s: float = ERROR_BACKOFF_S,
    ) -> None:
        self.name = name
        self._consumer = consumer
        self.poll_timeout_s = poll_timeout_s
        self.backoff_s = backoff_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def run_once(self, timeout_s: float) -> int:
        """Handle one polled batch and commit it; returns how many records it held."""

    def recover(self) -> None:
        """After a failed batch: back to the committed offsets, so the batch comes again."""
        self._consumer.rewind()

    def finish(self) -> None:
        """After the thread ended, once: leave the group (subclasses drain or checkpoint first)."""
        self._consumer.close()

    def drain(self) -> int:
        """Handle everything published so far; returns the records handled."""
        handled = 0
        while count := self.run_once(timeout_s=0):
            handled += count
        return handled

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread, then ``finish`` (once, however often it is called)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.finish()

    def _run(self) -> None:
        failed = False
        while not self._stop.is_set():
            try:
                if failed:
                    self.recover()
                    failed = False
                self.run_once(timeout_s=self.poll_timeout_s)
            except Exception as exc:  # a bus or database hiccup must not end the stage: back off, then retry
                failed = True
                log.warning("%s: %s; retrying in %.0f s", self.name, exc, self.backoff_s)
                self._stop.wait(self.backoff_s)
