"""What each hook sends: the delivery id, the webhook/topic notification and the Alertmanager alert.

Pure functions of an alert (and the hook's name and settings), so a redelivery sends the same content under
the same delivery id, and receivers deduplicate on it.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from typing import Any

from control_plane.core import clock
from security.alerts.model import Alert

MAX_LABEL_VALUES = 20
"""Entity values joined into one Alertmanager label at most: labels are for grouping, not for evidence."""
MAX_EVENT_IDS = 50
"""Event ids listed in the Alertmanager annotation at most; the alert link has all of them."""
_LABEL_NAME_RE = re.compile(r"[^A-Za-z0-9_]")


def delivery_id(alert: Alert, hook: str) -> str:
    """The notification's id: a UUIDv7 whose time is the alert's first event time and whose other bits are
    SHA-256 of (alert id, hook name).

    Deterministic, unlike ``ids.new_id()``: a replayed alert (at-least-once bus) or an operator's retry carries
    the same id, so the receiver's deduplication works; and still time-ordered like every id refsys mints.
    """
    digest = int.from_bytes(hashlib.sha256(f"{alert.id}\x00{hook}".encode()).digest()[:10], "big")
    try:
        millis = int(clock.parse_rfc3339(alert.first).timestamp() * 1000) & ((1 << 48) - 1)
    except ValueError:
        millis = 0
    rand_a, rand_b = (digest >> 68) & 0xFFF, digest & ((1 << 62) - 1)
    value = (millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))


def alert_url(public_url: str, alert: Alert) -> str:
    return f"{public_url.rstrip('/')}/api/v1/alerts/{alert.id}"


def notification(alert: Alert, *, delivery: str, public_url: str) -> dict[str, Any]:
    """The webhook body and the topic record: the alert, its rule (with ATT&CK techniques) and the matched
    fields of its events."""
    return {
        "delivery_id": delivery,
        "alert": alert.to_record(),
        "rule": {
            "id": alert.rule.id,
            "title": alert.rule.title,
            "level": alert.rule.level,
            "tags": list(alert.rule.tags),
            "techniques": list(alert.rule.techniques),
            "description": alert.rule.description,
        },
        "events": [
            {"id": event.id, "timestamp": event.timestamp, "dataset": event.dataset, "fields": event.fields}
            for event in alert.events
        ],
        "url": alert_url(public_url, alert),
    }


def alertmanager_alert(alert: Alert, *, public_url: str, extra_labels: Mapping[str, str]) -> dict[str, Any]:
    """One element of Alertmanager's ``POST /api/v2/alerts`` body.

    Labels identify and group (rule, severity, entities); evidence goes to annotations. refsys's own labels win
    over configured extra ones of the same name, so a configuration cannot hide which rule fired.
    """
    labels: dict[str, str] = {
        "alertname": alert.rule.title,
        "rule_id": alert.rule.id,
        "severity": alert.level,
        "refsys_alert_id": alert.id,
        "kind": alert.kind,
    }
    if alert.rule.techniques:
        labels["techniques"] = ",".join(alert.rule.techniques)
    for entity, values in sorted(alert.entities.items()):
        if values:
            labels[label_name(entity)] = ",".join(values[:MAX_LABEL_VALUES])
    for name, value in sorted(alert.group.items()):
        labels.setdefault(label_name(f"group_{name}"), str(value))
    labels = {**extra_labels, **labels}
    entities = "; ".join(f"{k}={','.join(v[:3])}" for k, v in sorted(alert.entities.items()) if v)
    annotations = {
        "summary": f"{alert.rule.title} ({alert.level})" + (f": {entities}" if entities else ""),
        "description": alert.rule.description or alert.rule.title,
        "event_ids": ",".join(event.id for event in alert.events[:MAX_EVENT_IDS]),
    }
    if alert.metric is not None:
        annotations["metric"] = str(alert.metric)
    return {
        "labels": labels,
        "annotations": annotations,
        "startsAt": alert.first,
        "generatorURL": alert_url(public_url, alert),
    }


def label_name(name: str) -> str:
    """A Prometheus label name (``[A-Za-z_][A-Za-z0-9_]*``) for a field name such as ``source.ip``."""
    cleaned = _LABEL_NAME_RE.sub("_", name)
    return cleaned if cleaned[:1].isalpha() or cleaned[:1] == "_" else f"_{cleaned}"
