"""A consumer-group member of the embedded bus: heartbeats, partition assignment, reads and commits in SQL.

Group coordination needs no coordinator process: every member writes its heartbeat into ``bus_members`` and
computes the same assignment from the same table (partitions dealt round-robin over the sorted live member
ids). Members may briefly disagree during a rebalance and read a partition twice; that only redelivers,
because a commit can never move a group's offset backwards, so a stale owner cannot rewind the group.
Heartbeat times come from each member's own clock: hosts sharing a bus need synchronised clocks (NTP), with
a skew well below the member timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from control_plane.core.bus import tables
from control_plane.core.bus.base import BusError, CommitError, Consumer, Record, resume_points
from control_plane.core.clock import utcnow
from control_plane.core.db import dialect_insert

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.05
"""How often a waiting ``poll`` looks for new records: soon enough for low latency, not a busy loop."""
HEARTBEATS_PER_TIMEOUT = 5
"""A waiting ``poll`` heartbeats this often per member timeout, so that waiting never looks like death."""


def deal(partitions: Iterable[int], members: Iterable[str], member_id: str) -> frozenset[int]:
    """The partitions ``member_id`` owns when ``partitions`` are dealt round-robin over sorted ``members``.

    A pure function of the two sets, so that every member computes the same answer without talking to the
    others; a member not in ``members`` owns nothing.
    """
    ordered = sorted(set(members))
    if member_id not in ordered:
        return frozenset()
    seat = ordered.index(member_id)
    return frozenset(p for i, p in enumerate(sorted(set(partitions))) if i % len(ordered) == seat)


class SqlConsumer(Consumer):
    """One member of ``group`` reading ``topic`` from the bus tables; made by ``SqlBus.consumer``."""

    def __init__(
        self,
        engine: Engine,
        *,
        topic: str,
        group: str,
        member_id: str,
        partitions: int,
        member_timeout_s: float,
    ) -> None:
        self.topic = topic
        self.group = group
        self.member_id = member_id
        self._engine = engine
        self._partitions = partitions
        self._member_timeout = timedelta(seconds=member_timeout_s)
        self._heartbeat_interval_s = member_timeout_s / HEARTBEATS_PER_TIMEOUT
        self._last_heartbeat = float("-inf")
        self._assignment: frozenset[int] = frozenset()
        self._positions: dict[int, int] = {}  # next offset to deliver, per owned partition
        self._rotation = 0
        self._closed = False

    @property
    def assignment(self) -> frozenset[int]:
        return self._assignment

    def poll(self, *, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, got {max_records}")
        if self._closed:
            raise BusError(f"consumer {self.member_id} of group {self.group} is closed")
        deadline = time.monotonic() + max(0.0, timeout_s)
        self._heartbeat()
        while True:
            records = self._fetch(max_records)
            remaining = deadline - time.monotonic()
            if records or remaining <= 0:
                return records
            time.sleep(min(POLL_INTERVAL_S, remaining))
            if time.monotonic() - self._last_heartbeat >= self._heartbeat_interval_s:
                self._heartbeat()

    def commit(self, records: Iterable[Record]) -> None:
        resume_at = resume_points(self.topic, records)
        if not resume_at:
            return
        # Sorted rows: concurrent commits lock the same rows in the same order and cannot deadlock.
        rows = [
            {"group_id": self.group, "topic": self.topic, "partition": partition, "committed": offset}
            for partition, offset in sorted(resume_at.items())
        ]
        try:
            with self._engine.begin() as connection:
                insert = dialect_insert(connection)(tables.offsets).values(rows)
                connection.execute(
                    insert.on_conflict_do_update(
                        index_elements=["group_id", "topic", "partition"],
                        set_={"committed": insert.excluded.committed},
                        # Keep the maximum: a stale owner committing late cannot rewind the group.
                        where=tables.offsets.c.committed < insert.excluded.committed,
                    )
                )
        except SQLAlchemyError as exc:
            raise CommitError(
                f"commit of group {self.group} on {self.topic} failed: {exc.__class__.__name__}"
            ) from exc

    def rewind(self) -> None:
        if not self._assignment:
            return
        with self._engine.connect() as connection:
            self._positions.update(self._committed_positions(connection, sorted(self._assignment)))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._assignment = frozenset()
        self._positions.clear()
        m = tables.members.c
        try:
            with self._engine.begin() as connection:
                connection.execute(
                    sa.delete(tables.members).where(
                        m.group_id == self.group, m.topic == self.topic, m.member_id == self.member_id
                    )
                )
        except SQLAlchemyError as exc:
            # Not fatal: the other members take over once this one's heartbeat times out.
            log.warning(
                "consumer %s could not leave group %s: %s", self.member_id, self.group, exc.__class__.__name__
            )

    # Group membership

    def _heartbeat(self) -> None:
        """Say this member is alive, then recompute the assignment from the live members."""
        now = utcnow()
        m = tables.members.c
        this_group = (m.group_id == self.group, m.topic == self.topic)
        # A write first: on SQLite a transaction that starts with a read may not upgrade to a write.
        with self._engine.begin() as connection:
            insert = dialect_insert(connection)(tables.members).values(
                group_id=self.group, topic=self.topic, member_id=self.member_id, heartbeat_at=now
            )
            connection.execute(
                insert.on_conflict_do_update(
                    index_elements=["group_id", "topic", "member_id"],
                    set_={"heartbeat_at": insert.excluded.heartbeat_at},
                )
            )
        self._last_heartbeat = time.monotonic()
        cutoff = now - self._member_timeout
        with self._engine.connect() as connection:
            heartbeats = connection.execute(sa.select(m.member_id, m.heartbeat_at).where(*this_group)).all()
            known = connection.scalars(
                sa.select(tables.partitions.c.partition).where(tables.partitions.c.topic == self.topic)
            ).all()
            live = [member for member, beat in heartbeats if beat >= cutoff]
            # Partitions beyond the configured count exist if the count was lowered: keep reading them.
            assignment = deal([*range(self._partitions), *known], live, self.member_id)
            gained = assignment - self._assignment
            if gained:
                self._positions.update(self._committed_positions(connection, sorted(gained)))
        for partition in self._assignment - assignment:
            del self._positions[partition]
        if assignment != self._assignment:
            log.info(
                "consumer %s of group %s on %s owns partitions %s",
                self.member_id,
                self.group,
                self.topic,
                sorted(assignment),
            )
        self._assignment = assignment
        if len(live) < len(heartbeats):
            self._forget_silent_members(cutoff)

    def _committed_positions(self, connection: sa.Connection, partitions: Sequence[int]) -> dict[int, int]:
        """Where the group resumes on newly owned partitions: its committed offset, else 0 (the earliest)."""
        o = tables.offsets.c
        committed = dict(
            connection.execute(
                sa.select(o.partition, o.committed).where(
                    o.group_id == self.group, o.topic == self.topic, o.partition.in_(partitions)
                )
            ).all()
        )
        return {partition: committed.get(partition, 0) for partition in partitions}

    def _forget_silent_members(self, cutoff: datetime) -> None:
        m = tables.members.c
        with self._engine.begin() as connection:
            # Re-check the time in the DELETE: a member may have come back since we read its heartbeat.
            connection.execute(
                sa.delete(tables.members).where(
                    m.group_id == self.group, m.topic == self.topic, m.heartbeat_at < cutoff
                )
            )

    # Reading

    def _fetch(self, max_records: int) -> list[Record]:
        """Records from the owned partitions that have any, starting with a different partition each time so
        that a busy partition cannot starve the others when ``max_records`` is reached."""
        if not self._assignment:
            return []
        p = tables.partitions.c
        records: list[Record] = []
        with self._engine.connect() as connection:
            ends = dict(
                connection.execute(sa.select(p.partition, p.next_offset).where(p.topic == self.topic)).all()
            )
            ready = [part for part in sorted(self._assignment) if ends.get(part, 0) > self._positions[part]]
            if not ready:
                return []
            self._rotation = (self._rotation + 1) % len(ready)
            for partition in ready[self._rotation :] + ready[: self._rotation]:
                budget = max_records - len(records)
                if budget <= 0:
                    break
                records.extend(self._read_partition(connection, partition, budget))
        return records

    def _read_partition(self, connection: sa.Connection, partition: int, budget: int) -> list[Record]:
        """Up to ``budget`` records of ``partition`` from this member's position on; advances the position."""
        position = self._positions[partition]
        b = tables.batches.c
        here = (b.topic == self.topic, b.partition == partition)
        # The batch holding ``position`` starts at the last base offset at or below it; the primary key
        # index answers both this and the range scan.
        first = (
            sa.select(sa.func.max(b.base_offset)).where(*here, b.base_offset <= position).scalar_subquery()
        )
        rows = connection.execute(
            sa.select(b.base_offset, b.payload)
            .where(*here, b.base_offset >= sa.func.coalesce(first, position))
            .order_by(b.base_offset)
            .limit(budget + 1)  # the first batch may be wholly behind the position
        )
        records: list[Record] = []
        for base_offset, payload in rows:
            for index, item in enumerate(orjson.loads(payload)):
                offset = base_offset + index
                if offset < position:
                    continue
                records.append(Record(self.topic, partition, offset, item["key"], item["value"]))
                if len(records) == budget:
                    break
            if len(records) == budget:
                break
        if records:
            self._positions[partition] = records[-1].offset + 1
        return records
