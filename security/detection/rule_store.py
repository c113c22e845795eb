"""The rule overlay in the state database: uploaded rules, enabled flags and Sigma filters.

Why an overlay and not edits to the files: rule files (bundled, configured directories) are a read-only base a
redeploy replaces, while what a security officer changes through the API must survive it (DESIGN.md section 5).
So uploads are stored by rule reference and win over a base rule of the same reference; a flag disables any
rule without touching its file; a filter excludes known-good events from named rules until it expires.

Every change also bumps one revision counter in the same transaction, so a serving stage learns that the rule
set changed with one cheap read (``RuleCatalog.changed_since``) instead of rebuilding on a timer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.core import clock
from control_plane.core.db import Base, UtcDateTime


class RuleUpload(Base):
    """One rule (or correlation rule) document uploaded through the API: an overlay by rule reference."""

    __tablename__ = "rule_uploads"

    ref: Mapped[str] = mapped_column(sa.String(256), primary_key=True)
    """The rule's id, else its name, else its title (``ruleset.rule_ref``)."""
    yaml: Mapped[str] = mapped_column(sa.Text)
    version: Mapped[int] = mapped_column(sa.Integer)
    """1 on the first upload of the reference, then one more per replacement."""
    uploaded_by: Mapped[str] = mapped_column(sa.String(256))
    uploaded_at: Mapped[datetime] = mapped_column(UtcDateTime())


class RuleFlag(Base):
    """A rule switched off (or back on) by a person, with why: absent means enabled."""

    __tablename__ = "rule_flags"

    ref: Mapped[str] = mapped_column(sa.String(256), primary_key=True)
    enabled: Mapped[bool] = mapped_column(sa.Boolean)
    changed_by: Mapped[str] = mapped_column(sa.String(256))
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    reason: Mapped[str] = mapped_column(sa.String(1024))


class RuleFilter(Base):
    """A Sigma filter (sigma-filters-specification) with its owner, reason and expiry."""

    __tablename__ = "rule_filters"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(256))
    yaml: Mapped[str] = mapped_column(sa.Text)
    rules: Mapped[list[str]] = mapped_column(sa.JSON)
    """References of the rules it applies to, as the filter names them."""
    owner: Mapped[str] = mapped_column(sa.String(256))
    reason: Mapped[str] = mapped_column(sa.String(1024))
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    created_by: Mapped[str] = mapped_column(sa.String(256))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class RuleRevision(Base):
    """One row: bumped by every overlay change, so readers see "something changed" in one read."""

    __tablename__ = "rule_revision"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(sa.BigInteger)


uploads = cast(sa.Table, RuleUpload.__table__)
flags = cast(sa.Table, RuleFlag.__table__)
filters = cast(sa.Table, RuleFilter.__table__)
revision_table = cast(sa.Table, RuleRevision.__table__)


@dataclass(frozen=True)
class Overlay:
    """Everything the database adds to the file base, read in one transaction."""

    revision: int
    uploads: list[dict[str, Any]]
    flags: dict[str, dict[str, Any]]
    filters: list[dict[str, Any]]
    """Every filter, expired or not (the API lists them all; the loader keeps the active ones)."""

    @property
    def disabled(self) -> set[str]:
        return {ref for ref, flag in self.flags.items() if not flag["enabled"]}

    def active_filters(self, now: datetime) -> list[dict[str, Any]]:
        return [row for row in self.filters if row["expires_at"] > now]

    def next_expiry(self, now: datetime) -> datetime | None:
        """When the next active filter stops applying (the effective rule set changes then)."""
        return min((row["expires_at"] for row in self.active_filters(now)), default=None)


def _bump(connection: Connection) -> None:
    updated = connection.execute(
        sa.update(revision_table)
        .where(revision_table.c.id == 1)
        .values(revision=revision_table.c.revision + 1)
    )
    if updated.rowcount == 0:
        connection.execute(sa.insert(revision_table).values(id=1, revision=1))


def revision(engine: Engine) -> int:
    with engine.connect() as connection:
        value = connection.execute(
            sa.select(revision_table.c.revision).where(revision_table.c.id == 1)
        ).scalar()
    return int(value or 0)


def read_overlay(engine: Engine) -> Overlay:
    with engine.connect() as connection:
        value = connection.execute(
            sa.select(revision_table.c.revision).where(revision_table.c.id == 1)
        ).scalar()
        upload_rows = [
            dict(row._mapping) for row in connection.execute(sa.select(uploads).order_by(uploads.c.ref))
        ]
        flag_rows = {
            row.ref: dict(row._mapping) for row in connection.execute(sa.select(flags).order_by(flags.c.ref))
        }
        filter_rows = [
            dict(row._mapping)
            for row in connection.execute(sa.select(filters).order_by(filters.c.created_at, filters.c.id))
        ]
    return Overlay(int(value or 0), upload_rows, flag_rows, filter_rows)


def put_uploads(engine: Engine, documents: list[tuple[str, str]], *, by: str) -> dict[str, int]:
    """Store (ref, yaml) documents, replacing earlier uploads of the same refs; returns ref -> version."""
    now = clock.utcnow()
    versions: dict[str, int] = {}
    with engine.begin() as connection:
        _bump(connection)
        for ref, text in documents:
            current = connection.execute(sa.select(uploads.c.version).where(uploads.c.ref == ref)).scalar()
            values = {"yaml": text, "uploaded_by": by, "uploaded_at": now}
            if current is None:
                connection.execute(sa.insert(uploads).values(ref=ref, version=1, **values))
                versions[ref] = 1
            else:
                connection.execute(
                    sa.update(uploads).where(uploads.c.ref == ref).values(version=current + 1, **values)
                )
                versions[ref] = current + 1
    return versions


def delete_upload(engine: Engine, ref: str) -> bool:
    with engine.begin() as connection:
        gone = connection.execute(sa.delete(uploads).where(uploads.c.ref == ref)).rowcount
        if gone:
            _bump(connection)
    return bool(gone)


def set_enabled(engine: Engine, ref: str, *, enabled: bool, by: str, reason: str) -> None:
    now = clock.utcnow()
    with engine.begin() as connection:
        _bump(connection)
        values = {"enabled": enabled, "changed_by": by, "changed_at": now, "reason": reason}
        if connection.execute(sa.update(flags).where(flags.c.ref == ref).values(**values)).rowcount == 0:
            connection.execute(sa.insert(flags).values(ref=ref, **values))


def add_filter(engine: Engine, row: dict[str, Any]) -> None:
    with engine.begin() as connection:
        _bump(connection)
        connection.execute(sa.insert(filters).values(**row))


def delete_filter(engine: Engine, filter_id: str) -> dict[str, Any] | None:
    with engine.begin() as connection:
        row = connection.execute(sa.select(filters).where(filters.c.id == filter_id)).first()
        if row is None:
            return None
        connection.execute(sa.delete(filters).where(filters.c.id == filter_id))
        _bump(connection)
    return dict(row._mapping)
