"""SQL for the SQLite event store: the partition schema and the translation of an ``EventQuery``.

A partition holds one dataset's events of one UTC day in three tables that share one integer key:

- ``ev_<day>_<id>``: the key and the promoted columns (hot filter and aggregation fields), a few of them indexed;
  narrow, so that an aggregation over a day reads megabytes, not the documents;
- ``doc_<day>_<id>``: the key, ``event.original``, ``message`` and the rest of the document as JSON;
- ``fts_<day>_<id>``: FTS5 over ``event.original`` and ``message``, external content (``doc_*``), so the raw
  line is stored once.

The key is time-ordered: ``(microseconds since the partition's midnight) << SLOT_BITS | slot``, the slot telling
apart events of the same microsecond. A time range is therefore a key range on every table, FTS5 included
(its rowid range restricts the doclists it reads), and the events of a day are appended in time order. An
event stored again has the same microsecond: its key range holds the ids to compare, so idempotency needs no
index of ids.
"""

# ruff: noqa: S608 -- table names are built from integers (partition id, day) and constant column names;
# every value is a bound parameter.

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from security.store.base import Aggregation, DateHistogramAgg, Scalar

DAY_US = 86_400_000_000
SLOT_BITS = 26
"""2**26 events of one partition may share a microsecond; a day of microseconds (< 2**37) still fits int64."""
SLOTS = 1 << SLOT_BITS
KEY_MAX = (1 << 63) - 1
MAX_COMPOUND = 200
"""Partitions per ``UNION ALL`` chain (SQLite refuses more than 500 terms in one compound select)."""

PROMOTED: dict[str, tuple[str, str]] = {
    "event.id": ("e", "event_id"),
    "event.action": ("e", "event_action"),
    "event.outcome": ("e", "event_outcome"),
    "event.kind": ("e", "event_kind"),
    "event.module": ("e", "event_module"),
    "event.severity": ("e", "event_severity"),
    "source.ip": ("e", "source_ip"),
    "source.port": ("e", "source_port"),
    "destination.ip": ("e", "destination_ip"),
    "destination.port": ("e", "destination_port"),
    "user.name": ("e", "user_name"),
    "host.name": ("e", "host_name"),
    "process.name": ("e", "process_name"),
    "rule.id": ("e", "rule_id"),
    "observer.name": ("e", "observer_name"),
    "event.original": ("d", "original"),
    "message": ("d", "message"),
}
"""Dotted field -> (table alias, column). ``e`` columns are scalar ECS fields that filters and terms
aggregations use most; ``d`` columns are the two free-text fields, kept out of the JSON."""
EXTRACTED = tuple((column, *field.split(".")) for field, (alias, column) in PROMOTED.items() if alias == "e")
"""``(column, parent, leaf)`` for each promoted ``ev`` column, in column order (every one is two levels deep)."""
INDEXED = ("event_id", "source_ip", "destination_ip", "user_name", "host_name")
"""Promoted columns indexed once a partition is sealed (each index is implicitly ``(column, key)``, so a time
range narrows it too). The partition being filled has none: maintaining them row by row would cost as much as
the rest of the write path, while its narrow ``ev`` table scans fast."""

