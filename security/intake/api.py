"""The intake over HTTP: ``POST /api/v1/ingest/{source}``, dead letters and source health."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from control_plane.core.auth.tokens import Principal
from control_plane.core.deps import Authorize
from control_plane.core.responses import json_response
from security.intake.framing import FramingError
from security.intake.identity import FileSlice, Origin, RequestKey
from security.intake.service import SpoolFull, UnknownSource

router = APIRouter(prefix="/api/v1/ingest", tags=["ingest"])
MAX_IDEMPOTENCY_KEY = 200


class LineRejection(BaseModel):
    line: int
    reason: str


class IngestSummary(BaseModel):
    source: str
    dataset: str
    lines: int
    accepted: int
    rejected: int
    ignored: int
    clamped: int
    rejections: list[LineRejection]


def _origin(idempotency_key: str | None, file_slice: str | None) -> Origin:
    if file_slice is not None:
        try:
            return FileSlice.parse(file_slice)
        except ValueError as exc:
            raise HTTPException(400, f"Refsys-File-Slice: {exc}") from None
    if idempotency_key is not None:
        if not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise HTTPException(400, f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters")
        return RequestKey(idempotency_key)
    return None


@router.post(
    "/{source}",
    status_code=202,
    response_model=IngestSummary,
    responses={
        400: {"description": "unreadable body or header"},
        404: {"description": "unknown source"},
        429: {"description": "spool full; retry after the Retry-After delay"},
    },
)
async def ingest(
    source: str,
    request: Request,
    principal: Annotated[Principal, Depends(Authorize("telemetry:ingest"))],
    content_encoding: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header()] = None,
    refsys_file_slice: Annotated[
        str | None, Header(description="FINGERPRINT@OFFSET of a verbatim file slice")
    ] = None,
    refsys_heartbeat: Annotated[
        int | None, Header(ge=1, description="expected seconds between batches")
    ] = None,
) -> Response:
    """Ingest a JSON object, a JSON array or NDJSON (text lines for text sources), optionally gzip. Durable
    on the bus before 202; each rejected line is dead-lettered and reported with its number and reason.
    Role ``ingest`` (a machine key or a token)."""
    origin = _origin(idempotency_key, refsys_file_slice)
    body = await request.body()
    intake = request.app.state.telemetry.intake
    try:
        result = await run_in_threadpool(
            intake.ingest, source, body, observer=principal.subject, origin=origin, encoding=content_encoding,
            request_id=getattr(request.state, "request_id", None), heartbeat_s=refsys_heartbeat,
        )  # fmt: skip
    except UnknownSource as exc:
        raise HTTPException(404, str(exc).strip("'\"")) from None
    except SpoolFull as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
    except FramingError as exc:
        raise HTTPException(400, str(exc)) from None
    return json_response(result.as_dict(), status_code=202)


@router.get("/dead-letters")
def dead_letters(
    request: Request,
    _who: Annotated[Principal, Depends(Authorize("telemetry:read"))],
    source: str | None = None,
    cursor: Annotated[str | None, Query(description="id of the last item of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Lines the intake refused, newest first, with source, reason and the raw bytes. Role ``security-officer``."""
    items = request.app.state.telemetry.dead_letters.list(source=source, cursor=cursor, limit=limit)
    return {"items": items, "next_cursor": items[-1]["id"] if len(items) == limit else None}


@router.get("/sources")
def sources(
    request: Request, _who: Annotated[Principal, Depends(Authorize("telemetry:read"))]
) -> dict[str, Any]:
    """Every source and observer seen: last seen, totals, rates, lag, expected heartbeat and status
    (``silent`` once past it). Role ``security-officer``."""
    return {"items": request.app.state.telemetry.health.snapshot()}
