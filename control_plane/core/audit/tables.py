"""Audit tables: the append-only records and the one-row head that serialises appends."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.core.db import Base, UtcDateTime

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first record."""


class AuditRecord(Base):
    __tablename__ = "audit_records"

    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    id: Mapped[str] = mapped_column(sa.String(36), unique=True)
    time: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    actor: Mapped[str] = mapped_column(sa.String(256), index=True)
    roles: Mapped[list[str]] = mapped_column(sa.JSON)
    jti: Mapped[str | None] = mapped_column(sa.String(128))
    client: Mapped[str | None] = mapped_column(sa.String(128))
    user_agent: Mapped[str | None] = mapped_column(sa.String(512))
    request_id: Mapped[str | None] = mapped_column(sa.String(64))
    action: Mapped[str] = mapped_column(sa.String(128), index=True)
    target: Mapped[str | None] = mapped_column(sa.String(512))
    outcome: Mapped[str] = mapped_column(sa.String(32))
    details: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64))
    mac: Mapped[str] = mapped_column(sa.String(64))


class AuditHead(Base):
    """The chain head. Every append starts by bumping ``seq`` here, which takes the row lock on PostgreSQL
    (and the write lock on SQLite): concurrent appenders queue instead of forking the chain."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    hash: Mapped[str] = mapped_column(sa.String(64))


records = cast(sa.Table, AuditRecord.__table__)
head = cast(sa.Table, AuditHead.__table__)
