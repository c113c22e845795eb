"""Dead-lettered notifications over HTTP: list them, and retry one once its receiver is back.
Role ``security-officer`` (``admin`` implied)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from control_plane.core.auth.tokens import Principal
from control_plane.core.deps import Authorize, request_actor
from control_plane.core.responses import json_response
from security.hooks.dead_letters import MAX_PAGE
from security.hooks.notifier import Notifier

router = APIRouter(prefix="/api/v1/hooks", tags=["hooks"])
DeadLetterId = Annotated[str, Path(max_length=36)]


class DeadLetterPublic(BaseModel):
    id: str
    delivery_id: str
    """The ``X-Refsys-Delivery`` id the notification is (re)sent with."""
    hook: str
    kind: str
    alert_id: str
    alert: dict[str, Any]
    reason: str
    status_code: int | None
    attempts: int
    dead_at: datetime
    redelivered_at: datetime | None
    redelivered_by: str | None


class DeadLettersPage(BaseModel):
    items: list[DeadLetterPublic]
    next_cursor: str | None
    """Pass as ``cursor`` to get the next page; null on the last page."""


def notifier_of(request: Request) -> Notifier:
    notifier: Notifier = request.app.state.notifier
    return notifier


@router.get("/dead-letters", response_model=DeadLettersPage)
def dead_letters(
    request: Request,
    _who: Annotated[Principal, Depends(Authorize("hooks:read"))],
    hook: Annotated[str | None, Query(max_length=64)] = None,
    pending: Annotated[
        bool | None, Query(description="true: not redelivered yet; false: redelivered; omitted: both")
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=36, description="id of the last item of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> Response:
    """Notifications no hook attempt delivered, newest first, with the last reason. Role ``security-officer``."""
    items = notifier_of(request).dead_letters.list(hook=hook, pending=pending, cursor=cursor, limit=limit)
    return json_response({"items": items, "next_cursor": items[-1]["id"] if len(items) == limit else None})


@router.post(
    "/dead-letters/{dead_letter_id}/retry",
    response_model=DeadLetterPublic,
    responses={
        404: {"description": "no dead letter with that id"},
        409: {"description": "its hook is no longer configured"},
        502: {"description": "the receiver refused or could not be reached; the dead letter stays"},
    },
)
async def retry_dead_letter(
    dead_letter_id: DeadLetterId,
    request: Request,
    principal: Annotated[Principal, Depends(Authorize("hooks:write"))],
) -> Response:
    """One new attempt, with the same delivery id; on success the dead letter is marked redelivered. Audited.
    Role ``security-officer``."""
    notifier = notifier_of(request)
    actor = request_actor(request, principal)
    try:
        outcome = await run_in_threadpool(notifier.redeliver, dead_letter_id, actor)
    except KeyError as exc:
        raise HTTPException(409, f"hook {exc.args[0]} is no longer configured") from None
    if outcome is None:
        raise HTTPException(404, "no dead letter with that id")
    if not outcome.delivered:
        raise HTTPException(502, f"hook {outcome.hook} did not accept the notification: {outcome.reason}")
    return json_response(notifier.dead_letters.get(dead_letter_id))
