"""The embedded event store: one SQLite file (WAL), partitioned by (dataset, UTC day), FTS5 for free text.

Designed for the ingest path. A ``write`` is one transaction: the Python side reads a few fields per document
and serialises it once, then each partition gets one ``executemany`` per table. Keys (microsecond and slot) are
computed in Python after one probe of the partition's largest key: a batch that comes after everything stored,
the usual case, needs nothing else; for the others, one statement reads the (key, id) pairs already stored at
their microseconds. Retention drops whole partitions. The schema and the query translation are in
``sqlite_sql``, reading in ``sqlite_read``.

Idempotency: an event whose ``event.id`` is already stored at the same ``@timestamp`` in the same dataset is not
stored again, which is what re-ingesting a file or redelivering a batch produces (DESIGN.md's ids are stable and
so are the timestamps normalisers derive from the same line). An id indexed for the whole store or per partition
was measured instead (bench/store_bench.py, random ids, 5M events over 7 days): random inserts into an id B-tree
dirty a page each, and ingest fell from about 30k to 16k (global table) or 21k (per partition) events/s.
"""

# ruff: noqa: S608 -- table names are built from integers (partition id, day) and constant column names;
# every value is a bound parameter.

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from control_plane.core import clock
from security.store import sqlite_read
from security.store import sqlite_sql as sql
from security.store.base import Aggregation, EventQuery, EventStore, SearchPage
from security.store.query import DATASET, InvalidDocument, check_dataset, epoch_us, identity

PAGE_BYTES = 16384
"""Page size of a new store file."""
CHUNK = 10_000
"""Documents prepared in Python at a time within one ``write`` (bounds the memory of a huge batch)."""

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS partitions (id INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL, day INTEGER NOT NULL,"
    " rows INTEGER NOT NULL DEFAULT 0, irregular TEXT NOT NULL DEFAULT '[]', sealed INTEGER NOT NULL DEFAULT 0,"
    " UNIQUE (dataset, day))",
]
_EV_COLUMNS = ", ".join(c for c, _, _ in sql.EXTRACTED)
_EV_MARKS = ", ".join("?" * (len(sql.EXTRACTED) + 1))


_SCALARS = frozenset((str, int, float))
_EXTRACTED_BY_PARENT: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = tuple(
    (parent, tuple((leaf, index) for index, (_, p, leaf) in enumerate(sql.EXTRACTED, start=1) if p == parent))
    for parent in dict.fromkeys(parent for _, parent, _ in sql.EXTRACTED)
)
"""Promoted fields grouped by their parent object, each with its position in an ``ev`` row (after the key)."""


class _Row(NamedTuple):
    """One event to store, its rows built but for the key (slot 0 of ``ev`` and ``doc``), known only once the
    slots its microsecond already uses are."""

    id: str
    part: sql.Partition
    base: int
    ev: list[Any]
    doc: list[Any]


