"""Ships the control plane's own audit trail into telemetry, so it is searchable and detectable.

The audit table is already an ordered, durable log (by ``seq``): the shipper remembers the last sequence it
published in ``telemetry_cursors`` and moves the cursor only after the records are on the telemetry bus. A crash
in between publishes a page twice, which the store's idempotent write (by the record's id) absorbs.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from control_plane.core.audit.tables import records
from control_plane.core.bus import Bus, topics
from control_plane.core.db import dialect_insert
from security.intake.tables import telemetry_cursors
from security.sources.control_plane import audit_record_to_ecs

CURSOR = "audit"
PAGE = 1000
BUS_KEY = "refsys:audit"


class AuditShipper:
    def __init__(self, engine: Engine, bus: Bus) -> None:
        self.engine = engine
        self.bus = bus

    def ship(self) -> int:
        """Publish every audit record appended since the last call; returns how many were shipped."""
        shipped = 0
        while True:
            after = self._cursor()
            query = sa.select(records).where(records.c.seq > after).order_by(records.c.seq).limit(PAGE)
            with self.engine.connect() as connection:
                rows = [dict(row._mapping) for row in connection.execute(query)]
            if not rows:
                return shipped
            self.bus.publish(topics.TELEMETRY, BUS_KEY, [audit_record_to_ecs(row) for row in rows])
            self._advance(rows[-1]["seq"])
            shipped += len(rows)

    def _cursor(self) -> int:
        with self.engine.connect() as connection:
            position = connection.execute(
                sa.select(telemetry_cursors.c.position).where(telemetry_cursors.c.name == CURSOR)
            ).scalar()
        return int(position or 0)

    def _advance(self, position: int) -> None:
        with self.engine.begin() as connection:
            insert = dialect_insert(connection)(telemetry_cursors).values(name=CURSOR, position=position)
            connection.execute(
                insert.on_conflict_do_update(
                    index_elements=["name"], set_={"position": insert.excluded.position}
                )
            )
