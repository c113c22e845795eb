"""Working an incident: status transitions, assignee, resolution and comments, each change audited.

The status moves forward (new -> acknowledged -> in_progress -> resolved / false_positive, steps may be skipped)
and a closed incident can only be reopened (-> in_progress); it never goes back to ``new``, which means "nobody
has looked yet". Closing needs a resolution, so a closed incident always says why. A refused change is audited
too, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from control_plane.core import clock, ids
from control_plane.core.audit.trail import Actor, AuditTrail
from security.alerts import tables


class Status(StrEnum):
    NEW = "new"
    ACKNOWLEDGED = "acknowledged"
    IN_PROGRESS = "in_progress"
    RESOLVED = "resolved"
    FALSE_POSITIVE = "false_positive"


CLOSED_STATUSES = frozenset({Status.RESOLVED, Status.FALSE_POSITIVE})
OPEN_STATUSES = tuple(status.value for status in Status if status not in CLOSED_STATUSES)
"""Statuses of incidents that still take new alerts."""

TRANSITIONS: Mapping[Status, frozenset[Status]] = {
    Status.NEW: frozenset({Status.ACKNOWLEDGED, Status.IN_PROGRESS, Status.RESOLVED, Status.FALSE_POSITIVE}),
    Status.ACKNOWLEDGED: frozenset({Status.IN_PROGRESS, Status.RESOLVED, Status.FALSE_POSITIVE}),
    Status.IN_PROGRESS: frozenset({Status.RESOLVED, Status.FALSE_POSITIVE}),
    Status.RESOLVED: frozenset({Status.IN_PROGRESS}),
    Status.FALSE_POSITIVE: frozenset({Status.IN_PROGRESS}),
}
"""Status -> the statuses it may move to."""

EDITABLE = ("status", "assignee", "resolution")


class IncidentError(Exception):
    """Root of the incident workflow's errors."""


class IncidentNotFound(IncidentError):
    """No incident with that id (404)."""


class TransitionNotAllowed(IncidentError):
    """The incident's status does not allow the change (409)."""


class BadIncidentChange(IncidentError):
    """The change is inconsistent in itself (422), e.g. closing without a resolution."""


def change(
    engine: Engine, audit: AuditTrail, incident_id: str, changes: Mapping[str, Any], actor: Actor
) -> list[str]:
    """Apply ``changes`` (any of status, assignee, resolution; None clears assignee or resolution) and audit
    them; returns the names of the fields that changed (none when everything already had those values)."""
    incidents = tables.incidents
    diff: dict[str, dict[str, Any]] = {}
    refusal: IncidentError | None = None
    with engine.begin() as connection:
        row = connection.execute(
            sa.select(incidents).where(incidents.c.id == incident_id).with_for_update()
        ).first()
        if row is None:
            raise IncidentNotFound(f"no incident {incident_id}")
        current = {name: getattr(row, name) for name in EDITABLE}
        try:
            wanted = checked(current, changes)
        except IncidentError as exc:
            refusal = exc
        else:
            diff = {name: {"from": current[name], "to": value} for name, value in wanted.items()}
            if diff:
                connection.execute(
                    incidents.update()
                    .where(incidents.c.id == incident_id)
                    .values(**wanted, updated_at=clock.utcnow())
                )
    if refusal is not None:
        audit.append(
            actor=actor, action="incident.update", outcome="failure", target=incident_id,
            details={"status": current["status"], "requested": dict(changes), "reason": str(refusal)},
        )  # fmt: skip
        raise refusal
    if diff:
        audit.append(
            actor=actor, action="incident.update", outcome="success", target=incident_id, details=diff
        )
    return list(diff)


def comment(engine: Engine, audit: AuditTrail, incident_id: str, body: str, actor: Actor) -> dict[str, Any]:
    """Add a comment by ``actor`` (audited with its text); returns it."""
    now = clock.utcnow()
    note = {
        "id": ids.new_id(),
        "incident_id": incident_id,
        "author": actor.subject,
        "body": body,
        "created_at": now,
    }
    incidents = tables.incidents
    with engine.begin() as connection:
        touched = connection.execute(
            incidents.update().where(incidents.c.id == incident_id).values(updated_at=now)
        ).rowcount
        if not touched:
            raise IncidentNotFound(f"no incident {incident_id}")
        connection.execute(tables.incident_comments.insert().values(**note))
    audit.append(
        actor=actor, action="incident.comment", outcome="success", target=incident_id,
        details={"comment_id": note["id"], "body": body},
    )  # fmt: skip
    return note


def checked(current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """The fields ``changes`` really changes, after checking the transition and the resolution rule."""
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise BadIncidentChange(f"cannot change {', '.join(sorted(unknown))}")
    before = Status(current["status"])
    after = Status(changes.get("status") or before)
    if after != before and after not in TRANSITIONS[before]:
        allowed = ", ".join(sorted(TRANSITIONS[before])) or "none"
        raise TransitionNotAllowed(f"an incident cannot go from {before} to {after} (allowed: {allowed})")
    wanted = {name: value for name, value in changes.items() if name in EDITABLE}
    wanted["status"] = after.value
    if before in CLOSED_STATUSES and after not in CLOSED_STATUSES and "resolution" not in changes:
        wanted["resolution"] = None  # reopened: the earlier resolution stays in the audit trail only
    resolution = wanted.get("resolution", current["resolution"])
    if after in CLOSED_STATUSES and not resolution:
        raise BadIncidentChange(f"a {after} incident needs a resolution saying why")
    if after not in CLOSED_STATUSES and resolution:
        raise BadIncidentChange("a resolution goes with the status resolved or false_positive")
    return {name: value for name, value in wanted.items() if current[name] != value}
