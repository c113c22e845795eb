"""One search and aggregation suite for both event stores: SQLite (a temp file) and OpenSearch's API as served by
osmem-server (PyPI), which the test starts (the OpenSearch store is tested on osmem-server). Documents are
ECS-shaped, as the normalisers make them. Store-specific tests follow the shared suite."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opensearchpy.exceptions import ConflictError, TransportError

from control_plane.core import clock
from security.store import (
    DateHistogramAgg,
    EventQuery,
    EventStore,
    OpenSearchEventStore,
    SqliteEventStore,
    TermsAgg,
    open_store,
)
from security.store.opensearch_mapping import NATIVE_NAMESPACES, index_template, ism_policy
from security.store.opensearch_store import BulkWriteError
from tests.services import unavailable

DAY1 = datetime(2026, 11, 24, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
ALL = EventQuery(start=DAY1 - timedelta(days=1), end=DAY2 + timedelta(days=2), size=1000)


def at(hours: float, us: int = 0) -> datetime:
    return DAY1 + timedelta(hours=hours, microseconds=us)


def event(dataset: str, number: int, moment: datetime, **fields: Any) -> dict[str, Any]:
    """An ECS document; ``fields`` are top-level objects merged in (``event=`` adds to ``event``)."""
    doc: dict[str, Any] = {
        "@timestamp": clock.rfc3339(moment),
        "event": {
            "id": f"{dataset}:{number}",
            "dataset": dataset,
            "kind": "event",
            **fields.pop("event", {}),
        },
        **fields,
    }
    return doc


def suricata(number: int, moment: datetime, src: str, sid: int, signature: str) -> dict[str, Any]:
    eve = {
        "timestamp": clock.rfc3339(moment),
        "event_type": "alert",
        "src_ip": src,
        "dest_ip": "192.168.10.5",
        "alert": {"signature_id": sid, "signature": signature, "category": "Attempted Information Leak"},
    }
    return event(
        "suricata.eve",
        number,
        moment,
        event={
            "action": "alert",
            "category": ["network", "intrusion_detection"],
            "original": json.dumps(eve),
        },
        source={"ip": src, "port": 40000 + number},
        destination={"ip": "192.168.10.5", "port": 443},
        suricata={"eve": eve},
    )


def k8s(number: int, moment: datetime, user: str, verb: str, resource: str) -> dict[str, Any]:
    audit = {
        "auditID": f"4f9c-{number}",
        "verb": verb,
        "user": {"username": user},
        "objectRef": {"resource": resource, "namespace": "prod"},
    }
    return event(
        "kubernetes.audit",
        number,
        moment,
        event={"action": verb, "category": ["configuration"], "original": json.dumps(audit)},
        user={"name": user},
        source={"ip": "10.244.1.7"},
        kubernetes={"audit": audit},
    )


def auditd(number: int, moment: datetime, host: str, record_types: list[str], text: str) -> dict[str, Any]:
    return event(
        "auditd.log",
        number,
        moment,
        event={"action": "executed", "category": ["process"], "original": text},
        host={"name": host},
        auditd={"records": [{"type": kind, "seq": i} for i, kind in enumerate(record_types)]},
    )


def falco(number: int, moment: datetime, rule: str, proc: str) -> dict[str, Any]:
    return event(
        "falco",
        number,
        moment,
        event={
            "action": rule,
            "category": ["process"],
            "original": json.dumps({"rule": rule, "priority": "Warning"}),
        },
        message=f"proc={proc} container=job-{number} user=root",
        host={"name": "node-02"},
        falco={
            "rule": rule,
            "priority": "Warning",
            "output_fields": {"proc.name": proc, "fd.name": "/etc/shadow"},
        },
    )


CORPUS = [
    suricata(1, at(1), "10.0.0.1", 2001219, "ET SCAN Nmap Scripting Engine User-Agent Detected"),
    suricata(2, at(1, 5), "10.0.0.1", 2001219, "ET SCAN Nmap Scripting Engine User-Agent Detected"),
    suricata(3, at(2), "10.0.0.2", 2010935, "ET POLICY Suspicious inbound to MSSQL port 1433"),
    suricata(4, at(26), "10.0.0.3", 2001219, "ET SCAN Nmap Scripting Engine User-Agent Detected"),
    suricata(5, at(26), "10.0.0.1", 2024897, "ET USER_AGENTS Go HTTP Client User-Agent"),  # same µs as 4
    k8s(1, at(3), "alice", "delete", "secrets"),
    k8s(2, at(3, 1), "bob", "get", "pods"),
    k8s(3, at(27), "alice", "create", "jobs"),
    auditd(
        1,
        at(4),
        "node-01",
        ["SYSCALL", "EXECVE", "CWD"],
        "type=EXECVE msg=audit(1795478400.000:11): a0=/bin/ls",
    ),
    auditd(2, at(28), "node-02", ["USER_LOGIN"], "type=USER_LOGIN msg=audit(1795568400.000:12): res=failed"),
    falco(1, at(5), "Terminal shell in container", "bash"),
    falco(2, at(29), "Read sensitive file untrusted", "cat"),
    falco(3, at(30), "Terminal shell in container", "zsh"),
]


@pytest.fixture(scope="module")
def osmem() -> Iterator[Any]:
    """osmem-server (an OpenSearch-compatible server from PyPI), started for this module; each test that
    writes takes a clone of it."""
    try:
        from osmem_server import OsmemServer

        server = OsmemServer.start(japanese=False)
    except Exception as exc:  # not installed, no binary for this platform, or it did not start
        unavailable(f"osmem-server could not start: {exc!r}")
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "opensearch"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    """An empty store: a SQLite file, or a fresh clone of the osmem-server cluster."""
    if request.param == "sqlite":
        sqlite = SqliteEventStore(tmp_path / "events.db")
        yield sqlite
        sqlite.close()
        return
    clone = request.getfixturevalue("osmem").clone()
    opensearch = OpenSearchEventStore([clone.url], refresh=True)
    yield opensearch
    opensearch.close()
    clone.close()


@pytest.fixture
def loaded(store: EventStore) -> EventStore:
    assert store.write(CORPUS) == len(CORPUS)
    return store


def ids(store: EventStore, **query: Any) -> list[str]:
    page = store.search(EventQuery(**{"start": ALL.start, "end": ALL.end, "size": 1000, **query}))
    return sorted(hit.doc["event"]["id"] for hit in page.hits)


def test_the_same_documents_twice_are_stored_once(store: EventStore) -> None:
    assert store.write(CORPUS) == len(CORPUS)
    assert store.write(CORPUS) == 0
    repeat_and_new = [*CORPUS[:3], falco(9, at(31), "Write below etc", "vi")]
    assert store.write(repeat_and_new) == 1
    assert store.write([falco(10, at(31), "x", "y"), falco(10, at(31), "x", "y")]) == 1  # twice in one batch
    assert store.aggregate(ALL, {})["count"] == len(CORPUS) + 2


def test_a_document_comes_back_as_it_was_written(loaded: EventStore) -> None:
    page = loaded.search(EventQuery(start=ALL.start, end=ALL.end, filters={"event.id": ["falco:1"]}))
    assert [hit.doc for hit in page.hits] == [CORPUS[10]]
    assert page.hits[0].sort == [CORPUS[10]["@timestamp"], "falco:1"]


def test_the_time_range_includes_its_start_and_excludes_its_end(loaded: EventStore) -> None:
    # suricata:1 is at 01:00:00.000000, suricata:2 five microseconds later.
    assert ids(loaded, start=at(1), end=at(1, 5)) == ["suricata.eve:1"]
    assert ids(loaded, start=at(1, 1), end=at(1, 6)) == ["suricata.eve:2"]
    assert ids(loaded, start=at(26), end=at(27)) == ["suricata.eve:4", "suricata.eve:5"]
    assert ids(loaded, start=at(30), end=at(30)) == []


def test_datasets_are_included_and_excluded(loaded: EventStore) -> None:
    assert ids(loaded, datasets=["falco"]) == ["falco:1", "falco:2", "falco:3"]
    assert len(ids(loaded, datasets=["falco", "auditd.log"])) == 5
    assert len(ids(loaded, exclude_datasets=["suricata.eve", "kubernetes.audit"])) == 5
    assert ids(loaded, datasets=["falco"], exclude_datasets=["falco"]) == []
    assert ids(loaded, filters={"event.dataset": ["auditd.log"]}) == ["auditd.log:1", "auditd.log:2"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"source.ip": ["10.0.0.1"]}, ["suricata.eve:1", "suricata.eve:2", "suricata.eve:5"]),
        ({"source.ip": ["10.0.0.2", "10.0.0.3"]}, ["suricata.eve:3", "suricata.eve:4"]),
        ({"source.ip": ["10.0.0.1"], "event.action": ["alert"], "source.port": [40005]}, ["suricata.eve:5"]),
        ({"user.name": ["alice"], "event.action": ["delete"]}, ["kubernetes.audit:1"]),
        (
            {"event.category": ["configuration"]},
            ["kubernetes.audit:1", "kubernetes.audit:2", "kubernetes.audit:3"],
        ),
        ({"suricata.eve.alert.signature_id": [2010935]}, ["suricata.eve:3"]),
        ({"suricata.eve.alert.signature_id": ["2024897"]}, ["suricata.eve:5"]),  # a string matches a number
        (
            {"kubernetes.audit.objectRef.resource": ["secrets", "jobs"]},
            ["kubernetes.audit:1", "kubernetes.audit:3"],
        ),
        ({"auditd.records.type": ["CWD"]}, ["auditd.log:1"]),  # inside a list of objects
        ({"falco.output_fields.proc.name": ["zsh"]}, ["falco:3"]),  # a key with a dot in it
        ({"falco.rule": ["terminal shell in container"]}, []),  # exact values: case matters
        ({"source.ip": ["not-an-ip"]}, []),
        ({"user.name": []}, []),
    ],
)
def test_filters_match_exact_values_of_promoted_and_native_fields(
    loaded: EventStore, filters: dict[str, list[Any]], expected: list[str]
) -> None:
    assert ids(loaded, filters=filters) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nmap", ["suricata.eve:1", "suricata.eve:2", "suricata.eve:4"]),
        ("NMAP user-agent", ["suricata.eve:1", "suricata.eve:2", "suricata.eve:4"]),
        ("terminal zsh", ["falco:3"]),  # one word in event.original, the other in message
        ('"terminal shell"', ["falco:1", "falco:3"]),
        ('"shell terminal"', []),  # a phrase keeps its order
        ("res failed", ["auditd.log:2"]),
        ("nmap mssql", []),  # every word must occur
        ("nma", []),  # whole words only
        ("!!", [f"{doc['event']['id']}" for doc in CORPUS]),  # nothing searchable: no text condition
    ],
)
def test_free_text_needs_every_word_or_phrase(loaded: EventStore, text: str, expected: list[str]) -> None:
    assert ids(loaded, text=text) == sorted(expected)


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_search_after_pages_visit_every_hit_once_in_time_order(loaded: EventStore, order: str) -> None:
    seen: list[dict[str, Any]] = []
    after = None
    while True:
        page = loaded.search(
            EventQuery(start=ALL.start, end=ALL.end, sort=order, size=4, search_after=after)  # type: ignore[arg-type]
        )
        assert page.total == len(CORPUS)
        if not page.hits:
            break
        seen += [hit.doc for hit in page.hits]
        after = page.hits[-1].sort
    assert sorted(doc["event"]["id"] for doc in seen) == sorted(doc["event"]["id"] for doc in CORPUS)
    times = [doc["@timestamp"] for doc in seen]
    assert times == sorted(times, reverse=order == "desc")


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_paging_one_by_one_through_events_of_the_same_microsecond(store: EventStore, order: str) -> None:
    moment = at(7, 42)
    docs = [falco(1, moment, "a", "b"), falco(2, moment, "a", "b"), k8s(1, moment, "alice", "get", "pods")]
    docs += [k8s(2, moment, "bob", "get", "pods"), auditd(1, moment, "node-01", ["CWD"], "cwd")]
    store.write(docs[:2])
    store.write(docs[2:])
    seen = []
    after = None
    for _ in range(len(docs) + 1):
        page = store.search(
            EventQuery(start=at(0), end=at(48), sort=order, size=1, search_after=after)  # type: ignore[arg-type]
        )
        if not page.hits:
            break
        seen.append(page.hits[0].doc["event"]["id"])
        after = page.hits[0].sort
    assert sorted(seen) == sorted(doc["event"]["id"] for doc in docs)


def test_a_filtered_text_search_pages_and_counts(loaded: EventStore) -> None:
    query = EventQuery(start=ALL.start, end=ALL.end, datasets=["suricata.eve"], text="user-agent", size=2)
    first = loaded.search(query)
    second = loaded.search(dataclasses.replace(query, search_after=first.hits[-1].sort))
    assert first.total == second.total == 4
    got = [hit.doc["event"]["id"] for hit in first.hits + second.hits]
    assert got == ["suricata.eve:5", "suricata.eve:4", "suricata.eve:2", "suricata.eve:1"] or got == [
        "suricata.eve:4",
        "suricata.eve:5",
        "suricata.eve:2",
        "suricata.eve:1",
    ]  # 4 and 5 share their microsecond: either order is a valid tie-break


def test_terms_aggregation_orders_by_count_then_key_and_keeps_size(loaded: EventStore) -> None:
    result = loaded.aggregate(
        ALL,
        {
            "sources": TermsAgg("source.ip", size=2),
            "datasets": TermsAgg("event.dataset"),
            "categories": TermsAgg("event.category", size=3),
        },
    )
    assert result["count"] == len(CORPUS)
    assert result["sources"] == [{"key": "10.0.0.1", "count": 3}, {"key": "10.244.1.7", "count": 3}]
    assert result["datasets"] == [
        {"key": "suricata.eve", "count": 5},
        {"key": "falco", "count": 3},
        {"key": "kubernetes.audit", "count": 3},
        {"key": "auditd.log", "count": 2},
    ]
    assert result["categories"] == [
        {"key": "intrusion_detection", "count": 5},
        {"key": "network", "count": 5},
        {"key": "process", "count": 5},
    ]


def test_date_histogram_buckets_are_ascending_and_skip_empty_ones(loaded: EventStore) -> None:
    query = EventQuery(start=at(0), end=at(6), filters={"event.category": ["network", "configuration"]})
    result = loaded.aggregate(
        query, {"per_hour": DateHistogramAgg(3600), "per_day": DateHistogramAgg(86_400)}
    )
    assert result["per_hour"] == [
        {"key": "2026-11-24T01:00:00.000000Z", "count": 2},
        {"key": "2026-11-24T02:00:00.000000Z", "count": 1},
        {"key": "2026-11-24T03:00:00.000000Z", "count": 2},
    ]
    assert result["per_day"] == [{"key": "2026-11-24T00:00:00.000000Z", "count": 5}]


def test_count_follows_filters_and_text(loaded: EventStore) -> None:
    query = EventQuery(start=at(0), end=at(48), text="shell", datasets=["falco"])
    assert loaded.aggregate(query, {"hosts": TermsAgg("host.name")}) == {
        "count": 2,
        "hosts": [{"key": "node-02", "count": 2}],
    }
    assert loaded.aggregate(EventQuery(start=at(40), end=at(41)), {"h": DateHistogramAgg(60)}) == {
        "count": 0,
        "h": [],
    }


def test_retention_drops_one_datasets_old_events_only(loaded: EventStore) -> None:
    # falco: 1 on day 1, 2 and 3 on day 2 at 05:00 and 06:00; the cutoff falls between them.
    assert loaded.drop_before("falco", at(29, 30 * 60 * 1_000_000)) == 2
    assert ids(loaded, datasets=["falco"]) == ["falco:3"]
    assert ids(loaded, text="shell") == ["falco:3"]
    assert len(ids(loaded)) == len(CORPUS) - 2
    assert loaded.drop_before("falco", at(0)) == 0
    assert loaded.drop_before("keycloak", at(100)) == 0
    assert loaded.write(CORPUS[10:]) == 2  # forgotten events can be stored again


def test_thousands_of_native_keys_do_not_break_the_store(store: EventStore) -> None:
    wide = suricata(100, at(10), "10.9.9.9", 1, "wide")
    wide["suricata"]["eve"]["metadata"] = {f"sensor_field_{n}": n for n in range(3000)}
    wider = suricata(101, at(11), "10.9.9.9", 1, "wide")
    wider["suricata"]["eve"]["metadata"] = {f"other_field_{n}": str(n) for n in range(3000)}
    unknown = event("acme.widget", 1, at(12), acme={f"k{n}": {"v": n} for n in range(3000)})
    assert store.write([wide, wider, unknown]) == 3
    assert ids(store, filters={"source.ip": ["10.9.9.9"]}) == ["suricata.eve:100", "suricata.eve:101"]
    assert ids(store, filters={"suricata.eve.metadata.other_field_7": ["7"]}) == ["suricata.eve:101"]
    assert ids(store, datasets=["acme.widget"]) == ["acme.widget:1"]
    assert store.write([suricata(102, at(12), "10.9.9.8", 2, "next")]) == 1


def test_invalid_documents_are_refused_before_anything_is_stored(store: EventStore) -> None:
    no_id = falco(1, at(1), "x", "y")
    del no_id["event"]["id"]
    with pytest.raises(ValueError, match=r"event\.id"):
        store.write([falco(2, at(1), "x", "y"), no_id])
    with pytest.raises(ValueError, match="dataset"):
        store.write([event("Bad-Dataset", 1, at(1))])
    assert store.aggregate(ALL, {})["count"] == 0


# -- SQLite only: what the embedded store does beyond the shared contract -----------------------------------


def test_sqlite_reads_a_promoted_field_that_once_held_a_list_from_the_json(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "events.db")
    odd = k8s(9, at(3, 7), "carol", "get", "pods")
    odd["user"]["name"] = ["carol", "system:admin"]
    assert store.write([*CORPUS, odd]) == len(CORPUS) + 1
    assert ids(store, filters={"user.name": ["system:admin"]}) == ["kubernetes.audit:9"]
    assert ids(store, filters={"user.name": ["bob"]}) == ["kubernetes.audit:2"]
    names = store.aggregate(ALL, {"users": TermsAgg("user.name")})["users"]
    assert names == [
        {"key": "alice", "count": 2},
        {"key": "bob", "count": 1},
        {"key": "carol", "count": 1},
        {"key": "system:admin", "count": 1},
    ]
    store.close()


def test_sqlite_same_microsecond_events_across_batches_keep_distinct_keys(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "events.db")
    same = [falco(n, at(5), "Terminal shell in container", "bash") for n in range(20, 25)]
    for doc in same:
        assert store.write([doc]) == 1
    assert store.drop_before("falco", at(5, 1)) == 5
    assert store.write([falco(30, at(5), "Read sensitive file untrusted", "cat")]) == 1
    assert ids(store, text="terminal") == []  # the dropped events' text went with them
    store.close()


def test_open_store_builds_the_configured_backend(tmp_path: Path) -> None:
    sqlite = open_store("sqlite", path=tmp_path / "events.db")
    assert isinstance(sqlite, SqliteEventStore)
    sqlite.check()
    sqlite.close()
    opensearch = open_store("opensearch", hosts=["http://127.0.0.1:9"], index_prefix="ops-events")
    assert isinstance(opensearch, OpenSearchEventStore)
    assert opensearch.prefix == "ops-events"
    opensearch.close()
    with pytest.raises(ValueError, match="unknown"):
        open_store("elasticsearch")


# -- OpenSearch only: index template, ISM policy, bulk retries ------------------------------------------------


def test_the_index_template_maps_native_namespaces_as_flat_objects() -> None:
    mapping = index_template("refsys-events")["template"]["mappings"]
    for namespace in NATIVE_NAMESPACES:
        assert mapping["properties"][namespace] == {"type": "flat_object"}
    assert mapping["properties"]["@timestamp"] == {"type": "date_nanos"}
    assert mapping["properties"]["source"]["properties"]["ip"] == {"type": "ip"}
    assert mapping["dynamic_templates"][0]["unknown_namespaces"]["mapping"] == {
        "type": "object",
        "dynamic": False,
    }


def test_the_shipped_ism_policy_is_well_formed() -> None:
    policy = ism_policy("refsys-events", retention_days=30)["policy"]
    names = [state["name"] for state in policy["states"]]
    assert policy["default_state"] in names
    for state in policy["states"]:
        for transition in state["transitions"]:
            assert transition["state_name"] in names
            assert set(transition["conditions"]) == {"min_index_age"}
    assert {"delete": {}} in policy["states"][-1]["actions"]
    delete_after = [
        t["conditions"]["min_index_age"]
        for s in policy["states"]
        for t in s["transitions"]
        if t["state_name"] == "delete"
    ]
    assert delete_after == ["30d"]
    assert policy["ism_template"] == [{"index_patterns": ["refsys-events-*"], "priority": 100}]


def test_a_cluster_without_ism_still_takes_writes(osmem: Any, caplog: pytest.LogCaptureFixture) -> None:
    with osmem.clone() as clone:
        store = OpenSearchEventStore([clone.url], refresh=True, index_prefix="noism")
        with caplog.at_level(logging.WARNING, logger="security.store.opensearch_store"):
            assert store.write(CORPUS[:2]) == 2
        assert "ISM policy not installed" in caplog.text
        store.check()
        store.close()


def test_an_existing_ism_policy_is_updated_with_its_sequence_number() -> None:
    calls: list[tuple[str, str, dict[str, Any] | None]] = []

    def perform_request(method: str, path: str, body: Any = None, params: Any = None) -> dict[str, Any]:
        calls.append((method, path, params))
        if method == "PUT" and params is None:
            raise ConflictError(409, "version_conflict_engine_exception", {})
        return {"_seq_no": 7, "_primary_term": 2}

    store = OpenSearchEventStore(["http://127.0.0.1:9"], retention_days=30)
    store._client.transport.perform_request = perform_request  # type: ignore[assignment]
    store._install_ism_policy()
    path = "/_plugins/_ism/policies/refsys-events-retention"
    assert calls == [
        ("PUT", path, None),
        ("GET", path, None),
        ("PUT", path, {"if_seq_no": 7, "if_primary_term": 2}),
    ]


class FakeBulk:
    """Answers bulk requests from a script: an exception, or per-item statuses."""

    def __init__(self, *answers: Exception | list[int]) -> None:
        self.answers = list(answers)
        self.requests: list[list[str]] = []

    def __call__(self, body: str, **_: Any) -> dict[str, Any]:
        lines = [json.loads(line) for line in body.splitlines()]
        ids = [line["create"]["_id"] for line in lines if "create" in line]
        self.requests.append(ids)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return {
            "items": [
                {"create": {"_id": i, "status": s, "error": {"type": f"e{s}"}}}
                for i, s in zip(ids, answer, strict=True)
            ]
        }


def retrying_store(bulk: FakeBulk, waits: list[float]) -> OpenSearchEventStore:
    """A store whose bulk requests get ``bulk``'s answers (nothing is sent anywhere)."""
    store = OpenSearchEventStore(["http://127.0.0.1:9"], backoffs_s=(0.5, 1.0, 2.0), sleep=waits.append)
    store._ready = True  # the template is not what this test is about
    store._client.bulk = bulk
    return store


