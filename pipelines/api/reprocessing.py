"""Reprocessing campaigns over HTTP: open one (role ``operator``), follow its progress."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from control_plane.core.auth.tokens import Principal
from control_plane.core.deps import Authorize, request_actor
from control_plane.core.responses import json_response
from pipelines.api.runs import MAX_IDEMPOTENCY_KEY, request_key
from pipelines.triggers.reprocessing import CampaignError, CampaignRequest, Campaigns

router = APIRouter(prefix="/api/v1/reprocessing", tags=["production"])


class CampaignBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chain: str = Field(min_length=1, max_length=64)
    version: str | None = None
    sensing_from: datetime | None = None
    """Start of the sensing range (inclusive); with ``sensing_to``, instead of ``products``."""
    sensing_to: datetime | None = None
    products: list[str] | None = Field(None, max_length=100_000)
    baseline: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,32}$")
    parameters: dict[str, Any] = {}


class CampaignCreated(BaseModel):
    id: str
    chain: str
    baseline: str
    lane: str
    runs: int
    created: bool
    """False when an earlier request with the same ``Idempotency-Key`` opened it (its missing runs are opened)."""


class CampaignStatus(BaseModel):
    id: str
    chain: str
    baseline: str
    selection: dict[str, Any]
    requested_by: str
    created_at: datetime
    runs: dict[str, int]
    """Runs of the campaign by state."""
    done: bool


def _campaigns(request: Request) -> Campaigns:
    campaigns: Campaigns = request.app.state.production.campaigns
    return campaigns


@router.post(
    "",
    status_code=201,
    response_model=CampaignCreated,
    responses={200: {"description": "the campaign this idempotency key opened before"}},
)
async def create_campaign(
    request: Request,
    body: CampaignBody,
    principal: Annotated[Principal, Depends(Authorize("reprocessing:write"))],
    idempotency_key: Annotated[
        str | None, Header(max_length=MAX_IDEMPOTENCY_KEY, description="the same key gives the same campaign")
    ] = None,
) -> Response:
    """Open a campaign: one run per input product, in the throttled reprocessing lane, as a new baseline (201);
    the same ``Idempotency-Key`` again gives the same campaign (200). Role ``operator``."""
    campaign = CampaignRequest(
        chain_id=body.chain,
        chain_version=body.version,
        sensing_from=body.sensing_from,
        sensing_to=body.sensing_to,
        product_ids=body.products,
        baseline=body.baseline,
        parameters=body.parameters,
        idempotency_key=request_key(principal.subject, idempotency_key),
    )
    try:
        created = await run_in_threadpool(
            _campaigns(request).create, campaign, request_actor(request, principal)
        )
    except CampaignError as exc:
        raise HTTPException(422, str(exc)) from None
    return json_response(created, status_code=201 if created["created"] else 200)


@router.get("/{campaign_id}", response_model=CampaignStatus)
async def campaign_status(
    request: Request,
    campaign_id: str,
    _who: Annotated[Principal, Depends(Authorize("runs:read"))],
) -> Response:
    """The campaign and its runs counted by state."""
    status = await run_in_threadpool(_campaigns(request).status, campaign_id)
    if status is None:
        raise HTTPException(404, f"no campaign {campaign_id}")
    return json_response(status)
