"""How one audit record is bound to its predecessor and to the key kept outside the database.

``hash = SHA-256(canonical record, which includes seq and prev_hash)`` links the chain; ``mac = HMAC-SHA256(key,
hash)`` makes it unforgeable: someone who can write the table can recompute SHA-256 but not the MAC.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import orjson

from control_plane.core import clock

CHAINED_FIELDS = (
    "seq", "id", "time", "actor", "roles", "jti", "client", "user_agent",
    "request_id", "action", "target", "outcome", "details", "prev_hash",
)  # fmt: skip


def canonical(record: Mapping[str, Any]) -> bytes:
    """The exact bytes that are hashed: the chained fields, sorted keys, time as fixed-width RFC 3339."""
    body = {name: record[name] for name in CHAINED_FIELDS}
    body["time"] = clock.rfc3339(body["time"])
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


def record_mac(key: bytes, digest: str) -> str:
    return hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()
