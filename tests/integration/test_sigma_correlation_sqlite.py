"""Acceptance 3 of issue 5, second half: for ``event_count``, ``value_count`` and ``temporal`` the streams
written for the specification's examples give the same alerts from refsys's streaming engine as from pySigma's
SQLite backend's correlation SQL.

How the backend is fed: its correlation query reads one table ``logs`` with a ``timestamp`` column it turns
into epoch seconds (``julianday(timestamp)``), one column per field the rule names, and the base rules'
detections evaluated per row. The unit tests' stand-in rules all detect ``x: 1`` (the engine only needs their
names), which would make every row match every referenced rule in SQL; here each stand-in detects its own
name in a ``refsys_rule`` column instead, and the same collection is given to both sides. Each stream item
(rule, time, fields) becomes one row in ingest order, so the row id is the ingest sequence plus one.

What is compared, and why it is everything that matters: the backend anchors one window at every match time
``t`` of a group, ``[t - timespan, t]`` inclusive at both ends, and reports each qualifying window once; that
is the engine's semantics (the issue's ``[t, t + timespan]`` names the same windows by their start). So the
*sets* of (folded group values, window start, window end) must be equal, not just the groups that fire.
Group values are compared case-folded because the backend reports them lowered while the engine reports the
first-seen spelling (both group case-insensitively). Metrics and evidence (event ids) are compared too. They
could differ in one case: for ``gte`` conditions the engine fires as soon as a window qualifies and reports
the window as it stood then, while the SQL sees the finished stream; on these streams no event arrives after
a window it belongs to has fired, so the two coincide, and the test asserts it.

The one difference in semantics left out on purpose: the engine drops events older than its watermark minus
the allowed lateness (a stream cannot wait forever), while the SQL, reading a finished table, counts every
row. The engine runs here with a lateness longer than any disorder in the streams, and the test asserts that
it dropped nothing, so out-of-order events are compared too rather than explained away.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sigma.collection import SigmaCollection

from security.sigma.correlation import CorrelationEngine
from tests.services import unavailable
from tests.unit.test_sigma_correlation import FAILED, SPEC, TEMPORAL, UUID, WHO, block, run

Stream = list[tuple[str, float, dict[str, Any]]]
Backend = Callable[[], Any]
Alert = tuple[tuple[Any, ...], float, float, float, tuple[int, ...]]

LATENESS = 600.0  # longer than any disorder in these streams, so the engine drops nothing the SQL counts
EPOCH = 1_700_000_000.0  # streams start at 0; the table holds real dates so julianday() reads them


@pytest.fixture
def backend() -> Backend:
    """The backend's class, imported here so that its absence skips (or, in CI, fails) rather than errors."""
    if not SPEC.is_dir():
        pytest.skip("shared Sigma specification data not present")
    try:
        from sigma.backends.sqlite import sqliteBackend
    except ImportError:  # the test extra is not installed
        unavailable("pysigma-backend-sqlite is not installed (test extra)")
        raise
    return sqliteBackend


def stand_in(ref: str) -> str:
    """A referenced rule that detects its own name, so SQL tells the referenced rules apart."""
    ident = f"id: {ref}" if UUID.match(ref) else f"name: {ref}"
    return (
        f"title: stand-in {ref}\n{ident}\nlogsource:\n  product: test\n"
        f"detection:\n  sel:\n    refsys_rule: {ref}\n  condition: sel\n"
    )


def collection_text(n: int, *refs: str) -> str:
    return "\n---\n".join([block(n), *(stand_in(r) for r in refs)])


