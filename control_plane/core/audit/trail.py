"""Appending to and reading the audit trail.

Every append runs in one transaction that first bumps the head row: that statement takes the row lock on
PostgreSQL and the database write lock on SQLite, so appenders in any number of processes queue up and the chain
never forks. The record is hashed over its predecessor's hash and MACed with the key from outside the database.
"""

from __future__ import annotations

import getpass
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from control_plane.core import clock, ids
from control_plane.core.audit import chain
from control_plane.core.audit.checkpoints import Checkpoint, write_checkpoint
from control_plane.core.audit.keys import AuditKeys
from control_plane.core.audit.tables import head, records

Outcome = Literal["success", "failure", "refused"]
MAX_PAGE = 1000


@dataclass(frozen=True)
class Actor:
    """Who acted and from where, as the audit trail records it."""

    subject: str
    roles: tuple[str, ...] = ()
    credential_id: str | None = None
    client: str | None = None
    user_agent: str | None = None
    request_id: str | None = None

    @classmethod
    def local_cli(cls) -> Actor:
        """An operator at the machine: whoever can run ``refsys`` against the configured stores."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # a container user with no passwd entry
            user = f"uid-{os.getuid()}"
        return cls(subject=f"cli:{user}", client="local")


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class AuditTrail:
    def __init__(self, engine: Engine, keys: AuditKeys, checkpoint_file: Path) -> None:
        self.engine = engine
        self.keys = keys
        self.checkpoint_file = checkpoint_file
        self._checkpointed_seq = -1
        self._checkpoint_lock = threading.Lock()

    def append(
        self,
        *,
        actor: Actor,
        action: str,
        outcome: Outcome,
        target: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one record and return it (with ``seq`` and ``hash``)."""
        record: dict[str, Any] = {
            "id": ids.new_id(),
            "time": clock.utcnow(),
            "actor": actor.subject,
            "roles": sorted(actor.roles),
            "jti": actor.credential_id,
            "client": actor.client,
            "user_agent": actor.user_agent[:512] if actor.user_agent else None,
            "request_id": actor.request_id,
            "action": action,
            "target": target,
            "outcome": outcome,
            # Round-trip through JSON now so that what is hashed is exactly what the database gives back.
            "details": orjson.loads(orjson.dumps(dict(details or {}))),
        }
        with self.engine.begin() as connection:
            connection.execute(head.update().where(head.c.id == 1).values(seq=head.c.seq + 1))
            seq, prev_hash = connection.execute(
                sa.select(head.c.seq, head.c.hash).where(head.c.id == 1)
            ).one()
            record["seq"], record["prev_hash"] = seq, prev_hash
            record["hash"] = chain.record_hash(record)
            record["mac"] = chain.record_mac(self.keys.mac_key, record["hash"])
            connection.execute(records.insert().values(**record))
            connection.execute(head.update().where(head.c.id == 1).values(hash=record["hash"]))
        return record

    def head(self) -> tuple[int, str]:
        """Sequence and hash of the newest record (0 and the genesis hash when empty)."""
        with self.engine.connect() as connection:
            seq, digest = connection.execute(sa.select(head.c.seq, head.c.hash).where(head.c.id == 1)).one()
        return int(seq), str(digest)

    def checkpoint(self) -> Checkpoint | None:
        """Write a signed checkpoint of the head if it moved since this process last wrote one."""
        with self._checkpoint_lock:
            seq, digest = self.head()
            if seq == self._checkpointed_seq or seq == 0:
                return None
            written = write_checkpoint(self.checkpoint_file, self.keys.signing_key, seq=seq, hash=digest)
            self._checkpointed_seq = seq
            return written

    def list(
        self, criteria: AuditFilter, *, cursor: int | None = None, limit: int = 100, newest_first: bool = True
    ) -> list[dict[str, Any]]:
        """One page of records matching ``criteria``, continuing after the ``cursor`` sequence."""
        columns = [column for column in records.c if column.name != "mac"]
        query = sa.select(*columns)
        for name in ("actor", "action", "outcome", "target"):
            value = getattr(criteria, name)
            if value is not None:
                query = query.where(records.c[name] == value)
        if criteria.since is not None:
            query = query.where(records.c.time >= criteria.since)
        if criteria.until is not None:
            query = query.where(records.c.time < criteria.until)
        if cursor is not None:
            query = query.where(records.c.seq < cursor if newest_first else records.c.seq > cursor)
        order = records.c.seq.desc() if newest_first else records.c.seq.asc()
        query = query.order_by(order).limit(max(1, min(limit, MAX_PAGE)))
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]
