"""The embedded bus: a partitioned log in SQL tables, the same code on SQLite and PostgreSQL.

One row per published batch keeps a publish to one short transaction. Offsets are reserved with
``UPDATE bus_partitions SET next_offset = next_offset + n ... RETURNING`` in the transaction that inserts the
batch: on PostgreSQL that row lock is held until commit, so batches of a partition commit in offset order
and a reader can never see offset 11 before offset 10 is committed (it would skip 10 for good); on SQLite
the database write lock serialises publishers the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from control_plane.core.bus import tables
from control_plane.core.bus.base import (
    Bus,
    BusUnavailableError,
    PublishError,
    RecordError,
    check_records,
    check_topic,
    encode_json,
    partition_for,
)
from control_plane.core.bus.sql_consumer import SqlConsumer
from control_plane.core.clock import utcnow
from control_plane.core.db import Base, dialect_insert, safe_url
from control_plane.core.ids import new_id

log = logging.getLogger(__name__)

ERROR_TEXT_MAX = 200  # database errors can be long (whole statements); keep logs and /readyz readable


class SqlBus(Bus):
    """The embedded bus over a SQLAlchemy engine (``control_plane.core.db.create_db_engine``).

    ``own_schema=True`` when the bus has a database of its own (its SQLite file, or a test schema): it creates
    its tables. ``False`` when it lives in the PostgreSQL state database, whose migrations create them.
    ``close()`` disposes the engine: give the bus an engine of its own.
    """

    def __init__(
        self, engine: Engine, *, partitions: int = 4, member_timeout_s: float = 10.0, own_schema: bool
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        if member_timeout_s <= 0:
            raise ValueError(f"member_timeout_s must be positive, got {member_timeout_s}")
        self.engine = engine
        self.partitions = partitions
        self.member_timeout_s = member_timeout_s
        if own_schema:
            self._create_tables()

    def publish(self, topic: str, key: str | None, records: Sequence[Mapping[str, Any]]) -> None:
        check_topic(topic)
        if key is not None and not isinstance(key, str):
            raise RecordError(f"key must be a string or None, not {type(key).__name__}")
        values = check_records(records)
        if not values:
            return
        payload = encode_json([{"key": key, "value": value} for value in values])
        partition = partition_for(key, self.partitions)
        try:
            with self.engine.begin() as connection:
                base_offset = _reserve_offsets(connection, topic, partition, len(values))
                connection.execute(
                    sa.insert(tables.batches).values(
                        topic=topic,
                        partition=partition,
                        base_offset=base_offset,
                        record_count=len(values),
                        payload=payload,
                        created_at=utcnow(),
                    )
                )
        except SQLAlchemyError as exc:
            raise PublishError(f"publish to {topic}[{partition}] failed: {_brief(exc)}") from exc

    def consumer(self, topic: str, group: str, *, member_id: str | None = None) -> SqlConsumer:
        check_topic(topic)
        member_id = new_id() if member_id is None else member_id
        for name, value in (("group", group), ("member_id", member_id)):
            if not (isinstance(value, str) and 0 < len(value) <= tables.NAME_LENGTH):
                raise ValueError(f"{name} must be 1-{tables.NAME_LENGTH} characters, got {value!r}")
        return SqlConsumer(
            self.engine,
            topic=topic,
            group=group,
            member_id=member_id,
            partitions=self.partitions,
            member_timeout_s=self.member_timeout_s,
        )

    def check(self) -> None:
        try:
            with self.engine.connect() as connection:
                for table in tables.ALL_TABLES:
                    connection.execute(sa.select(sa.literal(1)).select_from(table).limit(1))
        except SQLAlchemyError as exc:
            url = safe_url(str(self.engine.url))
            raise BusUnavailableError(f"event bus at {url} unusable: {_brief(exc)}") from exc

    def close(self) -> None:
        self.engine.dispose()

    def compact(self, topic: str) -> int:
        """Delete the batches of ``topic`` that lie wholly below the lowest committed offset of every group
        known on their partition; a known group (committed or live member) that has not committed a
        partition keeps all of it. A topic no group has read keeps everything.

        Safe without a lock: committed offsets only grow, so the minimum read here is still a lower bound when
        deleting, and a group that appears meanwhile starts at the earliest retained record, as it would had
        it appeared after this call.
        """
        check_topic(topic)
        m, o, b = tables.members.c, tables.offsets.c, tables.batches.c
        with self.engine.begin() as connection:
            # Dead members do not hold retention back; they would otherwise keep a group "known" forever.
            cutoff = utcnow() - timedelta(seconds=self.member_timeout_s)
            connection.execute(sa.delete(tables.members).where(m.topic == topic, m.heartbeat_at < cutoff))
        with self.engine.connect() as connection:
            groups = set(connection.scalars(sa.select(o.group_id).where(o.topic == topic).distinct()))
            groups |= set(connection.scalars(sa.select(m.group_id).where(m.topic == topic).distinct()))
            lowest = connection.execute(
                sa.select(o.partition, sa.func.min(o.committed), sa.func.count())
                .where(o.topic == topic)
                .group_by(o.partition)
            ).all()
        floors = {partition: low for partition, low, n_groups in lowest if groups and n_groups == len(groups)}
        deleted = 0
        with self.engine.begin() as connection:
            for partition, floor in sorted(floors.items()):
                result = connection.execute(
                    sa.delete(tables.batches).where(
                        b.topic == topic, b.partition == partition, b.base_offset + b.record_count <= floor
                    )
                )
                deleted += result.rowcount
        if deleted:
            log.info("bus compaction of %s deleted %d batches", topic, deleted)
        return deleted

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition that has ever been written, the offset its next record will get."""
        p = tables.partitions.c
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(p.partition, p.next_offset).where(p.topic == topic))
            return dict(rows.all())

    def committed(self, topic: str, group: str) -> dict[int, int]:
        """Per partition, where ``group`` resumes on ``topic`` (partitions it never committed are absent);
        with ``end_offsets`` this gives a group's lag."""
        o = tables.offsets.c
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(o.partition, o.committed).where(o.topic == topic, o.group_id == group)
            )
            return dict(rows.all())

    def backlog(self, topic: str, group: str) -> int:
        committed = self.committed(topic, group)
        return sum(end - committed.get(partition, 0) for partition, end in self.end_offsets(topic).items())

    def _create_tables(self) -> None:
        wanted = list(tables.ALL_TABLES)
        try:
            Base.metadata.create_all(self.engine, tables=wanted)
        except DBAPIError:
            # Another process created them between the existence check and CREATE TABLE; checking again
            # finds them. Anything else fails again here and propagates.
            Base.metadata.create_all(self.engine, tables=wanted)


def _reserve_offsets(connection: sa.Connection, topic: str, partition: int, count: int) -> int:
    """Reserve ``count`` offsets of a partition in the caller's transaction; returns the first.

    The row lock taken here (PostgreSQL) or the write lock (SQLite) is held until the caller commits, which is
    what makes commit order equal offset order.
    """
    p = tables.partitions.c
    bump = (
        sa.update(tables.partitions)
        .where(p.topic == topic, p.partition == partition)
        .values(next_offset=p.next_offset + count)
        .returning(p.next_offset)
    )
    end = connection.execute(bump).scalar()
    if end is None:  # the partition's first batch ever
        connection.execute(
            dialect_insert(connection)(tables.partitions)
            .values(topic=topic, partition=partition, next_offset=0)
            .on_conflict_do_nothing()
        )
        end = connection.execute(bump).scalar_one()
    return int(end) - count


def _brief(exc: SQLAlchemyError) -> str:
    """The first line of the driver's message (no SQL, no parameters), cut to a safe length."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{exc.__class__.__name__}: {text[:ERROR_TEXT_MAX]}"
