"""Reading the SQLite event store: search pages and aggregations, inside one read transaction.

Search walks the days of the range in sort order; in each day it asks every partition for its first keys (an
FTS5 or primary-key range scan that stops at the page size), merges them on (key, partition), and reads the
documents of the page only. Aggregations materialise the matching rows' few needed columns once and group
them per aggregation, all in one statement (``sqlite_sql.aggregate_statement``).
"""

# ruff: noqa: S608 -- table names are built from integers (partition id, day); every value is a bound parameter.

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from control_plane.core import clock
from security.store import sqlite_sql as sql
from security.store.base import (
    Aggregation,
    DateHistogramAgg,
    EventQuery,
    Hit,
    Scalar,
    SearchPage,
    TermsAgg,
)
from security.store.query import (
    check_aggregations,
    check_dataset,
    check_field,
    epoch_us,
    rfc3339_us,
    text_terms,
)


@dataclass(frozen=True)
class Scope:
    """What a query reads: its partitions, its filters (``event.dataset`` resolved to partitions), its FTS5
    expression, and its time range in microseconds."""

    parts: list[sql.Partition]
    filters: dict[str, list[Scalar]]
    fts: str | None
    start_us: int
    end_us: int

    def arm(
        self, part: sql.Partition, bounds: tuple[int, int] | None = None, *, need_doc: bool = False
    ) -> sql.Arm:
        lo, hi = bounds or self.bounds(part)
        return sql.arm(part, self.filters, self.fts, lo, hi, need_doc=need_doc)

    def bounds(self, part: sql.Partition) -> tuple[int, int]:
        """The key range of the time range in a partition (exact: a key's high bits are its microsecond)."""
        lo = max(0, self.start_us - part.start_us) << sql.SLOT_BITS
        end_rel = self.end_us - part.start_us
        hi = end_rel << sql.SLOT_BITS if end_rel < sql.DAY_US else sql.KEY_MAX
        return lo, hi


def scope(con: sqlite3.Connection, query: EventQuery) -> Scope | None:
    """The scope of ``query``, or None when nothing can match."""
    start_us, end_us = epoch_us(query.start), epoch_us(query.end)
    filters = {check_field(field): list(values) for field, values in query.filters.items()}
    datasets = {check_dataset(name) for name in query.datasets}
    if "event.dataset" in filters:
        wanted = {str(value) for value in filters.pop("event.dataset")}
        datasets = datasets & wanted if datasets else wanted
        if not datasets:
            return None
    if end_us <= start_us or any(not values for values in filters.values()):
        return None
    rows = con.execute(
        "SELECT id, dataset, day, irregular FROM partitions WHERE day BETWEEN ? AND ? ORDER BY day, id",
        (sql.day_number(start_us), sql.day_number(end_us - 1)),
    )
    parts = [
        sql.Partition(part_id, dataset, day, sql.day_start(day), frozenset(orjson.loads(irregular)))
        for part_id, dataset, day, irregular in rows
        if (not datasets or dataset in datasets) and dataset not in query.exclude_datasets
    ]
    terms = text_terms(query.text)
    fts = sql.fts_expression(terms) if terms else None
    return Scope(parts, filters, fts, start_us, end_us) if parts else None


def search(con: sqlite3.Connection, query: EventQuery) -> SearchPage:
    where = scope(con, query)
    if where is None:
        return SearchPage(hits=[], total=0)
    total = sum(con.execute(*where.arm(part).select("count(*)")).fetchone()[0] for part in where.parts)
    return SearchPage(hits=_hits(con, _page(con, query, where)), total=total)


def _page(con: sqlite3.Connection, query: EventQuery, where: Scope) -> list[tuple[int, sql.Partition]]:
    """Keys of the page in (day, key, partition) order: day by day, each partition's first keys merged."""
    desc = query.sort == "desc"
    after = _position(con, where, query.search_after, desc) if query.search_after else None
    order = "DESC" if desc else "ASC"
    column = "f.rowid" if where.fts else "e.key"  # FTS5 yields rowids in order: no sort, stops at the limit
    picked: list[tuple[int, sql.Partition]] = []
    for day in sorted({part.day for part in where.parts}, reverse=desc):
        need = query.size - len(picked)
        if need <= 0:
            break
        candidates = []
        for part in (part for part in where.parts if part.day == day):
            lo, hi = where.bounds(part)
            if after is not None:
                lo, hi = _after(part, lo, hi, after, desc)
            if lo >= hi:
                continue
            rows = con.execute(
                *where.arm(part, (lo, hi)).select(column, tail=f"ORDER BY {column} {order} LIMIT {need}")
            )
            candidates += [(key, part) for (key,) in rows]
        candidates.sort(key=lambda candidate: (candidate[0], candidate[1].id), reverse=desc)
        picked += candidates[:need]
    return picked