class SqliteEventStore(EventStore):
    """``EventStore`` on a SQLite file of its own. Thread-safe: one writer connection behind a lock, one
    reader connection per thread (WAL lets readers run while a write is in progress)."""

    def __init__(self, path: Path, *, cache_mib: int = 64, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pragmas = [
            "PRAGMA busy_timeout = 30000",
            # The page size of a new file (a no-op on an existing one). Rows here are one to a few KiB and FTS
            # segments are written in big pieces: 16 KiB pages take a tenth off the ingest path (fewer WAL
            # frames to checksum, fewer overflow pages) with the same query times (bench/ingest_bench.py). Set
            # before the cache size: SQLite sizes a new file's cache in pages of the size it had then.
            f"PRAGMA page_size = {PAGE_BYTES}",
            f"PRAGMA cache_size = -{int(cache_mib) * 1024}",
            f"PRAGMA synchronous = {synchronous}",  # FULL: a returned write survives a power cut
            "PRAGMA temp_store = FILE",  # a big aggregation spills to disk instead of growing RSS
        ]
        self._lock = threading.Lock()  # the writer connection
        self._readers_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._writer = self._connect()
        self._writer.execute("PRAGMA journal_mode = WAL")
        self._writer.execute("PRAGMA journal_size_limit = 67108864")
        for statement in _SCHEMA:
            self._writer.execute(statement)
        self._parts: dict[tuple[str, int], sql.Partition] = {}
        self._schema_version = -1
        self._days: dict[str, tuple[int, int]] = {}

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in self._pragmas:
            connection.execute(pragma)
        connection.create_function("ecs_path", 1, sql.ecs_path, deterministic=True)
        return connection

    def _reader(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connect()
            with self._readers_lock:
                self._readers.append(connection)
        return connection

    # -- writing -----------------------------------------------------------------------------------------

    def write(self, docs: Sequence[Mapping[str, Any]]) -> int:
        if not docs:
            return 0
        with self._lock:
            con = self._writer
            con.execute("BEGIN IMMEDIATE")
            try:
                version = con.execute("PRAGMA schema_version").fetchone()[0]
                if version != self._schema_version:  # another process created or dropped partitions
                    self._parts.clear()
                new = sum(self._insert(con, self._rows(chunk)) for chunk in _chunks(docs, CHUNK))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                self._parts.clear()  # partitions created in this transaction are gone
                raise
            self._schema_version = con.execute("PRAGMA schema_version").fetchone()[0]
            return new

    def _rows(self, docs: Sequence[Mapping[str, Any]]) -> dict[str, _Row]:
        """What ``docs`` store, by id (the first of an id in the batch wins). The hot path of ingest: plain dict reads, the
        full checks of ``identity`` only for what the cheap ones do not clear."""
        rows: dict[str, _Row] = {}
        for doc in docs:
            try:
                event = doc["event"]
                event_id, dataset, timestamp = event["id"], event["dataset"], doc["@timestamp"]
            except (KeyError, TypeError):
                event_id, dataset, timestamp = identity(doc)  # raises, naming what is missing
            if not (type(event_id) is str and 0 < len(event_id) <= 128 and type(timestamp) is str):
                event_id, dataset, timestamp = identity(doc)
            if event_id in rows:
                continue
            day, start_us, rel_us = self._time(event_id, timestamp)
            part = self._parts.get((dataset, day)) or self._partition(dataset, day, start_us)
            ev: list[Any] = [None] * (len(sql.EXTRACTED) + 1)
            for parent, leaves in _EXTRACTED_BY_PARENT:
                node = doc.get(parent)
                if type(node) is dict:
                    for leaf, index in leaves:
                        value = node.get(leaf)
                        if value is None:
                            continue
                        if type(value) in _SCALARS:
                            ev[index] = value
                        elif type(value) is bool:
                            ev[index] = "true" if value else "false"
                        else:
                            part = self._mark_irregular(part, f"{parent}.{leaf}")
            original, message = event.get("original"), doc.get("message")
            body = dict(doc)
            if type(original) is str:
                body["event"] = event = dict(event)
                del event["original"]
            elif original is not None:
                part = self._mark_irregular(part, "event.original")
                original = None
            if type(message) is str:
                del body["message"]
            elif message is not None:
                part = self._mark_irregular(part, "message")
                message = None
            doc_row = [None, original, message, orjson.dumps(body).decode()]
            rows[event_id] = _Row(event_id, part, rel_us << sql.SLOT_BITS, ev, doc_row)
        return rows

    def _time(self, event_id: str, timestamp: str) -> tuple[int, int, int]:
        """``(day YYYYMMDD, day start in µs, µs since that midnight)``; the canonical form is parsed by
        slicing (a third of ``datetime.fromisoformat``'s cost), any other RFC 3339 form the slow way."""
        if len(timestamp) == 27 and timestamp[10] == "T" and timestamp[19] == "." and timestamp[26] == "Z":
            day = self._days.get(timestamp[:10])
            clock_part = timestamp[11:13] + timestamp[14:16] + timestamp[17:19] + timestamp[20:26]
            if day is not None and clock_part.isdigit() and timestamp[13] == timestamp[16] == ":":
                hours, minutes, seconds = int(clock_part[:2]), int(clock_part[2:4]), int(clock_part[4:6])
                if hours < 24 and minutes < 60 and seconds < 60:
                    rel = ((hours * 60 + minutes) * 60 + seconds) * 1_000_000 + int(clock_part[6:])
                    return day[0], day[1], rel
        try:
            us = epoch_us(clock.parse_rfc3339(timestamp))
        except ValueError as exc:
            raise InvalidDocument(f"event {event_id}: invalid @timestamp {timestamp!r}") from exc
        start = us - us % sql.DAY_US
        number = sql.day_number(start)
        if len(self._days) > 10_000:
            self._days.clear()
        self._days[f"{number // 10_000:04d}-{number // 100 % 100:02d}-{number % 100:02d}"] = (number, start)
        return number, start, us - start

    def _partition(self, dataset: Any, day: int, start_us: int) -> sql.Partition:
        """The partition of (dataset, day), created if needed. A dataset's latest partition is the one being
        filled; creating a later one seals the earlier ones (builds their indexes), and a partition created
        behind a later one (backfill) is sealed from the start."""
        if type(dataset) is not str or not DATASET.fullmatch(dataset):
            raise InvalidDocument(f"invalid event.dataset {dataset!r}")
        con = self._writer
        created = con.execute("INSERT OR IGNORE INTO partitions (dataset, day) VALUES (?, ?)", (dataset, day))
        if created.rowcount:
            con.execute(
                "UPDATE partitions SET sealed = 1 WHERE dataset = ? AND day = ?"
                " AND EXISTS (SELECT 1 FROM partitions WHERE dataset = ? AND day > ?)",
                (dataset, day, dataset, day),
            )
        part_id, irregular, sealed = con.execute(
            "SELECT id, irregular, sealed FROM partitions WHERE dataset = ? AND day = ?", (dataset, day)
        ).fetchone()
        part = sql.Partition(part_id, dataset, day, start_us, frozenset(orjson.loads(irregular)))
        for statement in sql.partition_ddl(part) if created.rowcount else ():
            con.execute(statement)
        for statement in sql.index_ddl(part) if sealed else ():
            con.execute(statement)
        if created.rowcount:
            earlier = con.execute(
                "SELECT id, day FROM partitions WHERE dataset = ? AND day < ? AND NOT sealed", (dataset, day)
            ).fetchall()
            for earlier_id, earlier_day in earlier:
                for statement in sql.index_ddl(sql.Partition(earlier_id, dataset, earlier_day, 0)):
                    con.execute(statement)
                con.execute("UPDATE partitions SET sealed = 1 WHERE id = ?", (earlier_id,))
        self._parts[dataset, day] = part
        return part

    def _mark_irregular(self, part: sql.Partition, field: str) -> sql.Partition:
        """Record that ``field`` held a non-scalar here: queries on this partition then read it from the JSON."""
        if field in part.irregular:
            return part
        marked = sql.Partition(part.id, part.dataset, part.day, part.start_us, part.irregular | {field})
        irregular = orjson.dumps(sorted(marked.irregular)).decode()
        self._writer.execute("UPDATE partitions SET irregular = ? WHERE id = ?", (irregular, part.id))
        self._parts[part.dataset, part.day] = marked
        return marked

    def _insert(self, con: sqlite3.Connection, rows: dict[str, _Row]) -> int:
        """Store each row in its partition unless its id is already there at the same microsecond; returns
        how many were stored."""
        by_part: dict[int, list[_Row]] = {}
        for row in rows.values():
            by_part.setdefault(row.part.id, []).append(row)
        new = 0
        for group in by_part.values():
            part = group[0].part
            taken = _taken(con, part, {row.base for row in group})
            group = [row for row in group if (row.base, row.id) not in taken.ids]
            if not group:
                continue
            fts_rows = []
            for row in group:
                slot = taken.next_slot.get(row.base, 0)
                taken.next_slot[row.base] = slot + 1
                key = row.ev[0] = row.doc[0] = row.base + slot
                if row.doc[1] is not None or row.doc[2] is not None:
                    fts_rows.append((key, row.doc[1], row.doc[2]))
            con.executemany(
                f"INSERT INTO {part.ev} (key, {_EV_COLUMNS}) VALUES ({_EV_MARKS})", [r.ev for r in group]
            )
            con.executemany(f"INSERT INTO {part.doc} VALUES (?, ?, ?, ?)", [row.doc for row in group])
            con.executemany(f"INSERT INTO {part.fts} (rowid, original, message) VALUES (?, ?, ?)", fts_rows)
            con.execute("UPDATE partitions SET rows = rows + ? WHERE id = ?", (len(group), part.id))
            new += len(group)
        return new

    # -- reading -----------------------------------------------------------------------------------------

    def search(self, query: EventQuery) -> SearchPage:
        con = self._reader()
        con.execute("BEGIN")  # one snapshot for the count and the page
        try:
            return sqlite_read.search(con, query)
        finally:
            con.execute("COMMIT")

    def aggregate(self, query: EventQuery, aggregations: Mapping[str, Aggregation]) -> dict[str, Any]:
        con = self._reader()
        con.execute("BEGIN")
        try:
            return sqlite_read.aggregate(con, query, aggregations)
        finally:
            con.execute("COMMIT")

    # -- retention and life cycle ----------------------------------------------------------------------------

    def drop_before(self, dataset: str, cutoff: datetime) -> int:
        """Drop ``dataset``'s partitions of days that ended by ``cutoff``; in the day that contains it, delete
        the earlier rows (and their FTS entries). Exact: partitions count their rows."""
        check_dataset(dataset)
        cutoff_us = epoch_us(cutoff)
        gone = 0
        with self._lock:
            con = self._writer
            con.execute("BEGIN IMMEDIATE")
            try:
                rows = con.execute(
                    "SELECT id, day, rows FROM partitions WHERE dataset = ? AND day <= ?",
                    (dataset, sql.day_number(cutoff_us)),
                ).fetchall()
                for part_id, day, count in rows:
                    part = sql.Partition(part_id, dataset, day, sql.day_start(day))
                    if part.start_us + sql.DAY_US <= cutoff_us:
                        for table in part.tables:
                            con.execute(f"DROP TABLE IF EXISTS {table}")
                        con.execute("DELETE FROM partitions WHERE id = ?", (part.id,))
                        gone += count
                    elif part.start_us < cutoff_us:
                        gone += _delete_before(con, part, (cutoff_us - part.start_us) << sql.SLOT_BITS)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                self._parts.clear()
        return gone

    def check(self) -> None:
        self._reader().execute("SELECT count(*) FROM partitions").fetchone()

    def close(self) -> None:
        with self._lock, self._readers_lock:
            for connection in [*self._readers, self._writer]:
                connection.close()
            self._readers.clear()


class _Taken(NamedTuple):
    next_slot: dict[int, int]
    """Microsecond (``base``) -> first free slot, for the microseconds that already have events."""
    ids: set[tuple[int, str]]
    """``(base, event.id)`` already stored."""


def _taken(con: sqlite3.Connection, part: sql.Partition, bases: set[int]) -> _Taken:
    """What ``part`` already holds at the microseconds ``bases``. New events nearly always come after everything
    stored, which one probe of the largest key proves; only the others are looked up, in one statement."""
    taken = _Taken({}, set())
    (largest,) = con.execute(f"SELECT max(key) FROM {part.ev}").fetchone()
    candidates = [base for base in bases if largest is not None and base <= largest]
    if candidates:
        rows = con.execute(
            f"SELECT j.value, e.key, e.event_id FROM json_each(?) AS j"
            f" JOIN {part.ev} AS e ON e.key >= j.value AND e.key < j.value + ?",
            (orjson.dumps(candidates), sql.SLOTS),
        )
        for base, key, event_id in rows:
            taken.next_slot[base] = max(taken.next_slot.get(base, 0), key - base + 1)
            taken.ids.add((base, event_id))
    return taken


def _delete_before(con: sqlite3.Connection, part: sql.Partition, key: int) -> int:
    # External-content FTS5 forgets a row only when told its indexed values, which doc_* still holds.
    con.execute(
        f"INSERT INTO {part.fts} ({part.fts}, rowid, original, message) SELECT 'delete', key, original, message"
        f" FROM {part.doc} WHERE key < ? AND (original IS NOT NULL OR message IS NOT NULL)",
        (key,),
    )
    con.execute(f"DELETE FROM {part.doc} WHERE key < ?", (key,))
    deleted = con.execute(f"DELETE FROM {part.ev} WHERE key < ?", (key,)).rowcount
    con.execute("UPDATE partitions SET rows = rows - ? WHERE id = ?", (deleted, part.id))
    return deleted


def _chunks(docs: Sequence[Mapping[str, Any]], size: int) -> Iterator[Sequence[Mapping[str, Any]]]:
    iterator = iter(docs)
    while chunk := list(islice(iterator, size)):
        yield chunk
