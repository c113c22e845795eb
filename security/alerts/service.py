"""The alert sink: alerts from the ``alerts`` topic into alert rows and incidents.

Delivery on the bus is at-least-once, so the sink is idempotent by alert id: an alert (or a duplicate folded into
one) it already holds is skipped. A new alert is either a duplicate of an earlier one (same rule and group key,
within the suppression window, in event time), which only raises that alert's count, or a new alert, which joins
the open incident sharing a host, user or source address with it within the incident window, or opens one.

Writes of one batch share one transaction, and batches are serialised (a lock in this process, and the database's
write lock, taken first, across processes), so an alert always sees the ones handled before it. The incident
changes are audited through an outbox: written in that transaction, appended to the audit trail once it has
committed (the trail takes the write lock itself, so it cannot run inside), and only then deleted; a crash in
between leaves them for the next flush, so a change may be audited twice but never not at all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.engine import Engine

from control_plane.core import clock, ids
from control_plane.core.audit.trail import Actor, AuditTrail
from control_plane.core.config import AlertSettings
from security.alerts import grouping, tables
from security.alerts.incidents import OPEN_STATUSES, Status
from security.alerts.model import LEVELS, Alert, level_rank

SINK_ACTOR = Actor(subject="refsys:incidents")
"""Who the audit trail names for the incident changes the sink makes."""
log = logging.getLogger(__name__)
SINK_LOCK_KEY = 0x5EF5A1E7
"""PostgreSQL advisory lock that serialises the sinks of every process."""
INCIDENT_CANDIDATES = 50
"""Open incidents within the window looked at for a shared entity, most recently active first."""


@dataclass
class HandleSummary:
    """What one ``handle`` call did; ``refsys ingest`` reports ``raised``."""

    raised: int = 0
    deduplicated: int = 0
    replayed: int = 0
    incidents_opened: int = 0
    attached: int = 0
    rejected: int = 0
    """Alerts the sink cannot store (see ``unstorable``); logged and skipped, so they never block the others."""


class AlertSink:
    def __init__(
        self, *, engine: Engine, audit: AuditTrail, settings: AlertSettings, registry: CollectorRegistry
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.suppression_window_s = settings.suppression_window_s
        self.incident_window = timedelta(seconds=settings.incident_window_s)
        self._lock = threading.RLock()
        self._raised = Counter(
            "refsys_alerts_raised", "Alerts stored (duplicates excluded).", registry=registry
        )
        self._deduplicated = Counter(
            "refsys_alerts_deduplicated",
            "Alerts folded into an earlier alert of the same rule and group key within its suppression window.",
            registry=registry,
        )
        self._opened = Counter(
            "refsys_incidents_opened", "Incidents opened by the alert sink.", registry=registry
        )

    def handle(self, alerts: Sequence[Alert]) -> HandleSummary:
        """Store, deduplicate and group ``alerts`` (one transaction), then audit the incident changes."""
        summary = HandleSummary()
        with self._lock:
            with self.engine.begin() as connection:
                _serialise(connection)
                for alert in alerts:
                    reason = unstorable(alert)
                    if reason is None:
                        self._one(connection, alert, summary)
                    else:
                        log.error("alert %.128r skipped: %s", alert.id, reason)
                        summary.rejected += 1
            self.flush_audit()
        self._raised.inc(summary.raised)
        self._deduplicated.inc(summary.deduplicated)
        self._opened.inc(summary.incidents_opened)
        return summary

    def flush_audit(self) -> int:
        """Move the outbox's audit records to the audit trail, oldest first; returns how many."""
        outbox = tables.incident_audit_outbox
        with self._lock:
            with self.engine.connect() as connection:
                pending = connection.execute(sa.select(outbox).order_by(outbox.c.id)).all()
            for row in pending:
                self.audit.append(
                    actor=SINK_ACTOR,
                    action=row.action,
                    outcome="success",
                    target=row.target,
                    details=row.details,
                )
                with self.engine.begin() as connection:
                    connection.execute(outbox.delete().where(outbox.c.id == row.id))
        return len(pending)

    def _one(self, connection: sa.Connection, alert: Alert, summary: HandleSummary) -> None:
        if _known(connection, alert.id):
            summary.replayed += 1
            return
        first, last = clock.parse_rfc3339(alert.first), clock.parse_rfc3339(alert.last)
        window = timedelta(seconds=grouping.suppression_window_s(alert, self.suppression_window_s))
        key = grouping.group_key(alert)
        earlier = _series_alert(connection, alert.rule.id, key, first, window)
        if earlier is not None:
            _fold(connection, alert, earlier, first, last)
            summary.deduplicated += 1
            return
        now = clock.utcnow()
        connection.execute(
            tables.alerts.insert().values(
                id=alert.id, kind=alert.kind, rule_id=alert.rule.id, rule=alert.to_record()["rule"],
                level=level_of(alert), group_key=key, group=alert.group, entities=alert.entities,
                events=alert.to_record()["events"], metric=alert.metric, first=first, last=last,
                window_end=first + window, count=1, detected_at=clock.parse_rfc3339(alert.detected_at),
                stored_at=now,
            )
        )  # fmt: skip
        summary.raised += 1
        incident = self._incident_for(connection, alert, first, last)
        if incident is None:
            self._open(connection, alert, first, last, now, summary)
        else:
            self._attach(connection, alert, incident, first, last, now, summary)

    def _incident_for(
        self, connection: sa.Connection, alert: Alert, first: datetime, last: datetime
    ) -> dict[str, Any] | None:
        """The open incident, active within the incident window of ``alert``, that shares an entity with it."""
        if not any(alert.entities.get(name) for name in grouping.GROUPING_ENTITIES):
            return None
        incidents = tables.incidents
        query = (
            sa.select(incidents)
            .where(
                incidents.c.status.in_(OPEN_STATUSES),
                incidents.c.last >= first - self.incident_window,
                incidents.c.first <= last + self.incident_window,
            )
            .order_by(incidents.c.last.desc())
            .limit(INCIDENT_CANDIDATES)
        )
        for row in connection.execute(query):
            if grouping.shares_entity(row.entities, alert.entities):
                return dict(row._mapping)
        return None

    def _open(
        self,
        connection: sa.Connection,
        alert: Alert,
        first: datetime,
        last: datetime,
        now: datetime,
        summary: HandleSummary,
    ) -> None:
        incident_id = ids.new_id()
        values = {
            "id": incident_id, "title": alert.rule.title[:512], "status": Status.NEW.value,
            "severity": level_of(alert), "assignee": None, "resolution": None,
            "techniques": sorted(set(alert.rule.techniques)), "entities": grouping.merged_entities(alert.entities, {}),
            "first": first, "last": last, "alert_count": 1, "created_at": now, "updated_at": now,
        }  # fmt: skip
        connection.execute(tables.incidents.insert().values(**values))
        _link(connection, alert.id, incident_id, now)
        summary.incidents_opened += 1
        details = {
            "alert_id": alert.id, "rule_id": alert.rule.id, "severity": level_of(alert),
            "techniques": values["techniques"], "entities": values["entities"],
        }  # fmt: skip
        _outbox(connection, "incident.create", incident_id, details)

    def _attach(
        self,
        connection: sa.Connection,
        alert: Alert,
        incident: dict[str, Any],
        first: datetime,
        last: datetime,
        now: datetime,
        summary: HandleSummary,
    ) -> None:
        severity = max(incident["severity"], level_of(alert), key=level_rank)
        techniques = sorted(set(incident["techniques"]) | set(alert.rule.techniques))
        connection.execute(
            tables.incidents.update()
            .where(tables.incidents.c.id == incident["id"])
            .values(
                severity=severity,
                techniques=techniques,
                entities=grouping.merged_entities(incident["entities"], alert.entities),
                first=min(incident["first"], first),
                last=max(incident["last"], last),
                alert_count=tables.incidents.c.alert_count + 1,
                updated_at=now,
            )
        )
        _link(connection, alert.id, incident["id"], now)
        summary.attached += 1
        details: dict[str, Any] = {"alert_id": alert.id, "rule_id": alert.rule.id, "level": level_of(alert)}
        if severity != incident["severity"]:
            details["severity"] = {"from": incident["severity"], "to": severity}
        _outbox(connection, "incident.alert-attached", incident["id"], details)