def _position(
    con: sqlite3.Connection, where: Scope, search_after: Sequence[Any], desc: bool
) -> tuple[int, int, int]:
    """``(day, key, partition id)`` of the hit named by ``[@timestamp, event.id]``, looked up at its microsecond
    in the partitions of its day; when the event is gone (retention), the edge of that microsecond, so paging
    goes on without repeating a hit."""
    if len(search_after) != 2:
        raise ValueError("search_after takes the [@timestamp, event.id] of a hit")
    timestamp, event_id = search_after
    us = epoch_us(clock.parse_rfc3339(str(timestamp)))
    day = sql.day_number(us)
    rel = us % sql.DAY_US
    for part in where.parts:
        if part.day == day:
            row = con.execute(
                f"SELECT key FROM {part.ev} WHERE key >= ? AND key < ? AND event_id = ?",
                (rel << sql.SLOT_BITS, (rel + 1) << sql.SLOT_BITS, str(event_id)),
            ).fetchone()
            if row is not None:
                return day, row[0], part.id
    if desc:
        return day, rel << sql.SLOT_BITS, 0
    return day, ((rel + 1) << sql.SLOT_BITS) - 1, sql.KEY_MAX


def _after(part: sql.Partition, lo: int, hi: int, after: tuple[int, int, int], desc: bool) -> tuple[int, int]:
    """Narrow ``[lo, hi)`` to what comes after position ``after`` in (day, key, partition id) order."""
    day, key, part_id = after
    if desc:
        if part.day > day:
            return lo, lo
        return (lo, min(hi, key + 1 if part.id < part_id else key)) if part.day == day else (lo, hi)
    if part.day < day:
        return hi, hi
    return (max(lo, key if part.id > part_id else key + 1), hi) if part.day == day else (lo, hi)


def _hits(con: sqlite3.Connection, picked: list[tuple[int, sql.Partition]]) -> list[Hit]:
    docs: dict[tuple[int, int], dict[str, Any]] = {}
    for part in {part.id: part for _, part in picked}.values():
        keys = [key for key, owner in picked if owner is part]
        marks = ", ".join("?" * len(keys))
        rows = con.execute(f"SELECT key, original, message, doc FROM {part.doc} WHERE key IN ({marks})", keys)
        for key, original, message, body in rows:
            doc = orjson.loads(body)
            if original is not None:
                doc.setdefault("event", {})["original"] = original
            if message is not None:
                doc["message"] = message
            docs[part.id, key] = doc
    hits = []
    for key, part in picked:
        doc = docs[part.id, key]
        hits.append(Hit(doc=doc, sort=[doc["@timestamp"], doc["event"]["id"]]))
    return hits


def aggregate(
    con: sqlite3.Connection, query: EventQuery, aggregations: Mapping[str, Aggregation]
) -> dict[str, Any]:
    check_aggregations(aggregations)
    names = list(aggregations)
    result: dict[str, Any] = {"count": 0, **{name: [] for name in names}}
    where = scope(con, query)
    if where is None:
        return result
    # A terms field promoted in every partition is read from its column; otherwise every partition gives its
    # values as a JSON array, so that a list counts each of its values once.
    plan = [
        (agg, isinstance(agg, TermsAgg) and any(part.promoted(agg.field) is None for part in where.parts))
        for agg in aggregations.values()
    ]
    arms = []
    for part in where.parts:
        params: list[Scalar] = []
        columns = ["e.key"]
        need_doc = False
        for agg, json_terms in plan:
            expression, reads_doc = sql.agg_column(part, agg, json_terms, params)
            columns.append(expression)
            need_doc = need_doc or reads_doc
        arms.append(where.arm(part, need_doc=need_doc).select(", ".join(columns), params))
    for index, key, count in con.execute(*sql.aggregate_statement(arms, plan)):
        if index < 0:
            result["count"] = count
        elif isinstance(plan[index][0], DateHistogramAgg):
            result[names[index]].append({"key": rfc3339_us(key * 1_000_000), "count": count})
        else:
            result[names[index]].append({"key": key, "count": count})
    for name, agg in aggregations.items():
        if isinstance(agg, DateHistogramAgg):
            result[name].sort(key=lambda bucket: bucket["key"])
        else:
            result[name].sort(key=lambda b: (-b["count"], isinstance(b["key"], str), b["key"]))
    return result
