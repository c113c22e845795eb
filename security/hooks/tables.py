"""State table of the alert hooks: notifications that could not be delivered, kept until an operator retries."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.core.db import Base, UtcDateTime


class HookDeadLetter(Base):
    """One notification out of attempts, with the whole alert so that a retry needs nothing else.

    ``delivery_id`` is unique: the same notification dead-lettered again (a replayed alert) updates its row.
    """

    __tablename__ = "hook_dead_letters"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(sa.String(36), unique=True)
    hook: Mapped[str] = mapped_column(sa.String(64), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    alert_id: Mapped[str] = mapped_column(sa.String(128))
    alert: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    reason: Mapped[str] = mapped_column(sa.String(1024))
    status_code: Mapped[int | None] = mapped_column(sa.Integer)
    attempts: Mapped[int] = mapped_column(sa.Integer)
    dead_at: Mapped[datetime] = mapped_column(UtcDateTime())
    redelivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    redelivered_by: Mapped[str | None] = mapped_column(sa.String(256))


hook_dead_letters = cast(sa.Table, HookDeadLetter.__table__)
