"""Liveness, readiness, metrics and the built-in issuer's JWKS: the routes outside ``/api/v1``."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from control_plane.core import schema
from control_plane.core.auth.tokens import Principal
from control_plane.core.deps import Authorize, ServicesDep
from control_plane.core.problems import problem_response

router = APIRouter(tags=["system"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. Anonymous."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is not ready"}})
def readyz(services: ServicesDep) -> Any:
    """Readiness: the database answers, its schema is at head, and the bus is usable. Anonymous."""
    checks: dict[str, str] = {}
    try:
        with services.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
        current = schema.current_revision(services.engine)
        checks["schema"] = "ok" if current == schema.head_revision() else f"at {current}, needs upgrade"
    except sa.exc.SQLAlchemyError as exc:
        checks["database"] = f"unreachable: {exc.__class__.__name__}"
    try:
        services.bus.check()
        checks["bus"] = "ok"
    except Exception as exc:  # any failure of the bus back-end means "not ready"; its kind is reported
        checks["bus"] = f"not ready: {exc.__class__.__name__}"
    if all(value == "ok" for value in checks.values()):
        return {"status": "ready", "checks": checks}
    return problem_response(503, "not ready", extensions={"checks": checks})


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(
    services: ServicesDep, _who: Annotated[Principal, Depends(Authorize("metrics:read"))]
) -> Response:
    """Prometheus metrics of this server. Role ``metrics`` (a machine key or a token)."""
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


jwks_router = APIRouter(tags=["system"])


@jwks_router.get("/.well-known/jwks.json")
def jwks(services: ServicesDep) -> JSONResponse:
    """Public keys of the built-in issuer, for anyone verifying its tokens. Anonymous."""
    assert services.issuer is not None, "mounted only when the built-in issuer is on"
    return JSONResponse(services.issuer.jwks(), headers={"cache-control": "public, max-age=60"})


@router.get("/openapi.json", include_in_schema=False)
def openapi_document(
    request: Request, _who: Annotated[Principal, Depends(Authorize("api:schema"))]
) -> JSONResponse:
    """The OpenAPI document, for any signed-in person (DESIGN: nothing but health, JWKS and sign-in is anonymous)."""
    return JSONResponse(request.app.openapi())
