"""Refused requests (401/403) are audited one by one up to a rate, then counted.

A client hammering refsys with bad credentials must not be able to slow the audit chain (every append takes the
head lock) or bloat it: per client address, the first ``per_minute`` refusals of a one-minute window are
recorded individually and the rest are summed into one aggregate record when the window closes.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

WINDOW_S = 60.0
MAX_TRACKED_CLIENTS = 10_000
OVERFLOW_CLIENT = "(other clients)"


@dataclass
class _Window:
    started: float
    admitted: int = 0
    suppressed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class SuppressedRefusals:
    """What an aggregate record says: how many refusals from ``client`` went unrecorded, and why."""

    client: str
    window_start: float
    window_s: float
    count: int
    reasons: dict[str, int]


class RefusalLimiter:
    def __init__(self, per_minute: int, *, now: Callable[[], float] = time.time) -> None:
        self.per_minute = per_minute
        self._now = now
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def admit(self, client: str, reason: str) -> bool:
        """True if this refusal gets its own audit record; False if it is only counted."""
        now = self._now()
        with self._lock:
            window = self._windows.get(client)
            if window is None and len(self._windows) >= MAX_TRACKED_CLIENTS:
                client = OVERFLOW_CLIENT  # bounded memory: a spray of source addresses shares one bucket
                window = self._windows.get(client)
            if window is None or now - window.started >= WINDOW_S:
                if window is not None and window.suppressed:
                    return self._restart_keeping(client, window, now, reason)
                window = self._windows[client] = _Window(started=now)
            if window.admitted < self.per_minute:
                window.admitted += 1
                return True
            window.suppressed += 1
            window.reasons[reason] += 1
            return False

    def _restart_keeping(self, client: str, old: _Window, now: float, reason: str) -> bool:
        # The old window still owes an aggregate: park it under a unique key until drain() collects it.
        self._windows[f"{client}\x00{old.started}"] = old
        self._windows[client] = _Window(started=now, admitted=1)
        return True

    def drain(self, *, everything: bool = False) -> list[SuppressedRefusals]:
        """Close finished windows (or all, at shutdown) and return those that suppressed refusals."""
        now = self._now()
        closed: list[SuppressedRefusals] = []
        with self._lock:
            for key, window in list(self._windows.items()):
                if not everything and now - window.started < WINDOW_S:
                    continue
                del self._windows[key]
                if window.suppressed:
                    closed.append(
                        SuppressedRefusals(
                            client=key.split("\x00", 1)[0],
                            window_start=window.started,
                            window_s=WINDOW_S,
                            count=window.suppressed,
                            reasons=dict(window.reasons),
                        )
                    )
        return closed
