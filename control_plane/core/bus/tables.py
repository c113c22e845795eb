"""Tables of the embedded bus, all in one module: the state database's Alembic migrations are written from
these definitions when the bus lives in PostgreSQL, and ``SqlBus(own_schema=True)`` creates them itself in a
SQLite file of its own.
"""

from __future__ import annotations

import sqlalchemy as sa

from control_plane.core.db import Base, UtcDateTime

TOPIC_LENGTH = 249  # Kafka's limit, so names stay portable between the backends
NAME_LENGTH = 255

batches = sa.Table(
    "bus_batches",
    Base.metadata,
    sa.Column("topic", sa.String(TOPIC_LENGTH), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("base_offset", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("record_count", sa.Integer, nullable=False),
    # orjson list of {"key", "value"}: one row per published batch keeps a publish to one INSERT.
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    comment="Published batches; record i of a batch has offset base_offset + i.",
)

partitions = sa.Table(
    "bus_partitions",
    Base.metadata,
    sa.Column("topic", sa.String(TOPIC_LENGTH), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    # Incremented in the publishing transaction: its row lock orders commits by offset on PostgreSQL.
    sa.Column("next_offset", sa.BigInteger, nullable=False),
    comment="End of each partition's log: the offset the next published record gets.",
)

offsets = sa.Table(
    "bus_offsets",
    Base.metadata,
    sa.Column("group_id", sa.String(NAME_LENGTH), primary_key=True),
    sa.Column("topic", sa.String(TOPIC_LENGTH), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("committed", sa.BigInteger, nullable=False),
    comment="Per group and partition, the offset the group resumes from; it only ever grows.",
)

members = sa.Table(
    "bus_members",
    Base.metadata,
    sa.Column("group_id", sa.String(NAME_LENGTH), primary_key=True),
    sa.Column("topic", sa.String(TOPIC_LENGTH), primary_key=True),
    sa.Column("member_id", sa.String(NAME_LENGTH), primary_key=True),
    sa.Column("heartbeat_at", UtcDateTime, nullable=False),
    comment="Live consumers of each group; a member silent longer than the member timeout is dropped.",
)

ALL_TABLES: tuple[sa.Table, ...] = (batches, partitions, offsets, members)
