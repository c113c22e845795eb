"""State tables of alerts and incidents, in the state database.

An alert row is the first of a series of duplicates (same rule, same group key, within its suppression window);
the later ones only raise its ``count`` and move its ``last``, and their ids are kept in ``alert_duplicates`` so
that a replayed duplicate is recognised as well as a replayed first alert. Every alert belongs to exactly one
incident, through ``incident_alerts``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.core.db import Base, UtcDateTime

ALERT_ID_LENGTH = 128
"""Alert ids are minted by the detection stages (deterministic, not UUIDv7); room for any of their forms."""
RULE_ID_LENGTH = 256


class AlertRow(Base):
    """One alert: a rule match or a qualifying correlation window, with the duplicates folded into it."""

    __tablename__ = "alerts"
    __table_args__ = (sa.Index("ix_alerts_rule_group", "rule_id", "group_key", "first"),)

    id: Mapped[str] = mapped_column(sa.String(ALERT_ID_LENGTH), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    """rule or correlation."""
    rule_id: Mapped[str] = mapped_column(sa.String(RULE_ID_LENGTH))
    rule: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    """The AlertRule as the alert carried it (title, level, tags, description, suppression)."""
    level: Mapped[str] = mapped_column(sa.String(16), index=True)
    group_key: Mapped[str] = mapped_column(sa.String(64))
    """SHA-256 of the values that make two alerts of the rule duplicates (suppression fields, correlation group
    or entities)."""
    group: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    entities: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    events: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON)
    """The events behind the first alert: id, time, dataset and the fields the rule read."""
    metric: Mapped[float | None] = mapped_column(sa.Float)
    first: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    last: Mapped[datetime] = mapped_column(UtcDateTime())
    """Event time of the latest event, duplicates included."""
    window_end: Mapped[datetime] = mapped_column(UtcDateTime())
    """Until when (event time) alerts of the same rule and group key are duplicates of this one."""
    count: Mapped[int] = mapped_column(sa.Integer)
    """This alert and its duplicates."""
    detected_at: Mapped[datetime] = mapped_column(UtcDateTime())
    stored_at: Mapped[datetime] = mapped_column(UtcDateTime())


class AlertDuplicate(Base):
    """An alert folded into an earlier one; kept so that its replay is a no-op."""

    __tablename__ = "alert_duplicates"

    id: Mapped[str] = mapped_column(sa.String(ALERT_ID_LENGTH), primary_key=True)
    alert_id: Mapped[str] = mapped_column(
        sa.String(ALERT_ID_LENGTH), sa.ForeignKey("alerts.id", ondelete="CASCADE"), index=True
    )
    first: Mapped[datetime] = mapped_column(UtcDateTime())
    last: Mapped[datetime] = mapped_column(UtcDateTime())
    detected_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Incident(Base):
    """Related alerts (a shared host, user or source address within the incident window) a person works."""

    __tablename__ = "incidents"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(512))
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    """new, acknowledged, in_progress, resolved, false_positive."""
    severity: Mapped[str] = mapped_column(sa.String(16), index=True)
    """The highest level of its alerts."""
    assignee: Mapped[str | None] = mapped_column(sa.String(256), index=True)
    resolution: Mapped[str | None] = mapped_column(sa.String(4096))
    techniques: Mapped[list[str]] = mapped_column(sa.JSON)
    """MITRE ATT&CK technique ids of its alerts' rules, sorted."""
    entities: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    """host / user / source_ip -> sorted values seen in its alerts."""
    first: Mapped[datetime] = mapped_column(UtcDateTime())
    last: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    alert_count: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class IncidentAlert(Base):
    """Which incident an alert belongs to (one incident per alert)."""

    __tablename__ = "incident_alerts"

    alert_id: Mapped[str] = mapped_column(
        sa.String(ALERT_ID_LENGTH), sa.ForeignKey("alerts.id", ondelete="CASCADE"), primary_key=True
    )
    incident_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("incidents.id", ondelete="CASCADE"), index=True
    )
    attached_at: Mapped[datetime] = mapped_column(UtcDateTime())


class IncidentComment(Base):
    """A note a person left on an incident."""

    __tablename__ = "incident_comments"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    incident_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("incidents.id", ondelete="CASCADE"), index=True
    )
    author: Mapped[str] = mapped_column(sa.String(256))
    body: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class IncidentAuditOutbox(Base):
    """Audit records of the sink's incident changes, written in the same transaction as the changes and moved to
    the audit trail right after it commits: the trail takes the database's write lock itself, so it cannot join
    that transaction, and a crash in between must not lose the record."""

    __tablename__ = "incident_audit_outbox"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    action: Mapped[str] = mapped_column(sa.String(64))
    target: Mapped[str] = mapped_column(sa.String(36))
    details: Mapped[dict[str, Any]] = mapped_column(sa.JSON)


alerts = cast(sa.Table, AlertRow.__table__)
alert_duplicates = cast(sa.Table, AlertDuplicate.__table__)
incidents = cast(sa.Table, Incident.__table__)
incident_alerts = cast(sa.Table, IncidentAlert.__table__)
incident_comments = cast(sa.Table, IncidentComment.__table__)
incident_audit_outbox = cast(sa.Table, IncidentAuditOutbox.__table__)
