"""Reading alerts and incidents for the API: filtered pages, and one item with what belongs to it.

Alerts come newest first by event time (their ids are deterministic, not time-ordered), paged by keyset on
(first, id); incidents newest first by id (UUIDv7, so creation order).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from security.alerts import tables
from security.alerts.model import LEVELS, AlertRule, level_rank

MAX_PAGE = 1000


@dataclass(frozen=True)
class AlertFilter:
    rule_id: str | None = None
    level: str | None = None
    min_level: str | None = None
    since: datetime | None = None
    """Event time of the alert's first event, inclusive."""
    until: datetime | None = None
    """Event time of the alert's first event, exclusive."""
    incident_id: str | None = None


@dataclass(frozen=True)
class IncidentFilter:
    status: str | None = None
    severity: str | None = None
    assignee: str | None = None


def list_alerts(
    connection: sa.Connection, criteria: AlertFilter, *, cursor: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """One page of alerts (without their events), after the alert ``cursor`` names."""
    alerts, links = tables.alerts, tables.incident_alerts
    query = (
        sa.select(*_alert_columns(), links.c.incident_id)
        .outerjoin(links, links.c.alert_id == alerts.c.id)
        .order_by(alerts.c.first.desc(), alerts.c.id.desc())
        .limit(max(1, min(limit, MAX_PAGE)))
    )
    if criteria.rule_id is not None:
        query = query.where(alerts.c.rule_id == criteria.rule_id)
    if criteria.level is not None:
        query = query.where(alerts.c.level == criteria.level)
    if criteria.min_level is not None:
        query = query.where(alerts.c.level.in_(LEVELS[level_rank(criteria.min_level) :]))
    if criteria.since is not None:
        query = query.where(alerts.c.first >= criteria.since)
    if criteria.until is not None:
        query = query.where(alerts.c.first < criteria.until)
    if criteria.incident_id is not None:
        query = query.where(links.c.incident_id == criteria.incident_id)
    if cursor is not None:
        after = connection.execute(sa.select(alerts.c.first).where(alerts.c.id == cursor)).scalar()
        if after is None:
            return []
        query = query.where(
            sa.or_(alerts.c.first < after, sa.and_(alerts.c.first == after, alerts.c.id < cursor))
        )
    return [_public_alert(dict(row._mapping)) for row in connection.execute(query)]


def get_alert(connection: sa.Connection, alert_id: str) -> dict[str, Any] | None:
    """One alert with its events and the ids of the duplicates folded into it."""
    alerts, links = tables.alerts, tables.incident_alerts
    row = connection.execute(
        sa.select(*_alert_columns(), alerts.c.events, links.c.incident_id)
        .outerjoin(links, links.c.alert_id == alerts.c.id)
        .where(alerts.c.id == alert_id)
    ).first()
    if row is None:
        return None
    duplicates = tables.alert_duplicates
    found = _public_alert(dict(row._mapping))
    found["duplicates"] = list(
        connection.execute(
            sa.select(duplicates.c.id).where(duplicates.c.alert_id == alert_id).order_by(duplicates.c.first)
        ).scalars()
    )
    return found


def list_incidents(
    connection: sa.Connection, criteria: IncidentFilter, *, cursor: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """One page of incidents, newest first, after the incident id ``cursor``."""
    incidents = tables.incidents
    query = sa.select(incidents).order_by(incidents.c.id.desc()).limit(max(1, min(limit, MAX_PAGE)))
    for name in ("status", "severity", "assignee"):
        value = getattr(criteria, name)
        if value is not None:
            query = query.where(incidents.c[name] == value)
    if cursor is not None:
        query = query.where(incidents.c.id < cursor)
    return [dict(row._mapping) for row in connection.execute(query)]


def get_incident(connection: sa.Connection, incident_id: str) -> dict[str, Any] | None:
    """One incident with its alerts (oldest first, without their events) and its comments (oldest first)."""
    incidents, comments = tables.incidents, tables.incident_comments
    row = connection.execute(sa.select(incidents).where(incidents.c.id == incident_id)).first()
    if row is None:
        return None
    found = dict(row._mapping)
    found["alerts"] = list(
        reversed(list_alerts(connection, AlertFilter(incident_id=incident_id), limit=MAX_PAGE))
    )
    found["comments"] = [
        dict(comment._mapping)
        for comment in connection.execute(
            sa.select(comments).where(comments.c.incident_id == incident_id).order_by(comments.c.id)
        )
    ]
    return found


def _alert_columns() -> list[sa.ColumnElement[Any]]:
    alerts = tables.alerts
    names = ("id", "kind", "rule", "level", "group", "entities", "metric", "first", "last", "count")
    return [
        *(alerts.c[name] for name in names),
        alerts.c.window_end,
        alerts.c.detected_at,
        alerts.c.stored_at,
    ]


def _public_alert(row: dict[str, Any]) -> dict[str, Any]:
    rule = AlertRule(**{**row["rule"], "tags": tuple(row["rule"].get("tags") or ())})
    row["techniques"] = list(rule.techniques)
    row["suppressed_until"] = row.pop("window_end")
    return row
