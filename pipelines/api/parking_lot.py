"""The parking lot over HTTP: runs that failed for good, waiting for an operator to restart, resubmit or drop
them, one by one or in bulk. Every action is audited and published on the ``parking-lot`` topic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from control_plane.core.audit.trail import Actor
from control_plane.core.auth.tokens import Principal
from control_plane.core.deps import Authorize, request_actor
from pipelines.api.runs import (
    CONFLICT,
    NOT_FOUND,
    RunDetail,
    RunId,
    RunsPage,
    answer_errors,
    detail,
    engine_of,
    runs_page,
)
from pipelines.engine import Engine, RunError
from pipelines.engine.runs import MAX_PAGE

router = APIRouter(prefix="/api/v1/parking-lot", tags=["parking-lot"])
Action = Literal["restart", "resubmit", "drop"]
MAX_BULK = 500


class BulkAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Action
    run_ids: list[str] = Field(min_length=1, max_length=MAX_BULK)


class BulkItem(BaseModel):
    run_id: str
    status: int
    """What the single action would have answered: 200 (201 for a resubmit), 404 or 409."""
    detail: str | None
    new_run_id: str | None


class BulkResult(BaseModel):
    action: Action
    items: list[BulkItem]


def _act(engine: Engine, action: Action, run_id: str, actor: Actor) -> str | None:
    """Carry out one action; returns the new run's id for a resubmit."""
    actions: dict[Action, Callable[[], Any]] = {
        "restart": lambda: engine.retry(run_id, actor, parking_lot=True),
        "resubmit": lambda: engine.resubmit(run_id, actor, parking_lot=True),
        "drop": lambda: engine.drop(run_id, actor),
    }
    result = actions[action]()
    return result if isinstance(result, str) else None


@router.get("", response_model=RunsPage)
def parked_runs(
    request: Request,
    _who: Annotated[Principal, Depends(Authorize("parking-lot:read"))],
    chain: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Annotated[
        str | None, Query(max_length=36, description="id of the last run of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> Response:
    """Runs out of retries, newest first, with why they failed. Role ``operator``."""
    return runs_page(request, chain=chain, parked=True, cursor=cursor, limit=limit)


def _single(action: Action, status_code: int = 200) -> Callable[..., Response]:
    def handler(
        run_id: RunId,
        request: Request,
        principal: Annotated[Principal, Depends(Authorize("parking-lot:write"))],
    ) -> Response:
        engine = engine_of(request)
        try:
            new_id = _act(engine, action, run_id, request_actor(request, principal))
        except RunError as exc:
            raise answer_errors(exc) from None
        return detail(engine, new_id or run_id, status_code)

    return handler


router.add_api_route(
    "/{run_id}/restart",
    _single("restart"),
    methods=["POST"],
    response_model=RunDetail,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Restart a parked run",
    description="New attempts of its failed steps, in the same run; it leaves the parking lot. Role ``operator``.",
)
router.add_api_route(
    "/{run_id}/resubmit",
    _single("resubmit", 201),
    methods=["POST"],
    status_code=201,
    response_model=RunDetail,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Resubmit a parked run",
    description="A new run with the same inputs and parameters (answered); the old one leaves the parking lot. "
    "Role ``operator``.",
)
router.add_api_route(
    "/{run_id}/drop",
    _single("drop"),
    methods=["POST"],
    response_model=RunDetail,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Drop a parked run",
    description="Take it out of the parking lot; nothing else changes. Role ``operator``.",
)


@router.post("/actions", response_model=BulkResult)
def bulk_action(
    body: BulkAction,
    request: Request,
    principal: Annotated[Principal, Depends(Authorize("parking-lot:write"))],
) -> dict[str, Any]:
    """One action on many parked runs; each run gets its own result (one failing does not stop the others).
    Role ``operator``."""
    engine = engine_of(request)
    actor = request_actor(request, principal)
    items = []
    for run_id in dict.fromkeys(body.run_ids):
        try:
            new_id = _act(engine, body.action, run_id, actor)
        except RunError as exc:
            problem = answer_errors(exc)
            items.append(
                {
                    "run_id": run_id,
                    "status": problem.status_code,
                    "detail": problem.detail,
                    "new_run_id": None,
                }
            )
            continue
        status = 201 if body.action == "resubmit" else 200
        items.append({"run_id": run_id, "status": status, "detail": None, "new_run_id": new_id})
    return {"action": body.action, "items": items}
