"""The alert contract: what the correlation stage publishes on the ``alerts`` topic and every consumer reads.

Why one dataclass: the incident manager, the notifier (webhook, Alertmanager, topic), the API and
``refsys ingest``'s summary all read the same record; a field renamed in one place would silently empty
another. ``to_record``/``from_record`` are the only (de)serialisers.

An alert is one rule match (``kind: rule``) or one qualifying correlation window (``kind: correlation``).
Its id is deterministic (rule + event for a rule match; correlation + group + window for a correlation), so a
replayed match raises the same alert again, which the sinks treat as the same alert (at-least-once delivery,
idempotent sinks).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from control_plane.core.bus import Record
from control_plane.core.config import SigmaLevel

log = logging.getLogger(__name__)

LEVELS: tuple[str, ...] = get_args(SigmaLevel)
"""Sigma's levels, lowest first: severity comparisons use their position."""

AlertKind = Literal["rule", "correlation"]


def level_rank(level: str | None) -> int:
    """Position of a Sigma level (unknown or missing: informational) so severities compare."""
    return LEVELS.index(level) if level in LEVELS else 0


@dataclass(frozen=True)
class AlertRule:
    """The rule (or correlation rule) that raised the alert, as a reader needs it without the rule file."""

    id: str
    title: str
    level: str = "medium"
    tags: tuple[str, ...] = ()
    description: str = ""
    suppression: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """The rule's optional custom ``suppression`` attribute (``{fields: [...], window: 10m}``): which values make
    two of its alerts duplicates, and for how long; empty means the sink's defaults."""

    @property
    def techniques(self) -> tuple[str, ...]:
        """MITRE ATT&CK technique ids from ``attack.tNNNN[.NNN]`` tags, upper-cased (``T1059.004``)."""
        found: list[str] = []
        for tag in self.tags:
            name = tag.lower().removeprefix("attack.")
            if tag.lower().startswith("attack.t") and name[1:2].isdigit():
                found.append(name.upper())
        return tuple(found)


@dataclass(frozen=True)
class AlertEvent:
    """One event behind an alert: its id, time, dataset and the fields the rule read (flat names)."""

    id: str
    timestamp: str
    dataset: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Alert:
    """One alert; the record on the ``alerts`` topic is ``to_record()``."""

    id: str
    kind: AlertKind
    rule: AlertRule
    first: str
    """RFC 3339 event time of the earliest event (for a correlation: its window start)."""
    last: str
    """RFC 3339 event time of the latest event (for a correlation: its window end)."""
    detected_at: str
    """RFC 3339 wall-clock time the stage raised it; ingest-to-alert latency is measured against it."""
    events: tuple[AlertEvent, ...] = ()
    group: dict[str, Any] = field(default_factory=dict)
    """A correlation's group-by values (empty for a rule match)."""
    entities: dict[str, list[str]] = field(default_factory=dict)
    """``host``, ``user``, ``source_ip`` values seen in the events: what incidents group on."""
    metric: float | None = None
    """A correlation's measured value (count, distinct values, sum...)."""

    @property
    def level(self) -> str:
        return self.rule.level

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["rule"]["tags"] = list(self.rule.tags)
        record["events"] = [asdict(e) for e in self.events]
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Alert:
        rule = dict(record["rule"])
        rule["tags"] = tuple(rule.get("tags") or ())
        rule["suppression"] = dict(rule.get("suppression") or {})
        return cls(
            id=record["id"],
            kind=record["kind"],
            rule=AlertRule(**rule),
            first=record["first"],
            last=record["last"],
            detected_at=record["detected_at"],
            events=tuple(AlertEvent(**e) for e in record.get("events") or ()),
            group=dict(record.get("group") or {}),
            entities={k: list(v) for k, v in (record.get("entities") or {}).items()},
            metric=record.get("metric"),
        )


ENTITY_FIELDS: Mapping[str, tuple[str, ...]] = {
    "host": ("host.name", "host.hostname", "orchestrator.resource.name"),
    "user": ("user.name", "kubernetes.audit.user.username", "keycloak.username"),
    "source_ip": ("source.ip", "client.ip"),
}
"""Entity -> flat event fields that name it, in preference order; incidents group alerts on shared entities."""


def entities_of(flats: list[Mapping[str, Any]]) -> dict[str, list[str]]:
    """The entity values of some flat events, each list sorted and without duplicates."""
    found: dict[str, set[str]] = {}
    for flat in flats:
        for entity, names in ENTITY_FIELDS.items():
            for name in names:
                value = flat.get(name)
                if isinstance(value, str | int) and str(value):
                    found.setdefault(entity, set()).add(str(value))
                    break
    return {entity: sorted(values) for entity, values in found.items()}


def decode(records: Sequence[Record], reader: str) -> list[Alert]:
    """The alerts of some ``alerts`` topic records; a record that is not an alert is logged and skipped:
    retrying cannot fix it, and it must not hold back the alerts behind it."""
    alerts = []
    for record in records:
        try:
            alerts.append(Alert.from_record(record.value))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            log.error("%s: alerts record %d/%d is not an alert (%r); skipped", reader, record.partition,
                      record.offset, exc)  # fmt: skip
    return alerts
