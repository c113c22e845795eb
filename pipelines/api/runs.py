"""Runs over HTTP: ad hoc production requests, watching runs and their steps' logs, cancel, retry, resubmit.

Role ``operator`` submits and acts (``runs:write``) and reads logs (``runs:logs``); ``ops-manager`` reads too.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from control_plane.core.auth.tokens import Principal
from control_plane.core.deps import Authorize, request_actor
from control_plane.core.responses import json_response
from pipelines.engine import ActionNotAllowed, BadRunRequest, Engine, RunError, RunNotFound, RunRequest
from pipelines.engine.logs import read_lines
from pipelines.engine.runs import MAX_PAGE, list_runs
from pipelines.engine.states import RunState

router = APIRouter(prefix="/api/v1/runs", tags=["runs"])
MAX_IDEMPOTENCY_KEY = 100
"""Longest ``Idempotency-Key`` a caller may send (the stored key adds the caller's namespace)."""
RunId = Annotated[str, Path(max_length=36)]
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"description": "the run's state does not allow the action"}
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no run with that id"}}


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chain: str = Field(min_length=1, max_length=64)
    version: str | None = Field(None, max_length=32)
    """Chain version; the latest when omitted."""
    parameters: dict[str, Any] = {}
    """Override the chain's default parameters; names outside its defaults are flagged in the audit trail."""
    inputs: list[str] = Field([], max_length=10_000)
    """Catalog ids of the input products."""
    lane: str | None = Field(None, max_length=32)
    """The chain's lane when omitted."""


class StepAttempt(BaseModel):
    attempt: int
    executor: str
    executor_ref: str | None
    image: str | None
    started_at: datetime
    ended_at: datetime | None
    exit_code: int | None
    outcome: str | None


class StepPublic(BaseModel):
    name: str
    state: str
    lane: str
    attempt: int
    max_attempts: int
    not_before: datetime | None
    ready_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    exit_code: int | None
    reason: str | None
    attempts: list[StepAttempt]


class RunPublic(BaseModel):
    id: str
    chain: str
    chain_version: str
    mission: str
    lane: str
    state: str
    trigger: str
    parameters: dict[str, Any]
    inputs: list[str]
    idempotency_key: str | None
    requested_by: str
    campaign_id: str | None
    baseline: str | None
    resubmitted_from: str | None
    reason: str | None
    parked_at: datetime | None
    t0: datetime | None
    wait_until: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    ended_at: datetime | None


class RunDetail(RunPublic):
    steps: list[StepPublic]


class RunsPage(BaseModel):
    items: list[RunPublic]
    next_cursor: str | None
    """Pass as ``cursor`` to get the next page; null on the last page."""


class LogLinePublic(BaseModel):
    id: int
    at: datetime
    stream: str
    line: str


class LogPage(BaseModel):
    run_id: str
    step: str
    attempt: int
    items: list[LogLinePublic]
    next_cursor: int | None


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.production.engine
    return engine


def detail(engine: Engine, run_id: str, status_code: int = 200) -> Response:
    try:
        return json_response(engine.describe(run_id), status_code=status_code)
    except RunNotFound as exc:
        raise HTTPException(404, str(exc)) from None


def answer_errors(exc: RunError) -> HTTPException:
    """The problem an engine error becomes: 404 unknown run, 409 not allowed in its state, 422 bad request."""
    if isinstance(exc, RunNotFound):
        return HTTPException(404, str(exc))
    if isinstance(exc, ActionNotAllowed):
        return HTTPException(409, str(exc))
    return HTTPException(422, str(exc))


def request_key(subject: str, key: str | None) -> str | None:
    """The stored form of a caller's ``Idempotency-Key``: scoped to the caller, so that two callers choosing the
    same key get two runs, and apart from the keys triggers derive (``systematic:``, ``cron:``, ``campaign:``)."""
    if key is None:
        return None
    return f"request:{hashlib.sha256(subject.encode()).hexdigest()[:16]}:{key}"


