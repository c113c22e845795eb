"""The event bus: partitioned topics, consumer groups, at-least-once delivery.

Two backends behind one contract (``base.Bus``): the embedded ``SqlBus`` (its own SQLite file, or the
PostgreSQL state database) and ``KafkaBus``. ``create_bus`` picks one from the settings; topic names are in
``topics``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from control_plane.core.bus import topics
from control_plane.core.bus.base import (
    Bus,
    BusError,
    BusUnavailableError,
    CommitError,
    Consumer,
    PublishError,
    Record,
    RecordError,
    partition_for,
)
from control_plane.core.bus.sql import SqlBus
from control_plane.core.config import Settings
from control_plane.core.db import create_db_engine

if TYPE_CHECKING:
    from control_plane.core.bus.kafka import KafkaBus

__all__ = [
    "Bus",
    "BusError",
    "BusUnavailableError",
    "CommitError",
    "Consumer",
    "KafkaBus",
    "PublishError",
    "Record",
    "RecordError",
    "SqlBus",
    "create_bus",
    "partition_for",
    "topics",
]


def __getattr__(name: str) -> Any:
    # kafka-python is imported only where Kafka is used: it costs ~80 ms and warnings at import.
    if name == "KafkaBus":
        from control_plane.core.bus.kafka import KafkaBus

        return KafkaBus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_bus(settings: Settings) -> Bus:
    """The bus ``settings.bus`` configures. The embedded bus creates its tables only when it has a database
    of its own; in the PostgreSQL state database they come from its migrations (``refsys db upgrade``)."""
    if settings.bus.backend == "kafka":
        from control_plane.core.bus.kafka import KafkaBus

        kafka = settings.bus.kafka
        return KafkaBus(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=kafka.client_id,
            topic_prefix=kafka.topic_prefix,
        )
    url = settings.bus_url
    database = sa.make_url(url).database
    if url.startswith("sqlite") and database:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(
        url, pool_size=settings.database.pool_size, connect_timeout_s=settings.database.connect_timeout_s
    )
    return SqlBus(
        engine,
        partitions=settings.bus.partitions,
        member_timeout_s=settings.bus.member_timeout_s,
        own_schema=url != settings.database_url,
    )