def test_bulk_retries_429_and_503_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    docs = CORPUS[:3]
    bulk = FakeBulk(TransportError(503, "unavailable", {}), [201, 429, 409], [201])
    waits: list[float] = []
    with caplog.at_level(logging.WARNING, logger="security.store.opensearch_store"):
        assert retrying_store(bulk, waits).write(docs) == 2
    assert bulk.requests == [["suricata.eve:1", "suricata.eve:2", "suricata.eve:3"]] * 2 + [
        ["suricata.eve:2"]
    ]
    assert waits == [0.5, 1.0]
    assert "bulk attempt #1/4 failed; will retry in 0.5 s: request failed with 503" in caplog.text
    assert "bulk attempt #2/4 failed; will retry in 1.0 s: 1 items refused with 429/503" in caplog.text


def test_bulk_gives_up_after_the_last_backoff_and_says_what_was_not_stored() -> None:
    bulk = FakeBulk([201, 429], [429], [429], [429])
    waits: list[float] = []
    with pytest.raises(BulkWriteError) as failure:
        retrying_store(bulk, waits).write(CORPUS[:2])
    assert failure.value.stored == 1
    assert failure.value.failures == [("suricata.eve:2", "1 items refused with 429/503")]
    assert waits == [0.5, 1.0, 2.0]


def test_bulk_reports_item_errors_after_storing_the_rest() -> None:
    bulk = FakeBulk([201, 400, 201])
    with pytest.raises(BulkWriteError, match=r"suricata\.eve:2") as failure:
        retrying_store(bulk, []).write(CORPUS[:3])
    assert failure.value.stored == 2
