"""The Sigma specification's correlation examples, run on event streams written here, fire exactly as the
specification and the engine's window semantics say: windows [end - timespan, end] inclusive at both ends,
ties by ingest order, lateness, bounded groups, deterministic alert ids, snapshot/restore."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationRule
from sigma.rule import SigmaRule

from security.sigma.correlation import CorrelationAlert, CorrelationEngine, CorrelationError
from security.sigma.correlation_metrics import percentile

SPEC = Path(__file__).resolve().parents[3] / "shared" / "data" / "sigma-specification"
BLOCKS = SPEC / "extracted_examples_from_correlation_spec"
SCHEMA_TESTS = SPEC / "tests" / "schema" / "correlation"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

pytestmark = pytest.mark.skipif(not SPEC.is_dir(), reason="shared Sigma specification data not present")


def base_rule(ref: str) -> str:
    """A stand-in for a rule a correlation refers to: only its id or name matters to the engine."""
    ident = f"id: {ref}" if UUID.match(ref) else f"name: {ref}"
    return f"title: stand-in {ref}\n{ident}\nlogsource:\n  product: test\ndetection:\n  sel:\n    x: 1\n  condition: sel\n"


def engine(text: str, *refs: str, **kwargs: Any) -> CorrelationEngine:
    docs = [text, *(base_rule(r) for r in refs)]
    return CorrelationEngine(SigmaCollection.from_yaml("\n---\n".join(docs)), **kwargs)


def completed(text: str) -> str:
    """Fill in what pySigma requires and the specification's snippets leave out or show as "—"
    (title, id, log source); nothing the correlation says is changed."""
    docs = []
    for doc in text.split("\n---\n"):
        doc = re.sub(r"^(title|id): —\n", "", doc, flags=re.M)
        if not re.search(r"^title:", doc, re.M):
            doc = f"title: spec example\n{doc}"
        if "detection:" in doc and "logsource:" not in doc:
            doc += "\nlogsource:\n    product: test\n"
        docs.append(doc)
    return "\n---\n".join(docs)


def block(n: int) -> str:
    return completed((BLOCKS / f"block_{n:02d}.yml").read_text())


def run(eng: CorrelationEngine, stream: list[tuple[str, float, dict[str, Any]]]) -> list[CorrelationAlert]:
    """Feed (rule, time, fields) in list order (the ingest order), then end the stream."""
    alerts: list[CorrelationAlert] = []
    for seq, (rule, time, fields) in enumerate(stream):
        alerts += eng.feed(rule, time, seq, fields)
    return alerts + eng.flush()


FAILED = "5638f7c0-ac70-491d-8465-2a65075e0d86"


def test_every_correlation_example_of_the_specification_parses() -> None:
    index = json.loads((BLOCKS / "INDEX.json").read_text())
    # block 01 is a fragment showing only `rules` (no type): an illustration, not a rule
    typed = [
        i["file"]
        for i in index
        if any(d.startswith("correlation:") and d != "correlation:?" for d in i["documents"])
    ]
    texts = [completed((SPEC / f).read_text()) for f in typed]
    texts += [p.read_text() for p in sorted(SCHEMA_TESTS.glob("*.yml"))]
    parsed = 0
    for text in texts:
        for doc in yaml.safe_load_all(text):
            rule = (SigmaCorrelationRule if "correlation" in doc else SigmaRule).from_dict(doc)
            parsed += isinstance(rule, SigmaCorrelationRule)
    assert parsed == len(texts) + 1  # block 15 holds two correlations


def test_event_count_fires_with_the_last_event_exactly_at_the_window_edge() -> None:
    # block 05: >= 100 failed logins per ComputerName within 1h
    stream = [(FAILED, float(i * 36), {"ComputerName": "h1"}) for i in range(100)]
    stream[-1] = (FAILED, 3600.0, {"ComputerName": "h1"})
    alerts = run(engine(block(5), FAILED), stream)
    assert [(a.window_start, a.window_end, a.metric) for a in alerts] == [(0.0, 3600.0, 100.0)]
    assert alerts[0].group == {"ComputerName": "h1"} and len(alerts[0].event_seqs) == 100


def test_event_count_does_not_fire_one_second_past_the_edge() -> None:
    stream = [(FAILED, float(i * 36), {"ComputerName": "h1"}) for i in range(99)]
    stream.append((FAILED, 3601.0, {"ComputerName": "h1"}))
    assert run(engine(block(5), FAILED), stream) == []


def test_event_count_counts_each_group_by_value_apart() -> None:
    stream = [(FAILED, float(i), {"ComputerName": "h1" if i % 2 else "h2"}) for i in range(150)]
    assert run(engine(block(5), FAILED), stream) == []
    stream += [(FAILED, 200.0 + i, {"ComputerName": "H1"}) for i in range(25)]  # group values fold case
    alerts = run(engine(block(5), FAILED), stream)
    assert [(a.group, a.metric) for a in alerts] == [({"ComputerName": "h1"}, 100.0)]


def test_value_count_counts_distinct_values_case_insensitively_per_group() -> None:
    # block 06: >= 100 distinct User per (ComputerName, WorkstationName) within 1d
    where = {"ComputerName": "dc1", "WorkstationName": "ws1"}
    stream = [(FAILED, float(i), {**where, "User": f"u{i}"}) for i in range(99)]
    stream.append((FAILED, 200.0, {**where, "User": "U0"}))  # same as u0
    stream.append((FAILED, 201.0, {"ComputerName": "dc1", "WorkstationName": "ws2", "User": "u99"}))
    eng = engine(block(6), FAILED)
    assert run(eng, stream) == []
    alerts = run(engine(block(6), FAILED), [*stream, (FAILED, 86_400.0, {**where, "User": "u99"})])
    assert [(a.window_end, a.metric) for a in alerts] == [(86_400.0, 100.0)]


TEMPORAL = ("recon_cmd_a", "recon_cmd_b", "recon_cmd_c")
WHO = {"ComputerName": "pc", "User": "eve"}


@pytest.mark.parametrize(("last", "fires"), [(300.0, True), (301.0, False)])
def test_temporal_needs_every_rule_in_any_order_within_the_window(last: float, fires: bool) -> None:
    # block 07: recon a, b and c in any order within 5m on one computer by one user
    stream = [("recon_cmd_c", 0.0, WHO), ("recon_cmd_a", 100.0, WHO), ("recon_cmd_b", last, WHO)]
    alerts = run(engine(block(7), *TEMPORAL), stream)
    assert [(a.window_start, a.metric) for a in alerts] == ([(0.0, 3.0)] if fires else [])


def test_temporal_group_by_split_keeps_users_apart() -> None:
    stream = [
        ("recon_cmd_a", 0.0, WHO),
        ("recon_cmd_b", 1.0, WHO),
        ("recon_cmd_c", 2.0, {**WHO, "User": "bob"}),
    ]
    assert run(engine(block(7), *TEMPORAL), stream) == []


ORDERED = (SCHEMA_TESTS / "temporal_ordered.yml").read_text() if SPEC.is_dir() else ""


def test_temporal_ordered_orders_by_event_time_not_arrival() -> None:
    # arrive c, a, b but happened a (0), b (100), c (200): fires once c's window closes over a late a and b
    stream = [("recon_cmd_c", 200.0, WHO), ("recon_cmd_a", 0.0, WHO), ("recon_cmd_b", 100.0, WHO)]
    alerts = run(engine(ORDERED, *TEMPORAL, lateness=300), stream)
    assert [(a.window_end, a.metric, a.event_seqs) for a in alerts] == [(200.0, 3.0, (0, 1, 2))]


def test_temporal_ordered_refuses_the_wrong_order_even_when_arrival_looks_right() -> None:
    stream = [("recon_cmd_a", 0.0, WHO), ("recon_cmd_c", 100.0, WHO), ("recon_cmd_b", 200.0, WHO)]
    assert run(engine(ORDERED, *TEMPORAL, lateness=300), stream) == []
    # out of order the other way: arrive a, c (t=200), then b late at t=100 -> a, b, c in event time
    late = [("recon_cmd_a", 0.0, WHO), ("recon_cmd_c", 200.0, WHO), ("recon_cmd_b", 100.0, WHO)]
    assert len(run(engine(ORDERED, *TEMPORAL, lateness=300), late)) == 1


@pytest.mark.parametrize(("first", "fires"), [("recon_cmd_a", True), ("recon_cmd_b", False)])
def test_temporal_ordered_ties_go_by_ingest_order(first: str, fires: bool) -> None:
    second = "recon_cmd_b" if first == "recon_cmd_a" else "recon_cmd_a"
    stream = [(first, 50.0, WHO), (second, 50.0, WHO), ("recon_cmd_c", 60.0, WHO)]
    assert len(run(engine(ORDERED, *TEMPORAL), stream)) == int(fires)


def test_value_sum_is_judged_when_the_window_closes_and_skips_non_numbers() -> None:
    # block 09: sum(bytes_sent) > 1,000,000 per (SourceIP, User) within 1h
    who = {"SourceIP": "10.0.0.5", "User": "eve"}
    stream = [
        ("website_access", 0.0, {**who, "bytes_sent": 600_000}),
        ("website_access", 10.0, {**who, "bytes_sent": "n/a"}),
        ("website_access", 20.0, {**who, "bytes_sent": "400001"}),
    ]
    eng = engine(block(9), "website_access")
    fed = [eng.feed(r, t, i, f) for i, (r, t, f) in enumerate(stream)]
    assert fed == [[], [], []]  # a sum can still change while the window is open
    closed = eng.feed("website_access", 21.0, 3, {"SourceIP": "other", "User": "x", "bytes_sent": 1})
    assert [(a.window_end, a.metric) for a in closed] == [(20.0, 1_000_001.0)]
    assert eng.flush() == []


def test_value_avg_fires_above_the_average() -> None:
    # block 10: avg(BytesOut) > 500 per (SourceIP, User) within 24h
    who = {"SourceIP": "10.0.0.5", "User": "eve"}
    stream = [("rule_a_id", 0.0, {**who, "BytesOut": 400}), ("rule_a_id", 5.0, {**who, "BytesOut": 700})]
    alerts = run(engine(block(10), "rule_a_id"), stream)
    assert [(a.window_end, a.metric) for a in alerts] == [(5.0, 550.0)]


def test_value_percentile_uses_linear_interpolation_and_needs_a_percentile() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)
    with pytest.raises(CorrelationError, match="percentile"):
        engine((SCHEMA_TESTS / "value_percentile.yml").read_text(), "process_creation")
    text = block(11).replace("lte: 1", "lte: 20\n        percentile: 50").replace("image", "Size")
    stream = [("process_creation", float(t), {"ComputerName": "pc", "Size": t * 10}) for t in range(1, 5)]
    alerts = run(engine(text, "process_creation"), stream)
    assert [(a.window_end, a.metric) for a in alerts] == [(1.0, 10.0), (2.0, 15.0), (3.0, 20.0)]


ALIASED = "\n---\n".join([block(14), block(12), block(13)])


@pytest.mark.parametrize(("remote", "fires"), [("1.2.3.4", True), ("9.9.9.9", False)])
def test_aliases_group_different_fields_of_different_rules(remote: str, fires: bool) -> None:
    # block 14: internal_error's destination.ip is new_network_connection's source.ip, and vice versa
    error = {"destination.ip": "10.0.0.1", "source.ip": "1.2.3.4"}
    connection = {"source.ip": "10.0.0.1", "destination.ip": remote}
    eng = CorrelationEngine(SigmaCollection.from_yaml(ALIASED))
    alerts = run(eng, [("internal_error", 0.0, error), ("new_network_connection", 10.0, connection)])
    expected = [{"internal_ip": "10.0.0.1", "remote_ip": "1.2.3.4"}] if fires else []
    assert [a.group for a in alerts] == expected


def chained_stream(failures: int, success_at: float) -> list[tuple[str, float, dict[str, Any]]]:
    stream = [("failed_login", float(i * 10), {"User": "bob"}) for i in range(failures)]
    return [*stream, ("successful_login", success_at, {"User": "bob"})]


def test_chained_correlation_fires_on_many_failures_followed_by_a_success() -> None:
    # block 15: temporal_ordered over (event_count >= 10 failed logins, successful login), 10m, by User
    eng = CorrelationEngine(SigmaCollection.from_yaml(block(15)))
    alerts = run(eng, chained_stream(10, 95.0))
    assert [(a.correlation, a.group, a.level) for a in alerts] == [
        ("b180ead8-d58f-40b2-ae54-c8940995b9b6", {"User": "bob"}, "high")
    ]
    # no generate: the referenced rules and the inner correlation do not alert on their own
    assert not eng.standalone_alerts("failed_login") and not eng.standalone_alerts("successful_login")


@pytest.mark.parametrize(("failures", "success_at"), [(9, 95.0), (10, 85.0)])
def test_chained_correlation_stays_silent_when_a_link_is_missing(failures: int, success_at: float) -> None:
    eng = CorrelationEngine(SigmaCollection.from_yaml(block(15)))
    assert run(eng, chained_stream(failures, success_at)) == []


def test_events_later_than_the_allowed_lateness_are_dropped_and_counted() -> None:
    eng = engine(block(5).replace("gte: 100", "gte: 2"), FAILED, lateness=10)
    host = {"ComputerName": "h1"}
    assert eng.feed(FAILED, 100.0, 0, host) == []
    assert eng.feed(FAILED, 89.0, 1, host) == []  # older than watermark - lateness
    assert eng.counters["dropped_late"] == 1
    assert len(eng.feed(FAILED, 90.0, 2, host)) == 1  # exactly at the bound: accepted
    assert eng.counters["dropped_late"] == 1


def test_the_oldest_group_is_evicted_beyond_the_maximum_and_counted() -> None:
    eng = engine(block(5).replace("gte: 100", "gte: 2"), FAILED, max_groups=2)
    for seq, host in enumerate(["h1", "h2", "h3"]):
        eng.feed(FAILED, float(seq), seq, {"ComputerName": host})
    assert eng.counters["evicted_groups"] == 1
    assert eng.feed(FAILED, 3.0, 3, {"ComputerName": "h1"}) == []  # h1's first event went with it
    assert len(eng.feed(FAILED, 4.0, 4, {"ComputerName": "h3"})) == 1


def test_alert_ids_are_deterministic_from_correlation_group_and_window() -> None:
    text = block(5).replace("gte: 100", "gte: 2")
    stream = [(FAILED, 0.0, {"ComputerName": h}) for h in ("h1", "h2")] * 2
    first = run(engine(text, FAILED), stream)
    again = run(engine(text, FAILED), stream)
    assert [a.alert_id for a in first] == [a.alert_id for a in again]
    assert len({a.alert_id for a in first}) == 2
    other = run(
        engine(
            text.replace("0e95725d-7320-415d-80f7-004da920fc11", "0e95725d-0000-415d-80f7-004da920fc11"),
            FAILED,
        ),
        stream,
    )
    assert not {a.alert_id for a in other} & {a.alert_id for a in first}


def mixed_stream() -> list[tuple[str, float, dict[str, Any]]]:
    """Chained logins for two users, late and tied events, and one event past the lateness."""
    stream: list[tuple[str, float, dict[str, Any]]] = []
    for user, offset in (("bob", 0.0), ("ann", 3.0)):
        stream += [("failed_login", offset + i * 10, {"User": user}) for i in range(11)]
    stream.sort(key=lambda item: item[1])
    stream += [
        ("failed_login", 50.0, {"User": "ann"}),  # late but within the lateness
        ("successful_login", 120.0, {"User": "bob"}),
        ("failed_login", 50.0, {"User": "ann"}),  # now too late
        ("successful_login", 130.0, {"User": "ann"}),
        ("successful_login", 130.0, {"User": "ann"}),
        ("failed_login", 1.0, {"User": "bob"}),
        ("successful_login", 900.0, {"User": "bob"}),
    ]
    return stream


def test_snapshot_and_restore_give_the_same_alerts_as_an_uninterrupted_run() -> None:
    stream = mixed_stream()
    collection = block(15)
    whole = run(CorrelationEngine(SigmaCollection.from_yaml(collection), lateness=60), stream)
    assert [a.group for a in whole] == [{"User": "bob"}, {"User": "ann"}]
    counters = uninterrupted_counters(stream, collection)
    assert counters["dropped_late"] == 2
    for cut in range(len(stream) + 1):
        eng = CorrelationEngine(SigmaCollection.from_yaml(collection), lateness=60)
        alerts = [a for seq, (r, t, f) in enumerate(stream[:cut]) for a in eng.feed(r, t, seq, f)]
        saved = json.loads(json.dumps(eng.snapshot()))
        resumed = CorrelationEngine(SigmaCollection.from_yaml(collection), lateness=60)
        resumed.restore(saved)
        alerts += [
            a for seq, (r, t, f) in enumerate(stream) if seq >= cut for a in resumed.feed(r, t, seq, f)
        ]
        alerts += resumed.flush()
        assert alerts == whole, cut
        assert resumed.counters == counters


def uninterrupted_counters(
    stream: list[tuple[str, float, dict[str, Any]]], collection: str
) -> dict[str, int]:
    eng = CorrelationEngine(SigmaCollection.from_yaml(collection), lateness=60)
    run(eng, stream)
    return eng.counters


def test_a_snapshot_of_another_version_is_refused() -> None:
    eng = engine(block(5), FAILED)
    with pytest.raises(ValueError, match="version"):
        eng.restore({"version": 0})


def test_a_condition_that_more_events_could_break_waits_for_the_window_to_close() -> None:
    # lt 2: a lone event qualifies only if no second one arrives inside its window before it closes
    text = block(5).replace("gte: 100", "lt: 2")
    eng = engine(text, FAILED, lateness=5)
    host = {"ComputerName": "h1"}
    assert eng.feed(FAILED, 0.0, 0, host) == []
    assert eng.feed(FAILED, 0.0, 1, host) == []  # a tie: the window ending at 0 now holds two
    assert eng.feed(FAILED, 10.0, 2, {"ComputerName": "h2"}) == []  # closes h1's window: 2 events, no alert
    late = eng.feed(FAILED, 20.0, 3, {"ComputerName": "h3"})  # closes h2's window: 1 event
    assert [(a.group, a.metric) for a in late] == [({"ComputerName": "h2"}, 1.0)]


def test_a_match_without_its_group_by_field_is_counted_not_grouped() -> None:
    eng = engine(block(5).replace("gte: 100", "gte: 1"), FAILED)
    assert eng.feed(FAILED, 0.0, 0, {"User": "x"}) == []
    assert eng.counters["missing_group_key"] == 1
