"""Correlation state checkpoints: each partition's window state saved together with the offset it covers.

Why both in one row: the correlation stage must never count a match twice. On restart a partition's engine is
restored from its snapshot and every ``matches`` record at or below the saved offset is skipped (its effect is
in the snapshot); everything after it is replayed into the restored state exactly once. The bus's own committed
offset only drives backlog and retention; this row is the authority. Alerts re-raised by a replay carry the
ids they had (deterministic from rule, group and window), so the sinks see the same alert, not a new one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.core import clock
from control_plane.core.db import Base, UtcDateTime


class CorrelationCheckpoint(Base):
    """One partition of the ``matches`` topic, as one consumer group's correlation stage last saved it."""

    __tablename__ = "correlation_checkpoints"

    group_name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    partition: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    offset: Mapped[int] = mapped_column(sa.BigInteger)
    """The last ``matches`` offset whose match is in the snapshot."""
    rules_digest: Mapped[str] = mapped_column(sa.String(64))
    """Digest of the correlation rules the snapshot was taken under (informational: restore keeps what fits)."""
    snapshot: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    saved_at: Mapped[datetime] = mapped_column(UtcDateTime())


checkpoints_table = cast(sa.Table, CorrelationCheckpoint.__table__)


class Checkpoints:
    def __init__(self, engine: Engine, group: str) -> None:
        self.engine = engine
        self.group = group

    def load(self, partition: int) -> tuple[int, dict[str, Any]] | None:
        """(offset, snapshot) saved for a partition, or None when it never was."""
        table = checkpoints_table
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(table.c.offset, table.c.snapshot).where(
                    table.c.group_name == self.group, table.c.partition == partition
                )
            ).first()
        return None if row is None else (int(row.offset), dict(row.snapshot))

    def save(self, partition: int, offset: int, snapshot: dict[str, Any], rules_digest: str) -> None:
        table = checkpoints_table
        values = {
            "offset": offset,
            "snapshot": snapshot,
            "rules_digest": rules_digest,
            "saved_at": clock.utcnow(),
        }
        with self.engine.begin() as connection:
            updated = connection.execute(
                table.update()
                .where(table.c.group_name == self.group, table.c.partition == partition)
                .values(**values)
            ).rowcount
            if not updated:
                connection.execute(
                    table.insert().values(group_name=self.group, partition=partition, **values)
                )
