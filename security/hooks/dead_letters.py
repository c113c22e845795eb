"""Dead-lettered notifications: stored with the whole alert and the last reason, listed, and marked when an
operator's retry delivered them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from control_plane.core import clock, ids
from control_plane.core.db import dialect_insert
from security.hooks.delivery import Outcome
from security.hooks.tables import hook_dead_letters

MAX_REASON = 1024
MAX_PAGE = 500


class HookDeadLetters:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, outcome: Outcome) -> str:
        """Store a failed notification; the same delivery failing again (a replayed alert) updates its row and
        makes it pending again. Returns the dead letter's id."""
        row = {
            "id": ids.new_id(),
            "delivery_id": outcome.delivery_id,
            "hook": outcome.hook,
            "kind": outcome.kind,
            "alert_id": outcome.alert.id,
            "alert": outcome.alert.to_record(),
            "reason": (outcome.reason or "undelivered")[:MAX_REASON],
            "status_code": outcome.status,
            "attempts": outcome.attempts,
            "dead_at": clock.utcnow(),
            "redelivered_at": None,
            "redelivered_by": None,
        }
        with self.engine.begin() as connection:
            insert = dialect_insert(connection)(hook_dead_letters).values(row)
            updated = {key: insert.excluded[key] for key in row if key not in ("id", "delivery_id")}
            connection.execute(insert.on_conflict_do_update(index_elements=["delivery_id"], set_=updated))
            return str(
                connection.scalar(
                    sa.select(hook_dead_letters.c.id).where(
                        hook_dead_letters.c.delivery_id == outcome.delivery_id
                    )
                )
            )

    def list(
        self,
        *,
        hook: str | None = None,
        pending: bool | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Newest first; ``pending`` True: not redelivered yet, False: redelivered; ``cursor`` is the last id
        of the previous page (ids sort by the time they were first dead-lettered)."""
        c = hook_dead_letters.c
        query = sa.select(hook_dead_letters)
        if hook is not None:
            query = query.where(c.hook == hook)
        if pending is not None:
            query = query.where(c.redelivered_at.is_(None) if pending else c.redelivered_at.is_not(None))
        if cursor is not None:
            query = query.where(c.id < cursor)
        with self.engine.connect() as connection:
            return [
                dict(row._mapping) for row in connection.execute(query.order_by(c.id.desc()).limit(limit))
            ]

    def get(self, dead_letter_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(hook_dead_letters).where(hook_dead_letters.c.id == dead_letter_id)
            ).first()
        return dict(row._mapping) if row is not None else None

    def redelivered(self, dead_letter_id: str, *, by: str, at: datetime | None = None) -> None:
        self._update(dead_letter_id, redelivered_at=at or clock.utcnow(), redelivered_by=by[:256])

    def failed_again(self, dead_letter_id: str, outcome: Outcome) -> None:
        self._update(
            dead_letter_id,
            reason=(outcome.reason or "undelivered")[:MAX_REASON],
            status_code=outcome.status,
            attempts=hook_dead_letters.c.attempts + outcome.attempts,
        )

    def _update(self, dead_letter_id: str, **values: Any) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                hook_dead_letters.update().where(hook_dead_letters.c.id == dead_letter_id).values(**values)
            )
