"""State tables of the intake, in the state database: dead letters, source health, shipping cursors."""

from __future__ import annotations

from datetime import datetime
from typing import cast

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.core.db import Base, UtcDateTime


class DeadLetter(Base):
    """A line the intake refused, with the reason and the exact bytes, so nothing sent is ever lost."""

    __tablename__ = "dead_letters"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    source: Mapped[str] = mapped_column(sa.String(64), index=True)
    observer: Mapped[str] = mapped_column(sa.String(256))
    line_number: Mapped[int] = mapped_column(sa.Integer)
    reason: Mapped[str] = mapped_column(sa.String(1024))
    raw: Mapped[bytes] = mapped_column(sa.LargeBinary)
    request_id: Mapped[str | None] = mapped_column(sa.String(64))


class SourceHealth(Base):
    """Last known state of each (source, observer): shared by every replica, so silence is judged on all."""

    __tablename__ = "source_health"

    source: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    observer: Mapped[str] = mapped_column(sa.String(256), primary_key=True)
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime())
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime())
    accepted: Mapped[int] = mapped_column(sa.BigInteger)
    rejected: Mapped[int] = mapped_column(sa.BigInteger)
    expected_heartbeat_s: Mapped[int | None] = mapped_column(sa.Integer)
    silent_since: Mapped[datetime | None] = mapped_column(UtcDateTime())


class TelemetryCursor(Base):
    """How far a shipper has read an ordered log (the control plane's audit trail) into the event store."""

    __tablename__ = "telemetry_cursors"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    position: Mapped[int] = mapped_column(sa.BigInteger)


dead_letters = cast(sa.Table, DeadLetter.__table__)
source_health = cast(sa.Table, SourceHealth.__table__)
telemetry_cursors = cast(sa.Table, TelemetryCursor.__table__)
