"""Machine keys: long-lived, revocable bearer credentials for sensors and scrapers that cannot refresh tokens.

A key reads ``rsk_<key id>_<secret>``. Only the SHA-256 of the secret is stored: the secret is 256 random bits,
so a slow password hash would add nothing but latency, and a database dump still yields no usable key.
A key can only ever hold the ``ingest`` or ``metrics`` role.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.core import clock
from control_plane.core.auth.roles import MACHINE_ROLES, Role
from control_plane.core.auth.tokens import AuthError, Principal
from control_plane.core.db import Base, UtcDateTime

KEY_PREFIX = "rsk_"


class MachineKeyError(Exception):
    """A machine key cannot be created or revoked as asked."""


class MachineKey(Base):
    __tablename__ = "machine_keys"

    name: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    key_id: Mapped[str] = mapped_column(sa.String(32), unique=True)
    secret_sha256: Mapped[str] = mapped_column(sa.String(64))
    role: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_by: Mapped[str] = mapped_column(sa.String(256))
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


_table = cast(sa.Table, MachineKey.__table__)


@dataclass(frozen=True)
class IssuedKey:
    name: str
    role: Role
    key: str
    """The bearer value, shown once at creation and never stored."""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class MachineKeyStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, *, name: str, role: Role, created_by: str) -> IssuedKey:
        if role not in MACHINE_ROLES:
            raise MachineKeyError(f"machine keys carry only the roles {', '.join(sorted(MACHINE_ROLES))}")
        if (
            not name
            or len(name) > 128
            or not name.replace("-", "").replace("_", "").replace(".", "").isalnum()
        ):
            raise MachineKeyError("a key name is 1-128 letters, digits, '-', '_' or '.'")
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        with self.engine.begin() as connection:
            if connection.execute(sa.select(_table.c.name).where(_table.c.name == name)).first():
                raise MachineKeyError(f"a machine key named {name!r} exists already (names are never reused)")
            connection.execute(
                _table.insert().values(
                    name=name,
                    key_id=key_id,
                    secret_sha256=_digest(secret),
                    role=role.value,
                    created_at=clock.utcnow(),
                    created_by=created_by,
                )
            )
        return IssuedKey(name=name, role=role, key=f"{KEY_PREFIX}{key_id}_{secret}")

    def revoke(self, name: str) -> None:
        with self.engine.begin() as connection:
            result = connection.execute(
                _table.update()
                .where(_table.c.name == name, _table.c.revoked_at.is_(None))
                .values(revoked_at=clock.utcnow())
            )
        if result.rowcount == 0:
            raise MachineKeyError(f"no active machine key named {name!r}")

    def verify(self, presented: str) -> Principal:
        """The principal behind a presented key, or ``AuthError`` (unknown, malformed or revoked)."""
        key_id, _, secret = presented.removeprefix(KEY_PREFIX).partition("_")
        if not key_id or not secret:
            raise AuthError("malformed machine key")
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(_table.c.name, _table.c.secret_sha256, _table.c.role, _table.c.revoked_at).where(
                    _table.c.key_id == key_id
                )
            ).first()
        if row is None or not hmac.compare_digest(row.secret_sha256, _digest(secret)):
            raise AuthError("unknown machine key")
        if row.revoked_at is not None:
            raise AuthError("machine key revoked")
        return Principal(
            subject=f"key:{row.name}",
            roles=frozenset({Role(row.role)}),
            kind="machine-key",
            credential_id=row.name,
        )


def is_machine_key(credential: str) -> bool:
    return credential.startswith(KEY_PREFIX)
