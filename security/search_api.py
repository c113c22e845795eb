"""``POST /api/v1/events/search``: the documented JSON query over the event store.

Who sees what: the control plane's own audit records (dataset ``refsys.audit``) are visible to ``auditor`` and
``admin`` only (DESIGN.md section 4); an auditor sees nothing but them, a security officer everything else.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from control_plane.core.auth.roles import Role
from control_plane.core.auth.tokens import Principal
from control_plane.core.deps import Authorize
from control_plane.core.responses import json_response
from security.sources.control_plane import AUDIT_DATASET
from security.store.base import Aggregation, DateHistogramAgg, EventQuery, Scalar, TermsAgg

MAX_PAGE = 1000

router = APIRouter(prefix="/api/v1/events", tags=["events"])


class TermsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str
    size: int = Field(10, ge=1, le=1000)


class DateHistogramSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    interval_s: int = Field(..., ge=1)
    field: str = "@timestamp"


class AggregationSpec(BaseModel):
    """Exactly one of ``terms`` or ``date_histogram``."""

    model_config = ConfigDict(extra="forbid")
    terms: TermsSpec | None = None
    date_histogram: DateHistogramSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> AggregationSpec:
        if (self.terms is None) == (self.date_histogram is None):
            raise ValueError("give exactly one of terms or date_histogram")
        return self

    def build(self) -> Aggregation:
        if self.terms is not None:
            return TermsAgg(field=self.terms.field, size=self.terms.size)
        assert self.date_histogram is not None
        return DateHistogramAgg(interval_s=self.date_histogram.interval_s, field=self.date_histogram.field)


class SearchRequest(BaseModel):
    """A search: time range (start inclusive, end exclusive), datasets, exact-value filters on dotted ECS
    fields (any of the values), free text (all words, ``"quoted phrases"``), sort by ``@timestamp``,
    ``search_after`` paging (the ``sort`` of the last hit), and optional aggregations."""

    model_config = ConfigDict(extra="forbid")
    start: datetime
    end: datetime
    datasets: list[str] = []
    filters: dict[str, list[Scalar]] = {}
    text: str | None = Field(None, max_length=1000)
    sort: Literal["asc", "desc"] = "desc"
    size: int = Field(100, ge=0, le=MAX_PAGE)
    search_after: list[Any] | None = None
    aggregations: dict[str, AggregationSpec] = {}

    @model_validator(mode="after")
    def _ordered(self) -> SearchRequest:
        if "count" in self.aggregations:
            raise ValueError(
                "'count' is the total the response always carries; name the aggregation otherwise"
            )
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end need a timezone (RFC 3339, e.g. 2026-11-25T00:00:00Z)")
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class SearchHit(BaseModel):
    event: dict[str, Any]
    sort: list[Any]


class SearchResponse(BaseModel):
    total: int
    hits: list[SearchHit]
    aggregations: dict[str, Any] = {}


def visible_query(search: SearchRequest, principal: Principal) -> EventQuery:
    """The store query, narrowed to what ``principal`` may read."""
    datasets: list[str] = list(search.datasets)
    excluded: list[str] = []
    if Role.ADMIN not in principal.roles:
        if Role.SECURITY_OFFICER in principal.roles and Role.AUDITOR not in principal.roles:
            excluded.append(AUDIT_DATASET)
        elif Role.SECURITY_OFFICER not in principal.roles:  # an auditor: the audit trail only
            if any(dataset != AUDIT_DATASET for dataset in datasets):
                raise HTTPException(
                    403, f"auditors search the control plane's audit records ({AUDIT_DATASET}) only"
                )
            datasets = [AUDIT_DATASET]
    return EventQuery(
        start=search.start,
        end=search.end,
        datasets=datasets,
        exclude_datasets=excluded,
        filters=search.filters,
        text=search.text,
        sort=search.sort,
        size=search.size,
        search_after=search.search_after,
    )


@router.post("/search", response_model=SearchResponse)
def search_events(
    search: SearchRequest,
    request: Request,
    principal: Annotated[Principal, Depends(Authorize("events:search"))],
) -> Response:
    """Search stored events and aggregate them. Roles ``security-officer`` (all but the control plane's audit
    records) and ``auditor`` (those records only)."""
    store = request.app.state.telemetry.store
    query = visible_query(search, principal)
    page = store.search(query)
    body: dict[str, Any] = {
        "total": page.total,
        "hits": [{"event": hit.doc, "sort": hit.sort} for hit in page.hits],
    }
    if search.aggregations:
        body["aggregations"] = store.aggregate(
            query, {name: spec.build() for name, spec in search.aggregations.items()}
        )
    return json_response(body)
