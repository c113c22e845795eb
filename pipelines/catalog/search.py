"""Searching the catalog: filters on type, mission, state and sensing start, with keyset paging.

Pages are ordered newest registration first by ``(created_at, id)``; the cursor is that position of the last
item, so a product registered while someone pages never shifts or repeats the pages that follow.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from control_plane.core import clock
from pipelines.tables import products


@dataclass(frozen=True)
class ProductFilter:
    """Search criteria; ``sensing_from`` is inclusive and ``sensing_to`` exclusive, on ``sensing_start``."""

    product_type: str | None = None
    mission: str | None = None
    state: str | None = "published"
    """Published only by default; None: every state."""
    sensing_from: datetime | None = None
    sensing_to: datetime | None = None


@dataclass(frozen=True)
class ProductPage:
    rows: list[dict[str, Any]]
    next_cursor: str | None


class CursorError(ValueError):
    """A paging cursor that this catalog did not hand out."""


def encode_cursor(created_at: datetime, last_id: str) -> str:
    """An opaque cursor: the position (registration time, id) of the last item of a page."""
    return base64.urlsafe_b64encode(f"{clock.rfc3339(created_at)}|{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, last_id = text.split("|", 1)
        return clock.parse_rfc3339(moment), last_id
    except ValueError:  # bad base64, bad UTF-8, no separator, bad time: all ValueError
        raise CursorError(f"cursor {cursor[:64]!r} is not a cursor this API returned") from None


def search_products(
    engine: Engine, criteria: ProductFilter, *, cursor: str | None = None, limit: int = 100
) -> ProductPage:
    """One page of products matching ``criteria``, continuing after ``cursor``."""
    query = sa.select(products)
    for column, value in (
        (products.c.product_type, criteria.product_type),
        (products.c.mission, criteria.mission),
        (products.c.state, criteria.state),
    ):
        if value is not None:
            query = query.where(column == value)
    if criteria.sensing_from is not None:
        query = query.where(products.c.sensing_start >= criteria.sensing_from)
    if criteria.sensing_to is not None:
        query = query.where(products.c.sensing_start < criteria.sensing_to)
    if cursor is not None:
        created_at, last_id = decode_cursor(cursor)
        query = query.where(
            (products.c.created_at < created_at)
            | ((products.c.created_at == created_at) & (products.c.id < last_id))
        )
    query = query.order_by(products.c.created_at.desc(), products.c.id.desc()).limit(limit + 1)
    with engine.connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    return ProductPage(rows, encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None)
