"""Retention per product type: published products older than their type's ``retention_days`` are evicted.

Eviction deletes the file first, then marks the row ``evicted`` with a conditional update, then audits. A crash
after the delete leaves a published row without a file; the next round finds it still expired and finishes the
job (deleting twice is fine). Two evictors never audit the same product twice: only the one whose update
changed the row does. Quarantined and held products are not evicted: they wait for a person.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from control_plane.core import clock
from control_plane.core.audit.trail import Actor, AuditTrail
from pipelines.catalog.storage import Storage, StorageError
from pipelines.tables import products

log = logging.getLogger(__name__)

RETENTION_ACTOR = Actor(subject="refsys:retention")
BATCH = 500


class Retention:
    def __init__(
        self, *, engine: Engine, storage: Storage, audit: AuditTrail, days: Mapping[str, int]
    ) -> None:
        self.engine = engine
        self.storage = storage
        self.audit = audit
        self.days = dict(days)

    def evict_expired(self, now: datetime) -> int:
        """Evict every expired product now; returns how many this call evicted."""
        evicted = 0
        for product_type, days in sorted(self.days.items()):
            cutoff = now - timedelta(days=days)
            while rows := self._expired(product_type, cutoff):
                evicted += sum(self._evict(row, days, now) for row in rows)
        return evicted

    def _expired(self, product_type: str, cutoff: datetime) -> list[dict[str, Any]]:
        query = (
            sa.select(products)
            .where(products.c.product_type == product_type)
            .where(products.c.state == "published")
            .where(products.c.published_at < cutoff)
            .order_by(products.c.published_at)
            .limit(BATCH)
        )
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def _evict(self, row: Mapping[str, Any], days: int, now: datetime) -> bool:
        try:
            self.storage.delete(self.storage.key(str(row["uri"])))
        except StorageError as exc:  # a URI from another storage: its file is not ours to delete
            log.error("retention: product %s: %s; marking it evicted anyway", row["id"], exc)
        reason = f"retention: {row['product_type']} is kept {days} days"
        with self.engine.begin() as connection:
            changed = connection.execute(
                products.update()
                .where((products.c.id == row["id"]) & (products.c.state == "published"))
                .values(state="evicted", reason=reason)
            ).rowcount
        if not changed:
            return False
        self.audit.append(
            actor=RETENTION_ACTOR,
            action="product.evict",
            outcome="success",
            target=str(row["id"]),
            details={
                "product_id": row["id"],
                "product_type": row["product_type"],
                "mission": row["mission"],
                "name": row["name"],
                "size": row["size"],
                "run_id": row["run_id"],
                "published_at": clock.rfc3339(row["published_at"]),
                "evicted_at": clock.rfc3339(now),
                "retention_days": days,
            },
        )
        return True
