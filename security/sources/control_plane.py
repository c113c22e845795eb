"""The control plane's own records as ECS documents: its audit trail (``refsys.audit``) and its access log
(``refsys.access``).

These are not a sender's telemetry: the intake calls these functions itself (the audit shipper for the trail),
so they set ``event.dataset`` and no adapter may (``refsys.*`` is reserved). Both datasets are searchable with
everything else, which is what lets a Sigma rule see "a token was created, then used from a new address"; the
search API shows ``refsys.audit`` to ``auditor`` and ``admin`` only.

``event.id`` is the audit record's id (a UUIDv7 the trail minted) and the request id of an access-log entry, so
shipping a record twice stores it once. The MAC of an audit record is never exported: the chain's hashes are,
so a record found in the event store can be checked against the trail.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from control_plane.core import clock
from security.ecs import ip as ecs_ip
from security.ecs import put

AUDIT_DATASET = "refsys.audit"
ACCESS_DATASET = "refsys.access"

AUDIT_FIELDS = (
    "seq", "id", "time", "actor", "roles", "jti", "client", "user_agent", "request_id", "action", "target",
    "outcome", "details", "prev_hash", "hash",
)  # fmt: skip
"""The columns of ``audit_records`` that are exported (everything but ``mac``)."""
ACCESS_FIELDS = (
    "time",
    "request_id",
    "client_request_id",
    "method",
    "route",
    "status",
    "latency_ms",
    "sub",
    "jti",
    "client",
)
"""The fields of an access-log entry (``control_plane/core/middleware.py``, plus the log line's ``time``)."""
_OUTCOMES = {"success": "success", "failure": "failure", "refused": "failure"}


def audit_record_to_ecs(record: Mapping[str, Any]) -> dict[str, Any]:
    """One audit record (a row of ``AuditTrail.list`` or of the ``audit_records`` table) as an ECS document."""
    native = {name: _plain(record.get(name)) for name in AUDIT_FIELDS if record.get(name) is not None}
    outcome = str(record["outcome"])
    target = record.get("target")
    doc: dict[str, Any] = {"@timestamp": _time(record["time"])}
    put(doc, "event.id", str(record["id"]))
    put(doc, "event.kind", "event")
    put(doc, "event.module", "refsys")
    put(doc, "event.dataset", AUDIT_DATASET)
    put(doc, "event.action", record["action"])
    put(doc, "event.type", ["denied"] if outcome == "refused" else ["change"])
    put(doc, "event.outcome", _OUTCOMES.get(outcome, "unknown"))
    put(doc, "event.original", orjson.dumps(native, option=orjson.OPT_SORT_KEYS).decode())
    put(doc, "message", f"{record['actor']} {record['action']}{f' {target}' if target else ''}: {outcome}")
    put(doc, "user.name", record["actor"])
    put(doc, "user.roles", list(record.get("roles") or []))
    put(doc, "source.ip", ecs_ip(record.get("client")))
    put(doc, "user_agent.original", record.get("user_agent"))
    put(doc, "http.request.id", record.get("request_id"))
    doc["refsys"] = {"audit": native}
    return doc


def access_entry_to_ecs(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One access-log entry (the JSON line ``refsys.access`` logs per request) as an ECS document."""
    native = {name: _plain(entry.get(name)) for name in ACCESS_FIELDS if entry.get(name) is not None}
    status = int(entry["status"])
    doc: dict[str, Any] = {"@timestamp": _time(entry["time"])}
    put(doc, "event.id", str(entry["request_id"]))
    put(doc, "event.kind", "event")
    put(doc, "event.module", "refsys")
    put(doc, "event.dataset", ACCESS_DATASET)
    put(doc, "event.category", ["web"])
    put(doc, "event.type", ["access"])
    put(doc, "event.action", f"{entry['method']} {entry['route']}")
    put(doc, "event.outcome", "success" if status < 400 else "failure")
    if entry.get("latency_ms") is not None:
        put(doc, "event.duration", round(float(entry["latency_ms"]) * 1_000_000))
    put(doc, "event.original", orjson.dumps(native, option=orjson.OPT_SORT_KEYS).decode())
    put(doc, "message", f"{entry['method']} {entry['route']} {status}")
    put(doc, "http.request.method", entry["method"])
    put(doc, "http.request.id", str(entry["request_id"]))
    put(doc, "http.response.status_code", status)
    put(doc, "user.name", entry.get("sub"))
    put(doc, "source.ip", ecs_ip(entry.get("client")))
    doc["refsys"] = {"access": native}
    return doc


def _time(value: Any) -> str:
    """RFC 3339 UTC from a datetime (the trail's column) or an RFC 3339 string (the log line's ``time``)."""
    return clock.rfc3339(value if isinstance(value, datetime) else clock.parse_rfc3339(str(value)))


def _plain(value: Any) -> Any:
    return clock.rfc3339(value) if isinstance(value, datetime) else value