def timestamp(time: float) -> str:
    return datetime.fromtimestamp(EPOCH + time, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sqlite_alerts(backend: Backend, text: str, stream: Stream, *, show: bool = False) -> set[Alert]:
    """Load the stream into ``logs`` and run the backend's correlation query over it."""
    queries = backend().convert(SigmaCollection.from_yaml(text))
    assert len(queries) == 1, queries
    if show:
        print(f"\nSQLite backend correlation query:\n{queries[0]}")
    names = sorted({name for _, _, fields in stream for name in fields})
    db = sqlite3.connect(":memory:")
    db.execute(f"CREATE TABLE logs (timestamp, refsys_rule, {', '.join(map(quoted, names))})")
    for rule, time, fields in stream:
        row = {"timestamp": timestamp(time), "refsys_rule": rule, **fields}
        db.execute(
            f"INSERT INTO logs ({', '.join(map(quoted, row))}) VALUES ({', '.join('?' * len(row))})",
            list(row.values()),
        )
    alerts: set[Alert] = set()
    for group_keys, start, end, metric, evidence in db.execute(
        f"SELECT group_keys, window_start, window_end, metric_value, event_ids FROM ({queries[0]})"
    ):
        seqs = tuple(sorted(int(e.rsplit(":", 1)[1]) - 1 for e in json.loads(evidence)))  # "0:<rowid>"
        groups = tuple(json.loads(group_keys).values())
        alerts.add((groups, round(start - EPOCH, 3), round(end - EPOCH, 3), float(metric), seqs))
    return alerts


def engine_alerts(text: str, stream: Stream) -> set[Alert]:
    engine = CorrelationEngine(SigmaCollection.from_yaml(text), lateness=LATENESS)
    alerts = {
        (
            tuple(v.lower() if isinstance(v, str) else v for v in a.group.values()),
            a.window_start,
            a.window_end,
            a.metric,
            a.event_seqs,
        )
        for a in run(engine, stream)
    }
    assert engine.counters["dropped_late"] == 0  # the SQL has no lateness bound: every event must count
    return alerts


# The streams of tests/unit/test_sigma_correlation.py, built the same way, plus one where many windows qualify.
def edge_stream() -> Stream:
    stream: Stream = [(FAILED, float(i * 36), {"ComputerName": "h1"}) for i in range(100)]
    stream[-1] = (FAILED, 3600.0, {"ComputerName": "h1"})
    return stream


def past_edge_stream() -> Stream:
    stream: Stream = [(FAILED, float(i * 36), {"ComputerName": "h1"}) for i in range(99)]
    return [*stream, (FAILED, 3601.0, {"ComputerName": "h1"})]


def group_split_stream() -> Stream:
    stream: Stream = [(FAILED, float(i), {"ComputerName": "h1" if i % 2 else "h2"}) for i in range(150)]
    return stream + [(FAILED, 200.0 + i, {"ComputerName": "H1"}) for i in range(25)]


def sliding_stream() -> Stream:
    """Two hosts, 130 events each 30 s apart: the windows ending at the 100th to 130th event of each qualify."""
    return [(FAILED, float(i * 30), {"ComputerName": h}) for i in range(130) for h in ("h1", "H2")]


def value_count_stream(closing: bool) -> Stream:
    where = {"ComputerName": "dc1", "WorkstationName": "ws1"}
    stream: Stream = [(FAILED, float(i), {**where, "User": f"u{i}"}) for i in range(99)]
    stream.append((FAILED, 200.0, {**where, "User": "U0"}))
    stream.append((FAILED, 201.0, {"ComputerName": "dc1", "WorkstationName": "ws2", "User": "u99"}))
    return [*stream, (FAILED, 86_400.0, {**where, "User": "u99"})] if closing else stream


def temporal_stream(last: float) -> Stream:
    return [("recon_cmd_c", 0.0, WHO), ("recon_cmd_a", 100.0, WHO), ("recon_cmd_b", last, WHO)]


def temporal_split_stream() -> Stream:
    return [
        ("recon_cmd_a", 0.0, WHO),
        ("recon_cmd_b", 1.0, WHO),
        ("recon_cmd_c", 2.0, {**WHO, "User": "bob"}),
    ]


def temporal_repeat_stream() -> Stream:
    """All three, then b and c again inside the window: every later end still holds all three rules."""
    return [
        *temporal_stream(250.0),
        ("recon_cmd_b", 260.0, {**WHO, "User": "EVE"}),
        ("recon_cmd_c", 290.0, WHO),
        ("recon_cmd_a", 700.0, WHO),
    ]


def temporal_late_stream() -> Stream:
    """b happens at 50 but arrives after a (100): within the lateness, the window ending at 100 has all three;
    the window ending at 390 has lost c (0) and b (50) and does not fire."""
    return [*temporal_stream(50.0), ("recon_cmd_c", 390.0, WHO)]


CASES: dict[str, tuple[int, tuple[str, ...], Callable[[], Stream], int]] = {
    # name: (specification block, referenced rules, stream, alerts expected); the engine runs with LATENESS
    "event_count edge": (5, (FAILED,), edge_stream, 1),
    "event_count past edge": (5, (FAILED,), past_edge_stream, 0),
    "event_count group split": (5, (FAILED,), group_split_stream, 1),
    "event_count sliding": (5, (FAILED,), sliding_stream, 62),
    "value_count below": (6, (FAILED,), lambda: value_count_stream(False), 0),
    "value_count edge": (6, (FAILED,), lambda: value_count_stream(True), 1),
    "temporal edge": (7, TEMPORAL, lambda: temporal_stream(300.0), 1),
    "temporal past edge": (7, TEMPORAL, lambda: temporal_stream(301.0), 0),
    "temporal group split": (7, TEMPORAL, temporal_split_stream, 0),
    "temporal repeated": (7, TEMPORAL, temporal_repeat_stream, 3),
    "temporal out of order": (7, TEMPORAL, temporal_late_stream, 1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_engine_alerts_equal_the_sqlite_backends(backend: Backend, name: str) -> None:
    n, refs, make, expected = CASES[name]
    text = collection_text(n, *refs)
    stream = make()
    ours = engine_alerts(text, stream)
    theirs = sqlite_alerts(backend, text, stream, show=name == "event_count edge")
    print(f"\n{name}: {len(ours)} alerts ours, {len(theirs)} SQLite, {len(ours & theirs)} shared")
    assert ours == theirs
    assert len(ours) == expected  # the comparison is not vacuous where the example should fire