@router.post(
    "",
    status_code=201,
    response_model=RunDetail,
    responses={
        200: {"description": "the run this idempotency key made before"},
        422: {"description": "bad request"},
    },
)
def submit_run(
    body: RunCreate,
    request: Request,
    principal: Annotated[Principal, Depends(Authorize("runs:write"))],
    idempotency_key: Annotated[
        str | None, Header(description="the same key always gives the same run")
    ] = None,
) -> Response:
    """Request an ad hoc run of a chain: 201 with the new run, or 200 with the run an earlier request with the
    same ``Idempotency-Key`` made. Role ``operator``."""
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise HTTPException(400, f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters")
    engine = engine_of(request)
    run_request = RunRequest(
        chain_id=body.chain,
        chain_version=body.version,
        parameters=body.parameters,
        inputs=body.inputs,
        lane=body.lane,
        trigger="manual",
        idempotency_key=request_key(principal.subject, idempotency_key),
    )
    try:
        run_id, created = engine.submit(run_request, request_actor(request, principal))
    except (BadRunRequest, ActionNotAllowed) as exc:
        raise answer_errors(exc) from None
    return detail(engine, run_id, 201 if created else 200)


@router.get("", response_model=RunsPage)
def runs_list(
    request: Request,
    _who: Annotated[Principal, Depends(Authorize("runs:read"))],
    state: RunState | None = None,
    chain: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Annotated[
        str | None, Query(max_length=36, description="id of the last run of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> Response:
    """Runs, newest first, filtered by state and chain. Roles ``operator``, ``ops-manager``."""
    return runs_page(request, state=state, chain=chain, cursor=cursor, limit=limit)


def runs_page(
    request: Request,
    *,
    chain: str | None,
    cursor: str | None,
    limit: int,
    state: RunState | None = None,
    parked: bool = False,
) -> Response:
    """One page of runs as the runs and parking-lot lists answer it (``next_cursor``: null on the last)."""
    engine = engine_of(request)
    with engine.db.connect() as connection:
        items = list_runs(connection, state=state, chain=chain, parked=parked, cursor=cursor, limit=limit)
    return json_response({"items": items, "next_cursor": items[-1]["id"] if len(items) == limit else None})


@router.get("/{run_id}", response_model=RunDetail, responses=NOT_FOUND)
def run_get(
    run_id: RunId, request: Request, _who: Annotated[Principal, Depends(Authorize("runs:read"))]
) -> Response:
    """A run with its steps: states, times, every attempt. Roles ``operator``, ``ops-manager``."""
    return detail(engine_of(request), run_id)


@router.post("/{run_id}/cancel", response_model=RunDetail, responses={**NOT_FOUND, **CONFLICT})
def run_cancel(
    run_id: RunId, request: Request, principal: Annotated[Principal, Depends(Authorize("runs:write"))]
) -> Response:
    """Cancel a run that has not ended; running steps are killed (their whole process group, or their Job).
    Role ``operator``."""
    engine = engine_of(request)
    try:
        engine.cancel(run_id, request_actor(request, principal))
    except (RunNotFound, ActionNotAllowed) as exc:
        raise answer_errors(exc) from None
    return detail(engine, run_id)


@router.post("/{run_id}/retry", response_model=RunDetail, responses={**NOT_FOUND, **CONFLICT})
def run_retry(
    run_id: RunId, request: Request, principal: Annotated[Principal, Depends(Authorize("runs:write"))]
) -> Response:
    """New attempts of a failed run's failed steps, in the same run. Role ``operator``."""
    engine = engine_of(request)
    try:
        engine.retry(run_id, request_actor(request, principal))
    except (RunNotFound, ActionNotAllowed) as exc:
        raise answer_errors(exc) from None
    return detail(engine, run_id)


@router.post(
    "/{run_id}/resubmit", status_code=201, response_model=RunDetail, responses={**NOT_FOUND, **CONFLICT}
)
def run_resubmit(
    run_id: RunId, request: Request, principal: Annotated[Principal, Depends(Authorize("runs:write"))]
) -> Response:
    """A new run with the same chain version, inputs and parameters, linked by ``resubmitted_from``; answers
    the new run. Role ``operator``."""
    engine = engine_of(request)
    try:
        new_id = engine.resubmit(run_id, request_actor(request, principal))
    except (RunNotFound, ActionNotAllowed) as exc:
        raise answer_errors(exc) from None
    return detail(engine, new_id, 201)


@router.get("/{run_id}/steps/{step}/logs", response_model=LogPage, responses=NOT_FOUND)
def step_logs(
    run_id: RunId,
    step: Annotated[str, Path(max_length=64)],
    request: Request,
    _who: Annotated[Principal, Depends(Authorize("runs:logs"))],
    attempt: Annotated[int | None, Query(ge=1, description="the latest attempt when omitted")] = None,
    cursor: Annotated[int | None, Query(description="id of the last line of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    """A step's stdout and stderr, line by line, oldest first. Role ``operator``."""
    engine = engine_of(request)
    try:
        view = engine.describe(run_id)
    except RunNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    found = next((item for item in view["steps"] if item["name"] == step), None)
    if found is None:
        raise HTTPException(404, f"run {run_id} has no step {step!r}")
    chosen = attempt or max(found["attempt"], 1)
    items = read_lines(engine.db, run_id, step, attempt=chosen, after=cursor, limit=limit)
    return json_response(
        {
            "run_id": run_id,
            "step": step,
            "attempt": chosen,
            "items": items,
            "next_cursor": items[-1]["id"] if len(items) == limit else None,
        }
    )
