"""Reprocessing campaigns: one chain version over a sensing-date range or a list of products, as a new baseline.

A campaign opens one run per input product in the throttled lane (``production.lanes``, the one marked
``throttled``), so it only uses step slots that no other lane could use: NRT and PT production keep their start
latency however big the campaign. Its runs carry the campaign's baseline, and their outputs are flagged
``reprocessing`` in the catalog and in traces, which keeps them out of timeliness KPIs and duplicate detection,
and out of systematic triggering. Each run's idempotency key is (campaign, product), so a request retried
after a failure opens no run twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine as DbEngine

from control_plane.core import clock, ids
from control_plane.core.audit.trail import Actor, AuditTrail
from control_plane.core.config import Settings
from pipelines import tables
from pipelines.engine import Engine, RunRequest
from pipelines.registry import ChainRegistry
from pipelines.triggers.systematic import needs_one_product

CAMPAIGN_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:refsys:campaign")
"""UUIDv5 namespace of campaign ids derived from an idempotency key."""


class CampaignError(ValueError):
    """A campaign request that cannot be carried out; the message says which part."""


@dataclass(frozen=True)
class CampaignRequest:
    chain_id: str
    chain_version: str | None = None
    sensing_from: datetime | None = None
    sensing_to: datetime | None = None
    product_ids: list[str] | None = None
    baseline: str | None = None
    """Baseline of the outputs; default: ``R`` + the campaign's creation time (``R20261125T1930``)."""
    parameters: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    """The same key gives the same campaign: a retried request (or one that failed half-way) opens the runs
    still missing and no run twice."""


def reprocessing_lane(settings: Settings) -> str:
    """The lane campaigns run in: the first lane marked ``throttled``."""
    for name, lane in settings.production.lanes.items():
        if lane.throttled:
            return name
    raise CampaignError(
        "no lane is marked throttled in production.lanes: reprocessing would delay production"
    )


