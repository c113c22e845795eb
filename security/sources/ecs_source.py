"""Documents a sender already wrote in ECS (Elastic Agent or Beats output, Fluent Bit or Vector in ECS mode, a
ground-segment tool that logs ECS): taken as they are, once made safe to store.

- Keys may be nested (``{"source": {"ip": ...}}``) or dotted (``{"source.ip": ...}``), or both; they are
  normalised into nested objects, as ECS and OpenSearch expect. A field given both ways, or both as a value and
  as an object (``{"user": "x", "user.name": "y"}``), is ambiguous and the line is rejected.
- ``@timestamp`` is required: RFC 3339, or epoch milliseconds (what Elasticsearch's default date format
  accepts). It is rewritten as RFC 3339 UTC.
- ``event.dataset`` is the dataset the sender asks for. It stays in the document, where the intake reads it as
  the request (``security/intake/service.py``) before it stamps the dataset it grants. A reserved dataset
  (``refsys.*``: the control plane's audit trail and access log) is rejected here with the reason, never
  rewritten: a sender that writes there is misconfigured or hostile, the dead letter shows which, and
  relabelling would quietly store records that look like the control plane's own. A name that is not
  dataset-shaped (lowercase letters, digits and ``_``, dot-separated) is rejected too.
- ``observer.*`` and ``event.ingested`` are dropped: the intake stamps them from the credential and the clock.
- ``event.original`` is the line as received (a sender's own ``event.original`` survives inside it);
  ``event.id``, when the sender gives one, is the sender's identity of its event and is kept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Literal

from control_plane.core import clock
from security.ecs import get, put
from security.sources.base import Adapter, Line, Rejected, is_reserved

MAX_DEPTH = 32
"""Objects nested deeper than this are rejected (ECS needs a handful of levels; a deeper one is an attack)."""
_DATASET = re.compile(r"^[a-z0-9_]+(?:\.[a-z0-9_]+)*$")
MAX_DATASET_LENGTH = 100


class EcsAdapter(Adapter):
    name: ClassVar[str] = "ecs"
    dataset: ClassVar[str] = "ecs.generic"
    framing: ClassVar[Literal["json", "text"]] = "json"

    def normalise(self, line: Line) -> list[dict[str, Any]]:
        if not isinstance(line.value, Mapping):
            raise Rejected(f"an ECS document is a JSON object, not a JSON {type(line.value).__name__}")
        doc = nest(line.value)
        moment = _timestamp(doc.get("@timestamp"))
        if "event" in doc and not isinstance(doc["event"], dict):
            raise Rejected("field 'event' must be an object")
        check_requested_dataset(get(doc, "event.dataset"))
        doc.pop("observer", None)
        doc.get("event", {}).pop("ingested", None)
        doc["@timestamp"] = clock.rfc3339(moment)
        put(doc, "event.original", line.text)
        return [doc]


def nest(value: Mapping[str, Any], *, depth: int = 0) -> dict[str, Any]:
    """``value`` with every dotted key expanded into nested objects; raises ``Rejected`` on ambiguity."""
    if depth >= MAX_DEPTH:
        raise Rejected(f"document nested deeper than {MAX_DEPTH} levels")
    nested: dict[str, Any] = {}
    for key, item in value.items():
        parts = key.split(".") if isinstance(key, str) else []
        if not parts or not all(parts):
            raise Rejected(f"invalid field name {key!r}")
        if isinstance(item, Mapping):
            item = nest(item, depth=depth + len(parts))
        _place(nested, parts, item, key)
    return nested


def _place(target: dict[str, Any], parts: list[str], item: Any, key: str) -> None:
    node = target
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise Rejected(f"field {key!r} is ambiguous: {part!r} is also given as a value")
        node = child
    leaf = parts[-1]
    if leaf not in node:
        node[leaf] = item
    elif isinstance(node[leaf], dict) and isinstance(item, dict):
        for name, value in item.items():
            _place(node[leaf], [name], value, f"{key}.{name}")
    else:
        raise Rejected(f"field {key!r} is given twice (dotted and nested)")


def check_requested_dataset(requested: Any) -> None:
    """Reject a reserved or malformed ``event.dataset``; absent is fine (the route's dataset applies)."""
    if requested is None:
        return
    if not isinstance(requested, str):
        raise Rejected(f"event.dataset must be a string, not {requested!r}")
    if is_reserved(requested.strip().lower()):
        raise Rejected(f"dataset {requested!r} is reserved for the control plane")
    if len(requested) > MAX_DATASET_LENGTH or not _DATASET.match(requested):
        raise Rejected(f"event.dataset {requested!r} is not a dataset name (lowercase a-z, 0-9, _ and dots)")


def _timestamp(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            return clock.parse_rfc3339(value)
        except ValueError:
            raise Rejected(f"@timestamp {value!r} is not an RFC 3339 time") from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return clock.from_timestamp(value / 1000)
        except (OverflowError, OSError, ValueError):
            raise Rejected(f"@timestamp {value!r} is not a time in epoch milliseconds") from None
    raise Rejected("ECS document without @timestamp")
