"""Dead letters: every refused line, kept with its source, reason and exact bytes."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from control_plane.core import clock, ids
from security.intake.tables import dead_letters
from security.sources.base import Rejection

MAX_REASON = 1024


class DeadLetters:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(
        self, rejections: Sequence[Rejection], *, source: str, observer: str, request_id: str | None
    ) -> None:
        """Store ``rejections`` in one transaction (durable before the intake answers)."""
        if not rejections:
            return
        now = clock.utcnow()
        rows = [
            {
                "id": ids.new_id(),
                "received_at": now,
                "source": source,
                "observer": observer,
                "line_number": rejection.line.number,
                "reason": rejection.reason[:MAX_REASON],
                "raw": rejection.line.raw,
                "request_id": request_id,
            }
            for rejection in rejections
        ]
        with self.engine.begin() as connection:
            connection.execute(dead_letters.insert(), rows)

    def list(
        self, *, source: str | None = None, cursor: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Newest first; ``cursor`` is the id of the last item of the previous page (ids sort by time)."""
        query = sa.select(dead_letters)
        if source is not None:
            query = query.where(dead_letters.c.source == source)
        if cursor is not None:
            query = query.where(dead_letters.c.id < cursor)
        query = query.order_by(dead_letters.c.id.desc()).limit(limit)
        with self.engine.connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(query)]
        for row in rows:
            raw = row.pop("raw")
            row["raw"] = raw.decode("utf-8", errors="replace")
            row["raw_base64"] = base64.b64encode(raw).decode()
        return rows