_ARRAY_INDEX = re.compile(r"\[\d+\]")
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def day_number(us: int) -> int:
    """``YYYYMMDD`` of the UTC day containing ``us`` microseconds since the epoch."""
    day = date.fromordinal(_EPOCH_ORDINAL + us // DAY_US)
    return day.year * 10_000 + day.month * 100 + day.day


def day_start(day: int) -> int:
    """Microseconds since the epoch of the midnight starting day ``YYYYMMDD``."""
    return (date(day // 10_000, day // 100 % 100, day % 100).toordinal() - _EPOCH_ORDINAL) * DAY_US


@dataclass(frozen=True)
class Partition:
    id: int
    dataset: str
    day: int
    """``YYYYMMDD``."""
    start_us: int
    """The day's midnight, microseconds since the epoch."""
    irregular: frozenset[str] = frozenset()
    """Promoted fields that held a non-scalar value in some event here: read from the JSON instead."""

    @property
    def ev(self) -> str:
        return f"ev_{self.day}_{self.id}"

    @property
    def doc(self) -> str:
        return f"doc_{self.day}_{self.id}"

    @property
    def fts(self) -> str:
        return f"fts_{self.day}_{self.id}"

    @property
    def tables(self) -> tuple[str, ...]:
        """In the order they can be dropped (the FTS index before its content table)."""
        return self.fts, self.doc, self.ev

    def promoted(self, field: str) -> tuple[str, str] | None:
        return None if field in self.irregular else PROMOTED.get(field)


def partition_ddl(part: Partition) -> list[str]:
    ev_columns = ", ".join(column for column, _, _ in EXTRACTED)
    return [
        f"CREATE TABLE IF NOT EXISTS {part.ev} (key INTEGER PRIMARY KEY, {ev_columns})",
        f"CREATE TABLE IF NOT EXISTS {part.doc} (key INTEGER PRIMARY KEY, original TEXT, message TEXT, doc TEXT)",
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {part.fts} USING fts5(original, message, content='{part.doc}',"
        " content_rowid='key', columnsize=0, tokenize='unicode61 remove_diacritics 2')",
        # Merge FTS segments only when 256 pile up on a level, not a little at every commit (FTS5's default):
        # measured at a day's volume, indexing costs half and ingest gains 15 % over merging at 64, while the
        # dashboard query takes the same time (bench/store_bench.py).
        f"INSERT INTO {part.fts} ({part.fts}, rank) VALUES ('automerge', 0)",
        f"INSERT INTO {part.fts} ({part.fts}, rank) VALUES ('crisismerge', 256)",
    ]


def index_ddl(part: Partition) -> list[str]:
    """The secondary indexes of a sealed partition, built in one sort rather than row by row as events come."""
    return [f"CREATE INDEX IF NOT EXISTS {part.ev}_{column} ON {part.ev} ({column})" for column in INDEXED]


def ecs_path(fullkey: str) -> str:
    """``$.auditd.records[0].type`` -> ``auditd.records.type``; ``$.falco.f."proc.name"`` -> ``falco.f.proc.name``.

    The dotted path OpenSearch gives a leaf (arrays are transparent, dotted keys are path segments), so a
    filter on a native field means the same on both back-ends. Registered as an SQL function.
    """
    return _ARRAY_INDEX.sub("", fullkey)[2:].replace('"', "")


def variants(value: Scalar) -> list[Scalar]:
    """The stored values a filter value matches: ``"22"`` matches 22 and ``22`` matches ``"22"``, as a
    keyword or long field does in OpenSearch; booleans are stored and matched as ``"true"``/``"false"``."""
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, int):
        return [value, str(value)]
    if isinstance(value, float):
        as_float: list[Scalar] = [value, str(value)]
        return [*as_float, int(value)] if value.is_integer() else as_float
    found: list[Scalar] = [value]
    try:
        found.append(int(value))
    except ValueError:
        with contextlib.suppress(ValueError):
            found.append(float(value))
    return found


def fts_expression(terms: Sequence[str]) -> str:
    """Every term as an FTS5 string (a phrase of its tokens), all required: no FTS5 operator survives."""
    return " AND ".join('"' + term.replace('"', '""') + '"' for term in terms)


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def json_tree_values(field: str) -> tuple[str, list[Scalar]]:
    """A ``FROM`` source (alias ``t``) of the leaf values at ``field`` in ``d.doc``, with its parameters.

    Walks only the field's top-level object. Leaves are found by their key (or as array elements) before the
    Python ``ecs_path`` runs, so it is called about once per document. Booleans read as ``"true"``/``"false"``.
    """
    top, *rest = field.split(".")
    if not rest:
        return "json_tree(d.doc, ?) AS t WHERE t.atom IS NOT NULL AND ecs_path(t.fullkey) = ?", [
            f'$."{top}"',
            field,
        ]
    leaf = rest[-1]
    return (
        "json_tree(d.doc, ?) AS t WHERE t.atom IS NOT NULL"
        " AND (t.key = ? OR t.key GLOB ? OR typeof(t.key) = 'integer') AND ecs_path(t.fullkey) = ?",
        [f'$."{top}"', leaf, f"*.{leaf}", field],
    )


JSON_ATOM = "CASE t.type WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' ELSE t.atom END"


@dataclass
class Arm:
    """The events of one partition matching a query, as ``FROM ... WHERE ...`` with its parameters."""

    source: str
    where: str
    params: list[Scalar]

    def select(self, columns: str, params: Sequence[Scalar] = (), tail: str = "") -> tuple[str, list[Scalar]]:
        return f"SELECT {columns} FROM {self.source} WHERE {self.where} {tail}", [*params, *self.params]


def arm(
    part: Partition,
    filters: dict[str, list[Scalar]],
    fts: str | None,
    lo: int,
    hi: int,
    *,
    need_doc: bool = False,
) -> Arm:
    """``filters`` exclude ``event.dataset`` (chosen by partition); ``[lo, hi)`` is the key range."""
    conditions: list[str] = []
    params: list[Scalar] = []
    for field, values in filters.items():
        accepted = [v for value in values for v in variants(value)]
        if promoted := part.promoted(field):
            alias, column = promoted
            need_doc = need_doc or alias == "d"
            conditions.append(f"{alias}.{column} IN ({_marks(len(accepted))})")
            params += accepted
        else:
            need_doc = True
            source, source_params = json_tree_values(field)
            conditions.append(f"EXISTS (SELECT 1 FROM {source} AND {JSON_ATOM} IN ({_marks(len(accepted))}))")
            params += [*source_params, *accepted]
    doc_join = f" CROSS JOIN {part.doc} AS d ON d.key = e.key" if need_doc else ""
    if fts:
        source = f"{part.fts} AS f CROSS JOIN {part.ev} AS e ON e.key = f.rowid{doc_join}"
        where = [f"{part.fts} MATCH ? AND f.rowid >= ? AND f.rowid < ?"]
        head: list[Scalar] = [fts, lo, hi]
    else:
        source = f"{part.ev} AS e{doc_join}"
        where = ["e.key >= ? AND e.key < ?"]
        head = [lo, hi]
    return Arm(source, " AND ".join(where + conditions), head + params)


def union_all(selects: Sequence[tuple[str, list[Scalar]]]) -> tuple[str, list[Scalar]]:
    """One compound select over any number of partitions, nested in chains SQLite accepts."""
    chains = []
    params: list[Scalar] = []
    for start in range(0, len(selects), MAX_COMPOUND):
        chunk = selects[start : start + MAX_COMPOUND]
        chains.append(" UNION ALL ".join(sql for sql, _ in chunk))
        params += [p for _, chunk_params in chunk for p in chunk_params]
    if len(chains) == 1:
        return chains[0], params
    return " UNION ALL ".join(f"SELECT * FROM ({chain})" for chain in chains), params


def agg_column(part: Partition, agg: Aggregation, json_terms: bool, params: list[Scalar]) -> tuple[str, bool]:
    """One aggregation's value in one partition, as an SQL expression (its parameters appended to
    ``params``), and whether it reads the document. ``json_terms``: the terms come as a JSON array (the
    field is not promoted in every partition), so a list counts each of its values once."""
    if isinstance(agg, DateHistogramAgg):
        if agg.field == "@timestamp":
            params.append(part.start_us // 1_000_000)
            return f"? + (e.key >> {SLOT_BITS}) / 1000000", False
        params.append("$" + "".join(f'."{segment}"' for segment in agg.field.split(".")))
        return "CAST(strftime('%s', json_extract(d.doc, ?)) AS INTEGER)", True
    if agg.field == "event.dataset":
        params.append(part.dataset)
        return ("json_array(?)" if json_terms else "?"), False
    promoted = part.promoted(agg.field)
    if promoted and not json_terms:
        return f"{promoted[0]}.{promoted[1]}", promoted[0] == "d"
    source, source_params = json_tree_values(agg.field)
    params += source_params
    return f"(SELECT json_group_array(DISTINCT {JSON_ATOM}) FROM {source})", True


def aggregate_statement(
    arms: Sequence[tuple[str, list[Scalar]]], aggs: Sequence[tuple[Aggregation, bool]]
) -> tuple[str, list[Scalar]]:
    """Count and every aggregation in one statement: the matching rows are materialised once (a few columns
    each), then grouped per aggregation. Rows come back as ``(aggregation index or -1, key, count)``."""
    body, params = union_all(arms)
    columns = "".join(f", a{index}" for index in range(len(aggs)))
    selects = ["SELECT -1, NULL, count(*) FROM m"]
    for index, (agg, json_terms) in enumerate(aggs):
        if isinstance(agg, DateHistogramAgg):
            width = int(agg.interval_s)
            selects.append(
                f"SELECT {index}, (a{index} / {width}) * {width}, count(*) FROM m"
                f" WHERE a{index} IS NOT NULL GROUP BY 2"
            )
        elif json_terms:
            selects.append(
                f"SELECT * FROM (SELECT {index}, j.value, count(*) AS n FROM m, json_each(m.a{index}) AS j"
                f" GROUP BY 2 ORDER BY n DESC, 2 LIMIT {int(agg.size)})"
            )
        else:
            selects.append(
                f"SELECT * FROM (SELECT {index}, a{index}, count(*) AS n FROM m WHERE a{index} IS NOT NULL"
                f" GROUP BY 2 ORDER BY n DESC, 2 LIMIT {int(agg.size)})"
            )
    return f"WITH m(k{columns}) AS MATERIALIZED ({body}) " + " UNION ALL ".join(selects), params
