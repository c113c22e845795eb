"""The audit trail over HTTP: list with filters and paging, and verify. Role ``auditor``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel

from control_plane.core.audit.trail import MAX_PAGE, AuditFilter
from control_plane.core.audit.verify import verify_trail
from control_plane.core.auth.tokens import Principal
from control_plane.core.deps import Authorize, ServicesDep
from control_plane.core.responses import json_response

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


class AuditRecordPublic(BaseModel):
    seq: int
    id: str
    time: datetime
    actor: str
    roles: list[str]
    jti: str | None
    client: str | None
    user_agent: str | None
    request_id: str | None
    action: str
    target: str | None
    outcome: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditRecordPublic]
    next_cursor: int | None
    """Pass as ``cursor`` to get the next page; null on the last page."""


class BrokenRecord(BaseModel):
    seq: int
    id: str | None
    reason: str


class AuditVerification(BaseModel):
    ok: bool
    records: int
    head_seq: int
    checkpoint_seq: int | None
    first_broken: BrokenRecord | None


@router.get("", response_model=AuditPage)
def list_audit(
    services: ServicesDep,
    _who: Annotated[Principal, Depends(Authorize("audit:read"))],
    actor: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: Annotated[int | None, Query(description="sequence to continue after (exclusive)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
) -> Response:
    """Audit records, newest first by default, filtered and paged by sequence cursor."""
    criteria = AuditFilter(
        actor=actor, action=action, outcome=outcome, target=target, since=since, until=until
    )
    items = services.audit.list(criteria, cursor=cursor, limit=limit, newest_first=order == "desc")
    return json_response({"items": items, "next_cursor": items[-1]["seq"] if len(items) == limit else None})


@router.get("/verify", response_model=AuditVerification)
def verify_audit(
    services: ServicesDep, _who: Annotated[Principal, Depends(Authorize("audit:verify"))]
) -> dict[str, Any]:
    """Verify the whole chain against its MAC key and the last signed checkpoint; names the first broken record."""
    return verify_trail(services.audit).as_dict()
