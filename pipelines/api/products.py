"""The catalog over HTTP: search, one product, and download with ranges, checksums, quotas and audit.

A download streams the stored file in chunks (never read whole). Before a byte is sent, the bytes the response
will carry are counted against the caller's daily quota; once the transfer ends (completed or abandoned) it is
audited with the bytes actually handed to the server, the caller and their address, so the SIEM side sees
download volume per user and per product. Quarantined, held (unscanned) and evicted products never send bytes.

Ranges: one ``bytes=`` range (``a-b``, ``a-``, ``-n``) answers 206 with ``Content-Range``; an unsatisfiable one
answers 416. A header with several ranges, another unit, or an ``If-Range`` that does not match the ETag is
ignored and the whole file is sent, as RFC 9110 section 14.2 allows.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Annotated, Any, BinaryIO, NoReturn
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from control_plane.core import clock
from control_plane.core.audit.trail import Actor
from control_plane.core.auth.tokens import Principal
from control_plane.core.deps import Authorize, request_actor
from control_plane.core.responses import json_response
from pipelines.catalog import Catalog, CatalogError, UnknownProduct
from pipelines.catalog.search import CursorError, ProductFilter
from pipelines.catalog.service import EVICTED, PUBLISHED, QUARANTINED, STATES, UNSCANNED

router = APIRouter(prefix="/api/v1/products", tags=["products"])
CHUNK_BYTES = 256 * 1024
MAX_PAGE = 1000
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class Lineage(BaseModel):
    run_id: str | None
    step: str | None
    chain_id: str | None
    chain_version: str | None
    inputs: list[str]


class ProductPublic(BaseModel):
    id: str
    name: str
    product_type: str
    mission: str
    state: str
    """published, quarantined, unscanned (held: not scanned yet), evicted."""
    downloadable: bool
    sensing_start: datetime | None
    sensing_stop: datetime | None
    t0: datetime | None
    size: int
    sha256: str
    timeliness: str | None
    baseline: str | None
    reprocessing: bool
    lineage: Lineage
    created_at: datetime
    published_at: datetime | None
    reason: str | None
    """Why it is quarantined, held or evicted."""


class ProductsPage(BaseModel):
    items: list[ProductPublic]
    next_cursor: str | None
    """Pass as ``cursor`` to get the next page; null on the last page."""


def _catalog(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.production.catalog
    return catalog


def _public(row: dict[str, Any]) -> dict[str, Any]:
    lineage = {name: row[name] for name in ("run_id", "step", "chain_id", "chain_version", "inputs")}
    public = {name: row[name] for name in ProductPublic.model_fields if name in row}
    return {**public, "lineage": lineage, "downloadable": row["state"] == PUBLISHED}


@router.get("", response_model=ProductsPage, responses={400: {"description": "bad cursor or state"}})
def list_products(
    request: Request,
    _who: Annotated[Principal, Depends(Authorize("products:read"))],
    type: Annotated[str | None, Query(description="product type, e.g. S2MSI2A")] = None,
    mission: str | None = None,
    sensing_from: Annotated[
        datetime | None, Query(description="sensing start at or after (RFC 3339)")
    ] = None,
    sensing_to: Annotated[datetime | None, Query(description="sensing start before (RFC 3339)")] = None,
    state: Annotated[str, Query(description=f"one of {', '.join(STATES)}, or 'any'")] = PUBLISHED,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> Response:
    """Products, newest registration first, filtered by type, mission, sensing start and state (published by
    default: quarantined and held products are listed only when asked for, and never as downloadable)."""
    if state != "any" and state not in STATES:
        raise HTTPException(400, f"state {state!r}: expected one of {', '.join(STATES)} or 'any'")
    for name, moment in (("sensing_from", sensing_from), ("sensing_to", sensing_to)):
        if moment is not None and moment.tzinfo is None:
            raise HTTPException(400, f"{name}: give a timezone (RFC 3339, e.g. 2026-11-25T00:00:00Z)")
    criteria = ProductFilter(
        product_type=type,
        mission=mission,
        state=None if state == "any" else state,
        sensing_from=sensing_from,
        sensing_to=sensing_to,
    )
    try:
        page = _catalog(request).search(criteria, cursor=cursor, limit=limit)
    except CursorError as exc:
        raise HTTPException(400, str(exc)) from None
    return json_response({"items": [_public(row) for row in page.rows], "next_cursor": page.next_cursor})


class RescanOutcome(BaseModel):
    id: str
    name: str
    product_type: str
    state: str
    """published (clean), quarantined (infected) or still unscanned (clamd still unreachable)."""


class RescanReport(BaseModel):
    items: list[RescanOutcome]


@router.post(
    "/rescan", response_model=RescanReport, responses={409: {"description": "no scanner is configured"}}
)
def rescan_held(
    request: Request, principal: Annotated[Principal, Depends(Authorize("products:rescan"))]
) -> Response:
    """Scan every product held as unscanned again, once clamd answers: clean ones are published and announced
    (downstream chains start), infected ones quarantined. Role ``operator``; audited per product and as a whole."""
    catalog = _catalog(request)
    actor = request_actor(request, principal)
    try:
        outcomes = request.app.state.production.rescan_held(actor)
    except CatalogError as exc:
        raise HTTPException(409, str(exc)) from None
    states = [outcome.state for outcome in outcomes]
    catalog.audit.append(
        actor=actor,
        action="product.rescan",
        outcome="failure" if UNSCANNED in states else "success",
        details={"products": len(states)} | {state: states.count(state) for state in sorted(set(states))},
    )
    items = [{"id": o.id, "name": o.name, "product_type": o.product_type, "state": o.state} for o in outcomes]
    return json_response({"items": items})


@router.get(
    "/{product_id}", response_model=ProductPublic, responses={404: {"description": "no such product"}}
)
def get_product(
    product_id: str, request: Request, _who: Annotated[Principal, Depends(Authorize("products:read"))]
) -> Response:
    """One product with its lineage (run, step, chain version, inputs), checksum and state."""
    try:
        return json_response(_public(_catalog(request).get(product_id)))
    except UnknownProduct as exc:
        raise HTTPException(404, str(exc)) from None


@router.get(
    "/{product_id}/download",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the whole file"},
        206: {"content": {"application/octet-stream": {}}, "description": "the requested range"},
        304: {"description": "If-None-Match matched the ETag"},
        404: {"description": "no such product, or evicted"},
        409: {"description": "quarantined or held unscanned: never distributed"},
        416: {"description": "range not satisfiable"},
        429: {"description": "daily download quota reached; retry after the Retry-After delay"},
    },
)
def download_product(
    product_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(Authorize("products:download"))],
) -> Response:
    """The product's bytes, streamed; ``Range`` (one range), ``ETag`` (its SHA-256), ``Repr-Digest``/``Digest``
    and ``X-Checksum-SHA256`` headers. Counted against the caller's daily quota before sending; audited."""
    catalog = _catalog(request)
    actor = request_actor(request, principal)
    try:
        row = catalog.get(product_id)
    except UnknownProduct as exc:
        raise HTTPException(404, str(exc)) from None
    if row["state"] != PUBLISHED:
        _refuse_unavailable(catalog, actor, row)
    size, etag = int(row["size"]), f'"{row["sha256"]}"'
    headers = _checksum_headers(row["sha256"]) | {"ETag": etag, "Accept-Ranges": "bytes"}
    if etag in _etags(request.headers.get("if-none-match")):
        return Response(status_code=304, headers=headers)
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    byte_range = parse_range(wanted, size) if wanted and if_range in (None, etag) else None
    start, length = byte_range if byte_range else (0, size)
    try:
        stream = catalog.storage.open(catalog.key_of(row))
    except FileNotFoundError:
        raise HTTPException(404, f"product {product_id}: its stored file is missing") from None
    try:
        decision = catalog.quota.reserve(principal.subject, length, clock.utcnow())
        if not decision.allowed:
            _refuse_quota(catalog, actor, row, length, decision.used_bytes, decision.limit_bytes)
            raise HTTPException(
                429,
                f"daily download quota reached: {decision.used_bytes} of {decision.limit_bytes} bytes used "
                f"today (UTC), this download needs {length}",
                headers={"Retry-After": str(decision.retry_after_s)},
            )
    except BaseException:
        stream.close()
        raise
    headers |= {
        "Content-Length": str(length),
        "Content-Disposition": _attachment(row["name"]),
    }
    if byte_range:
        headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
    return _AuditedDownload(
        stream,
        start=start,
        length=length,
        status_code=206 if byte_range else 200,
        headers=headers,
        on_done=lambda sent: _audit_download(catalog, actor, row, byte_range, sent, decision.used_bytes),
    )


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, length)`` of a single ``bytes=`` range; None to ignore the header (several ranges, another
    unit, malformed); 416 when no byte of it exists."""
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # a suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(header, size)
        return max(0, size - suffix), min(suffix, size)
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None  # invalid range-spec: ignored, as RFC 9110 says
    if start >= size:
        raise _unsatisfiable(header, size)
    return start, end - start + 1


def _unsatisfiable(header: str, size: int) -> HTTPException:
    return HTTPException(
        416,
        f"range {header!r} is outside the file ({size} bytes)",
        headers={"Content-Range": f"bytes */{size}"},
    )


def _etags(header: str | None) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")} if header else set()


def _checksum_headers(sha256_hex: str) -> dict[str, str]:
    digest = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
    return {
        "Repr-Digest": f"sha-256=:{digest}:",
        "Digest": f"sha-256={digest}",
        "X-Checksum-SHA256": sha256_hex,
    }


def _attachment(name: str) -> str:
    if name.isascii() and name.isprintable() and '"' not in name and "\\" not in name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename*=utf-8''{quote(name)}"


def _product_details(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "product_id": row["id"],
        "product_type": row["product_type"],
        "mission": row["mission"],
        "name": row["name"],
        "size": row["size"],
        "run_id": row["run_id"],
    }


def _refuse_unavailable(catalog: Catalog, actor: Actor, row: dict[str, Any]) -> NoReturn:
    """Audit and refuse a download of a product whose bytes are not distributed."""
    state = row["state"]
    reason = row["reason"] or state
    catalog.audit.append(
        actor=actor,
        action="product.download",
        outcome="refused",
        target=row["id"],
        details=_product_details(row) | {"state": state, "bytes": 0, "reason": reason},
    )
    if state == EVICTED:
        raise HTTPException(404, f"product {row['id']} was evicted ({reason}); its file no longer exists")
    if state == QUARANTINED:
        raise HTTPException(409, f"product {row['id']} is quarantined ({reason}) and is never distributed")
    raise HTTPException(
        409, f"product {row['id']} is held until it is scanned ({reason}); it is not distributed yet"
    )


def _refuse_quota(
    catalog: Catalog, actor: Actor, row: dict[str, Any], wanted: int, used: int, limit: int | None
) -> None:
    catalog.audit.append(
        actor=actor,
        action="product.download",
        outcome="refused",
        target=row["id"],
        details=_product_details(row)
        | {
            "bytes": 0,
            "bytes_requested": wanted,
            "quota_used_bytes": used,
            "quota_bytes": limit,
            "reason": "quota",
        },
    )


def _audit_download(
    catalog: Catalog,
    actor: Actor,
    row: dict[str, Any],
    byte_range: tuple[int, int] | None,
    sent: int,
    used: int,
) -> None:
    start, length = byte_range or (0, int(row["size"]))
    catalog.audit.append(
        actor=actor,
        action="product.download",
        outcome="success" if sent == length else "failure",
        target=row["id"],
        details=_product_details(row)
        | {
            "bytes": sent,
            "bytes_requested": length,
            "range": f"{start}-{start + length - 1}" if byte_range else None,
            "complete": sent == length,
            "quota_used_bytes": used,
        },
    )


def _chunks(stream: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    stream.seek(start)
    remaining = length
    while remaining > 0 and (chunk := stream.read(min(CHUNK_BYTES, remaining))):
        remaining -= len(chunk)
        yield chunk


class _AuditedDownload(StreamingResponse):
    """Streams a byte range of an open file, then closes it and reports the body bytes handed to the server,
    whether the transfer completed, failed or the client went away."""

    def __init__(
        self,
        stream: BinaryIO,
        *,
        start: int,
        length: int,
        status_code: int,
        headers: dict[str, str],
        on_done: Callable[[int], None],
    ) -> None:
        super().__init__(
            _chunks(stream, start, length),
            status_code=status_code,
            headers=headers,
            media_type="application/octet-stream",
        )
        self._stream = stream
        self._on_done = on_done
        self.sent = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counting_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body":
                self.sent += len(message.get("body", b""))

        try:
            await super().__call__(scope, receive, counting_send)
        finally:
            with anyio.CancelScope(shield=True):  # the client left: still close the file and audit
                self._stream.close()
                await run_in_threadpool(self._on_done, self.sent)
