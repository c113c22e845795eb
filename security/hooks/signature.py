"""The webhook signature: how a receiver knows a notification comes from refsys and is not a replay.

``X-Refsys-Signature: sha256=<hex>`` is HMAC-SHA256, keyed with the webhook's shared secret, over
``f"{timestamp}.{body}"``, where ``timestamp`` is the ``X-Refsys-Timestamp`` header (Unix seconds) and
``body`` the exact bytes of the request body. Signing the timestamp with the body means an attacker who
captured one request cannot re-send it later with a fresh timestamp; a receiver refuses timestamps outside its
tolerance and, within it, deduplicates on ``X-Refsys-Delivery``.

This module has no refsys imports so receivers can copy it as is.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SCHEME = "sha256="
DEFAULT_TOLERANCE_S = 300
"""Five minutes either way: generous for clock skew and retries, short for a replay."""


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Refsys-Signature`` value of ``body`` sent at ``timestamp`` (Unix seconds)."""
    message = str(timestamp).encode("ascii") + b"." + body
    return SCHEME + hmac.new(secret, message, hashlib.sha256).hexdigest()


def verify(
    secret: bytes,
    timestamp: str | int,
    body: bytes,
    signature: str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> bool:
    """True when ``signature`` signs ``body`` at ``timestamp`` and ``timestamp`` is within ``tolerance_s`` of
    ``now`` (default: the local clock). An old timestamp fails even with a valid signature: that is a replay."""
    try:
        sent_at = int(timestamp)
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance_s:
        return False
    # Constant-time comparison: a timing difference would leak how many leading characters were right.
    return hmac.compare_digest(sign(secret, sent_at, body), signature)