def level_of(alert: Alert) -> str:
    """The alert's Sigma level, informational when its rule has none or an unknown one (as ``level_rank``)."""
    return LEVELS[level_rank(alert.level)]


def unstorable(alert: Alert) -> str | None:
    """Why ``alert`` cannot be stored (an id or rule id too long, a time that is not RFC 3339), or None. A malformed alert is a bug upstream; retrying it would only stall every alert behind it."""
    if not 0 < len(alert.id) <= tables.ALERT_ID_LENGTH:
        return f"its id must be 1-{tables.ALERT_ID_LENGTH} characters"
    if not 0 < len(alert.rule.id) <= tables.RULE_ID_LENGTH:
        return f"its rule id must be 1-{tables.RULE_ID_LENGTH} characters"
    if alert.kind not in ("rule", "correlation"):
        return f"kind {alert.kind!r} is neither rule nor correlation"
    for name in ("first", "last", "detected_at"):
        try:
            clock.parse_rfc3339(getattr(alert, name))
        except (TypeError, ValueError):
            return f"{name} is not an RFC 3339 time"
    return None


def _serialise(connection: sa.Connection) -> None:
    """Take the database's write lock for the batch, so that sinks in several processes (consumer group members
    on other partitions) never both open an incident or a series of duplicates for the same thing."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(SINK_LOCK_KEY)))
    else:  # SQLite: any write statement takes the database's write lock until the transaction ends
        outbox = tables.incident_audit_outbox
        connection.execute(outbox.delete().where(outbox.c.id == ""))


def _outbox(connection: sa.Connection, action: str, target: str, details: dict[str, Any]) -> None:
    connection.execute(
        tables.incident_audit_outbox.insert().values(
            id=ids.new_id(), action=action, target=target, details=details
        )
    )


def _known(connection: sa.Connection, alert_id: str) -> bool:
    """Whether the sink already holds ``alert_id``, as an alert or as a duplicate folded into one."""
    for table in (tables.alerts, tables.alert_duplicates):
        if connection.execute(sa.select(table.c.id).where(table.c.id == alert_id)).first() is not None:
            return True
    return False


def _series_alert(
    connection: sa.Connection, rule_id: str, key: str, first: datetime, window: timedelta
) -> tuple[str, datetime] | None:
    """Id and last event time of the earliest alert of (rule, group key) whose suppression window holds
    ``first``."""
    alerts = tables.alerts
    query = (
        sa.select(alerts.c.id, alerts.c.last)
        .where(
            alerts.c.rule_id == rule_id,
            alerts.c.group_key == key,
            alerts.c.first <= first + window,
            alerts.c.window_end >= first,
        )
        .order_by(alerts.c.first)
        .limit(1)
    )
    row = connection.execute(query).first()
    return None if row is None else (row.id, row.last)


def _fold(
    connection: sa.Connection, alert: Alert, earlier: tuple[str, datetime], first: datetime, last: datetime
) -> None:
    """Count ``alert`` on the earlier alert of its series and keep its id, so that its replay is a no-op."""
    earlier_id, earlier_last = earlier
    alerts = tables.alerts
    connection.execute(
        alerts.update()
        .where(alerts.c.id == earlier_id)
        .values(count=alerts.c.count + 1, last=max(earlier_last, last))
    )
    connection.execute(
        tables.alert_duplicates.insert().values(
            id=alert.id, alert_id=earlier_id, first=first, last=last,
            detected_at=clock.parse_rfc3339(alert.detected_at),
        )
    )  # fmt: skip
    # The incident stays active as long as its alerts keep repeating, so later related alerts still join it.
    incidents, links = tables.incidents, tables.incident_alerts
    incident_id = sa.select(links.c.incident_id).where(links.c.alert_id == earlier_id).scalar_subquery()
    connection.execute(
        incidents.update().where(incidents.c.id == incident_id, incidents.c.last < last).values(last=last)
    )


def _link(connection: sa.Connection, alert_id: str, incident_id: str, now: datetime) -> None:
    connection.execute(
        tables.incident_alerts.insert().values(alert_id=alert_id, incident_id=incident_id, attached_at=now)
    )
