"""UUIDv7 ids: time-ordered, so that ids minted by refsys sort by creation time in indexes and logs.

Python 3.11 has no ``uuid.uuid7``; this follows RFC 9562 section 5.7 with the optional monotonic counter
(method 1) in ``rand_a``, so ids minted within one millisecond in this process still sort in minting order.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_COUNTER_MAX = 0xFFF


def uuid7() -> uuid.UUID:
    """Return a new UUIDv7: 48-bit Unix milliseconds, a 12-bit in-millisecond counter, 62 random bits."""
    global _last_ms, _counter
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms, _counter = now_ms, int.from_bytes(os.urandom(2), "big") & 0x3FF
        else:
            # Same millisecond (or the clock stepped back): keep ordering by counting within _last_ms.
            _counter += 1
            if _counter > _COUNTER_MAX:
                _last_ms, _counter = _last_ms + 1, 0
        ms, counter = _last_ms, _counter
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b
    return uuid.UUID(int=value)


def new_id() -> str:
    """A UUIDv7 as its canonical string, the form refsys stores and sends."""
    return str(uuid7())
