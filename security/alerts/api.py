"""Alerts and incidents over HTTP: read alerts, work incidents (status, assignee, resolution, comments).

Role ``security-officer`` (``admin`` implied). Every change to an incident is audited, refusals included.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from control_plane.core.auth.tokens import Principal
from control_plane.core.config import SigmaLevel
from control_plane.core.deps import Authorize, ServicesDep, request_actor
from control_plane.core.responses import json_response
from control_plane.core.services import Services
from security.alerts import incidents, queries
from security.alerts.incidents import Status
from security.alerts.tables import ALERT_ID_LENGTH

router = APIRouter(prefix="/api/v1", tags=["alerts"])
Level = SigmaLevel
AlertId = Annotated[str, Path(max_length=ALERT_ID_LENGTH)]
IncidentId = Annotated[str, Path(max_length=36)]
Limit = Annotated[int, Query(ge=1, le=queries.MAX_PAGE)]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such alert or incident"}}
CHANGE_REFUSED: dict[int | str, dict[str, Any]] = {
    409: {"description": "the incident's status does not allow that status"},
    422: {"description": "the change is inconsistent (e.g. closing without a resolution)"},
}


class RulePublic(BaseModel):
    id: str
    title: str
    level: str
    tags: list[str]
    description: str
    suppression: dict[str, Any] = {}


class AlertPublic(BaseModel):
    id: str
    kind: str
    """rule (one rule match) or correlation (one qualifying correlation window)."""
    rule: RulePublic
    level: str
    techniques: list[str]
    group: dict[str, Any]
    entities: dict[str, list[str]]
    metric: float | None
    first: datetime
    last: datetime
    """Event time of the latest event, duplicates included."""
    count: int
    """This alert and the duplicates folded into it."""
    suppressed_until: datetime
    """Until when (event time) alerts of the same rule and group key are counted here instead of raised."""
    detected_at: datetime
    stored_at: datetime
    incident_id: str | None


class AlertEventPublic(BaseModel):
    id: str
    timestamp: str
    dataset: str
    fields: dict[str, Any]
    """The fields the rule read, by flat name."""


class AlertDetail(AlertPublic):
    events: list[AlertEventPublic]
    duplicates: list[str]
    """Ids of the alerts folded into this one."""


class AlertsPage(BaseModel):
    items: list[AlertPublic]
    next_cursor: str | None
    """Pass as ``cursor`` to get the next page; null on the last page."""


class IncidentPublic(BaseModel):
    id: str
    title: str
    status: Status
    severity: str
    """The highest level of its alerts."""
    assignee: str | None
    resolution: str | None
    techniques: list[str]
    entities: dict[str, list[str]]
    first: datetime
    last: datetime
    alert_count: int
    created_at: datetime
    updated_at: datetime


class CommentPublic(BaseModel):
    id: str
    author: str
    body: str
    created_at: datetime


class IncidentDetail(IncidentPublic):
    alerts: list[AlertPublic]
    comments: list[CommentPublic]


class IncidentsPage(BaseModel):
    items: list[IncidentPublic]
    next_cursor: str | None


class IncidentChange(BaseModel):
    """Fields to change; those omitted stay as they are, ``null`` clears assignee or resolution."""

    model_config = ConfigDict(extra="forbid")

    status: Status | None = None
    assignee: str | None = Field(None, min_length=1, max_length=256)
    resolution: str | None = Field(None, min_length=1, max_length=4096)


class CommentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    body: str = Field(min_length=1, max_length=10_000)


@router.get("/alerts", response_model=AlertsPage)
def alerts_list(
    services: ServicesDep,
    _who: Annotated[Principal, Depends(Authorize("alerts:read"))],
    rule_id: Annotated[str | None, Query(max_length=256)] = None,
    level: Level | None = None,
    min_level: Level | None = None,
    since: Annotated[datetime | None, Query(description="first event at or after (RFC 3339)")] = None,
    until: Annotated[datetime | None, Query(description="first event before (RFC 3339)")] = None,
    incident_id: Annotated[str | None, Query(max_length=36)] = None,
    cursor: Annotated[
        str | None, Query(max_length=ALERT_ID_LENGTH, description="id of the last alert of the previous page")
    ] = None,
    limit: Limit = 100,
) -> Response:
    """Alerts, newest first by event time, filtered by rule, level, time and incident. Role ``security-officer``."""
    for moment in (since, until):
        if moment is not None and moment.tzinfo is None:
            raise HTTPException(422, "since and until need a time zone (RFC 3339)")
    criteria = queries.AlertFilter(
        rule_id=rule_id, level=level, min_level=min_level, since=since, until=until, incident_id=incident_id
    )
    with services.engine.connect() as connection:
        items = queries.list_alerts(connection, criteria, cursor=cursor, limit=limit)
    return json_response({"items": items, "next_cursor": items[-1]["id"] if len(items) == limit else None})


@router.get("/alerts/{alert_id}", response_model=AlertDetail, responses=NOT_FOUND)
def alert_get(
    alert_id: AlertId, services: ServicesDep, _who: Annotated[Principal, Depends(Authorize("alerts:read"))]
) -> Response:
    """One alert with its events (the fields the rule read) and its duplicates. Role ``security-officer``."""
    with services.engine.connect() as connection:
        found = queries.get_alert(connection, alert_id)
    if found is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return json_response(found)


@router.get("/incidents", response_model=IncidentsPage)
def incidents_list(
    services: ServicesDep,
    _who: Annotated[Principal, Depends(Authorize("incidents:read"))],
    status: Status | None = None,
    severity: Level | None = None,
    assignee: Annotated[str | None, Query(max_length=256)] = None,
    cursor: Annotated[
        str | None, Query(max_length=36, description="id of the last incident of the previous page")
    ] = None,
    limit: Limit = 100,
) -> Response:
    """Incidents, newest first, filtered by status, severity and assignee. Role ``security-officer``."""
    criteria = queries.IncidentFilter(status=status, severity=severity, assignee=assignee)
    with services.engine.connect() as connection:
        items = queries.list_incidents(connection, criteria, cursor=cursor, limit=limit)
    return json_response({"items": items, "next_cursor": items[-1]["id"] if len(items) == limit else None})


@router.get("/incidents/{incident_id}", response_model=IncidentDetail, responses=NOT_FOUND)
def incident_get(
    incident_id: IncidentId,
    services: ServicesDep,
    _who: Annotated[Principal, Depends(Authorize("incidents:read"))],
) -> Response:
    """One incident with its alerts and comments, oldest first. Role ``security-officer``."""
    return _incident(services, incident_id)


@router.patch(
    "/incidents/{incident_id}", response_model=IncidentDetail, responses={**NOT_FOUND, **CHANGE_REFUSED}
)
def incident_change(
    incident_id: IncidentId,
    body: IncidentChange,
    request: Request,
    services: ServicesDep,
    principal: Annotated[Principal, Depends(Authorize("incidents:write"))],
) -> Response:
    """Change status, assignee or resolution (audited). Closing (resolved, false_positive) needs a resolution;
    a closed incident can only be reopened to in_progress. Role ``security-officer``."""
    changes = body.model_dump(include=body.model_fields_set)
    if changes.get("status") is None:
        changes.pop("status", None)  # an explicit null status means no change
    try:
        incidents.change(
            services.engine, services.audit, incident_id, changes, request_actor(request, principal)
        )
    except incidents.IncidentError as exc:
        raise _problem(exc) from None
    return _incident(services, incident_id)


@router.post(
    "/incidents/{incident_id}/comments", status_code=201, response_model=CommentPublic, responses=NOT_FOUND
)
def incident_comment(
    incident_id: IncidentId,
    body: CommentCreate,
    request: Request,
    services: ServicesDep,
    principal: Annotated[Principal, Depends(Authorize("incidents:write"))],
) -> Response:
    """Add a comment (audited, with its text); the author is the caller. Role ``security-officer``."""
    actor = request_actor(request, principal)
    try:
        note = incidents.comment(services.engine, services.audit, incident_id, body.body, actor)
    except incidents.IncidentError as exc:
        raise _problem(exc) from None
    note.pop("incident_id")
    return json_response(note, status_code=201)


def _incident(services: Services, incident_id: str) -> Response:
    with services.engine.connect() as connection:
        found = queries.get_incident(connection, incident_id)
    if found is None:
        raise HTTPException(404, f"no incident {incident_id}")
    return json_response(found)


def _problem(exc: incidents.IncidentError) -> HTTPException:
    """404 unknown incident, 409 a status the incident cannot take, 422 an inconsistent change."""
    if isinstance(exc, incidents.IncidentNotFound):
        return HTTPException(404, str(exc))
    if isinstance(exc, incidents.TransitionNotAllowed):
        return HTTPException(409, str(exc))
    return HTTPException(422, str(exc))