class Campaigns:
    def __init__(
        self, *, settings: Settings, db: DbEngine, registry: ChainRegistry, engine: Engine, audit: AuditTrail
    ) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.engine = engine
        self.audit = audit

    def create(self, request: CampaignRequest, actor: Actor) -> dict[str, Any]:
        """Open the campaign and its runs; returns the campaign with its run count."""
        try:
            chain = self.registry.get(request.chain_id, request.chain_version)
        except KeyError:
            raise CampaignError(
                f"chain {request.chain_id!r} version {request.chain_version!r} is unknown"
            ) from None
        if not needs_one_product(chain):
            raise CampaignError(
                f"chain {chain.key} needs several inputs per run; campaigns take one-input chains"
            )
        lane = reprocessing_lane(self.settings)
        products = self._select(chain.inputs[0].product_type, request)
        now = clock.utcnow()
        campaign_id = (
            str(uuid.uuid5(CAMPAIGN_NAMESPACE, request.idempotency_key))
            if request.idempotency_key
            else ids.new_id()
        )
        existing = self._baseline_of(campaign_id)
        baseline = existing or request.baseline or now.strftime("R%Y%m%dT%H%M")
        selection = {
            "product_ids": request.product_ids,
            "sensing_from": clock.rfc3339(request.sensing_from) if request.sensing_from else None,
            "sensing_to": clock.rfc3339(request.sensing_to) if request.sensing_to else None,
            "products": len(products),
        }
        if existing is None:
            self._open(campaign_id, chain.id, chain.version, baseline, selection, actor, now, lane)
        for product_id in products:
            self.engine.submit(
                RunRequest(
                    chain_id=chain.id,
                    chain_version=chain.version,
                    parameters=dict(request.parameters),
                    inputs=[product_id],
                    lane=lane,
                    trigger="reprocessing",
                    idempotency_key=f"campaign:{campaign_id}:{product_id}",
                    campaign_id=campaign_id,
                    baseline=baseline,
                ),
                actor,
            )
        return {
            "id": campaign_id,
            "chain": chain.key,
            "baseline": baseline,
            "lane": lane,
            "runs": len(products),
            "created": existing is None,
        }

    def _baseline_of(self, campaign_id: str) -> str | None:
        with self.db.connect() as connection:
            return connection.execute(
                sa.select(tables.campaigns.c.baseline).where(tables.campaigns.c.id == campaign_id)
            ).scalar_one_or_none()

    def _open(
        self,
        campaign_id: str,
        chain_id: str,
        chain_version: str,
        baseline: str,
        selection: dict[str, Any],
        actor: Actor,
        now: datetime,
        lane: str,
    ) -> None:
        with self.db.begin() as connection:
            connection.execute(
                tables.campaigns.insert().values(
                    id=campaign_id,
                    chain_id=chain_id,
                    chain_version=chain_version,
                    baseline=baseline,
                    selection=selection,
                    state="running",
                    requested_by=actor.subject,
                    created_at=now,
                )
            )
        self.audit.append(
            actor=actor,
            action="reprocessing.create",
            outcome="success",
            target=campaign_id,
            details={"chain": f"{chain_id}@{chain_version}", "baseline": baseline, "lane": lane, **selection},
        )

    def _select(self, product_type: str, request: CampaignRequest) -> list[str]:
        products = tables.products
        query = sa.select(products.c.id, products.c.product_type, products.c.state).order_by(
            products.c.sensing_start, products.c.id
        )
        if request.product_ids is not None:
            if not request.product_ids:
                raise CampaignError("products: the list is empty")
            rows = self._rows(query.where(products.c.id.in_(request.product_ids)))
            found = {row.id: row for row in rows}
            missing = [pid for pid in request.product_ids if pid not in found]
            if missing:
                raise CampaignError(f"products: unknown product {missing[0]!r}")
            wrong = [row.id for row in rows if row.product_type != product_type or row.state != "published"]
            if wrong:
                raise CampaignError(f"products: {wrong[0]!r} is not a published {product_type} product")
            return [pid for pid in dict.fromkeys(request.product_ids)]
        if request.sensing_from is None or request.sensing_to is None:
            raise CampaignError("give either products or both sensing_from and sensing_to")
        if request.sensing_to < request.sensing_from:
            raise CampaignError("sensing_to is before sensing_from")
        rows = self._rows(
            query.where(
                products.c.product_type == product_type,
                products.c.state == "published",
                products.c.reprocessing.is_(False),
                products.c.sensing_start >= request.sensing_from,
                products.c.sensing_start <= request.sensing_to,
            )
        )
        if not rows:
            raise CampaignError(f"no published {product_type} product was sensed in that range")
        return [row.id for row in rows]

    def _rows(self, query: sa.Select[Any]) -> list[Any]:
        with self.db.connect() as connection:
            return list(connection.execute(query))

    def status(self, campaign_id: str) -> dict[str, Any] | None:
        """The campaign with its runs counted by state (``None`` when unknown)."""
        with self.db.connect() as connection:
            row = connection.execute(
                sa.select(tables.campaigns).where(tables.campaigns.c.id == campaign_id)
            ).one_or_none()
            if row is None:
                return None
            states: dict[str, int] = {
                str(state): int(count)
                for state, count in connection.execute(
                    sa.select(tables.runs.c.state, sa.func.count())
                    .where(tables.runs.c.campaign_id == campaign_id)
                    .group_by(tables.runs.c.state)
                )
            }
        return {
            "id": row.id,
            "chain": f"{row.chain_id}@{row.chain_version}",
            "baseline": row.baseline,
            "selection": row.selection,
            "requested_by": row.requested_by,
            "created_at": clock.rfc3339(row.created_at),
            "runs": states,
            "done": sum(states.values()) > 0
            and all(state in {"succeeded", "failed", "cancelled", "timed-out"} for state in states),
        }
