"""The intake through HTTP on the real app: counts and dead letters, idempotency, server-side stamping,
reserved datasets, source health and silence, and who may search what."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from control_plane.core import clock
from control_plane.core.auth.machine_keys import MachineKeyStore
from control_plane.core.auth.roles import Role
from control_plane.core.services import Services
from security.intake.tables import source_health
from security.telemetry import Telemetry
from tests.apps import bearer, make_settings, running_app

SURICATA = (
    b'{"timestamp":"2026-11-25T10:00:00.000000+0000","flow_id":1,"event_type":"alert","src_ip":"10.0.0.5",'
    b'"src_port":4444,"dest_ip":"10.0.0.9","dest_port":22,"proto":"TCP","alert":{"action":"allowed","gid":1,'
    b'"signature_id":2001219,"rev":1,"signature":"ET SCAN SSH","category":"Attempted Recon","severity":2}}\n'
    b'{"timestamp": broken\n'
    b'{"timestamp":"2026-11-25T10:00:01.000000+0000","flow_id":2,"event_type":"flow","src_ip":"10.0.0.5",'
    b'"src_port":4445,"dest_ip":"10.0.0.9","dest_port":80,"proto":"TCP","flow":{"pkts_toserver":3}}\n'
)
SSHD = b"Nov 25 10:00:00 bastion sshd[811]: Failed password for root from 203.0.113.7 port 5022 ssh2\n"


@pytest.fixture
def app(tmp_path: Path, db_url: str) -> Iterator[tuple[TestClient, Services]]:
    with running_app(make_settings(tmp_path, db_url, telemetry={"max_past_skew_s": None})) as pair:
        yield pair


def _key(services: Services, name: str = "sensor-1") -> dict[str, str]:
    key = MachineKeyStore(services.engine).create(name=name, role=Role.INGEST, created_by="test").key
    return {"Authorization": f"Bearer {key}"}


def _telemetry(client: TestClient) -> Telemetry:
    telemetry: Telemetry = client.app.state.telemetry  # type: ignore[attr-defined]
    return telemetry


def _search(client: TestClient, services: Services, role: Role = Role.SECURITY_OFFICER, **query: Any) -> Any:
    """Search once everything published is stored (polls the indexer's backlog, never sleeps blindly)."""
    deadline = time.monotonic() + 30
    while _telemetry(client).bus.backlog("telemetry", "store") and time.monotonic() < deadline:
        time.sleep(0.05)
    body = {"start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z", **query}
    return client.post("/api/v1/events/search", json=body, headers=bearer(services, role))


def test_a_batch_is_counted_stored_and_its_bad_line_dead_lettered(app: tuple[TestClient, Services]) -> None:
    client, services = app
    response = client.post("/api/v1/ingest/suricata", content=SURICATA, headers=_key(services))
    assert response.status_code == 202, response.text
    summary = response.json()
    assert (summary["lines"], summary["accepted"], summary["rejected"]) == (3, 2, 1)
    assert summary["rejections"][0]["line"] == 2 and summary["rejections"][0]["reason"].startswith(
        "invalid JSON"
    )
    letters = client.get(
        "/api/v1/ingest/dead-letters", headers=bearer(services, Role.SECURITY_OFFICER)
    ).json()
    (letter,) = letters["items"]
    assert (letter["source"], letter["line_number"], letter["raw"]) == ("suricata", 2, '{"timestamp": broken')
    assert letter["observer"] == "key:sensor-1"
    found = _search(client, services, datasets=["suricata.eve"]).json()
    assert found["total"] == 2
    alert = next(hit["event"] for hit in found["hits"] if hit["event"]["event"]["kind"] == "alert")
    assert alert["observer"] == {"name": "key:sensor-1", "product": "suricata"}
    assert alert["event"]["dataset"] == "suricata.eve" and alert["event"]["ingested"]


def test_gzip_bodies_and_unknown_sources(app: tuple[TestClient, Services]) -> None:
    client, services = app
    headers = {**_key(services), "Content-Encoding": "gzip"}
    assert (
        client.post("/api/v1/ingest/syslog", content=gzip.compress(SSHD), headers=headers).json()["accepted"]
        == 1
    )
    unknown = client.post("/api/v1/ingest/snort", content=b"{}", headers=_key(services, "sensor-2"))
    assert unknown.status_code == 404 and "known sources" in unknown.json()["detail"]
    bad = client.post(
        "/api/v1/ingest/syslog", content=b"not gzip", headers={**headers, "Content-Encoding": "gzip"}
    )
    assert bad.status_code == 400


def test_the_same_file_twice_is_stored_once_but_repeated_lines_stay_two(
    app: tuple[TestClient, Services],
) -> None:
    client, services = app
    headers = {**_key(services), "Refsys-File-Slice": f"{'ab' * 16}@0"}
    for _ in range(2):
        assert (
            client.post("/api/v1/ingest/syslog", content=SSHD + SSHD, headers=headers).json()["accepted"] == 2
        )
    retried = {**_key(services, "sensor-2"), "Idempotency-Key": "batch-7"}
    for _ in range(2):
        client.post("/api/v1/ingest/suricata", content=SURICATA, headers=retried)
    assert _search(client, services, datasets=["syslog.messages"]).json()["total"] == 2
    assert _search(client, services, datasets=["suricata.eve"]).json()["total"] == 2


def test_senders_cannot_write_reserved_or_other_sources_datasets(app: tuple[TestClient, Services]) -> None:
    client, services = app
    docs = (
        b'{"@timestamp":"2026-11-25T10:00:00Z","event":{"dataset":"refsys.audit","action":"token.issue"}}\n'
        b'{"@timestamp":"2026-11-25T10:00:00Z","event":{"dataset":"suricata.eve","kind":"alert"}}\n'
        b'{"@timestamp":"2026-11-25T10:00:00Z","event":{"dataset":"app.orders","action":"x"}}\n'
    )
    summary = client.post("/api/v1/ingest/ecs", content=docs, headers=_key(services)).json()
    assert summary["accepted"] == 1
    reasons = [item["reason"] for item in summary["rejections"]]
    assert any("reserved" in reason for reason in reasons) and any(
        "another source" in reason for reason in reasons
    )
    assert _search(client, services, datasets=["app.orders"]).json()["total"] == 1


def test_a_forged_future_timestamp_is_clamped(app: tuple[TestClient, Services]) -> None:
    client, services = app
    line = b'{"@timestamp":"2035-01-01T00:00:00Z","event":{"dataset":"app.orders","action":"x"}}\n'
    assert client.post("/api/v1/ingest/ecs", content=line, headers=_key(services)).json()["clamped"] == 1
    (hit,) = _search(client, services, datasets=["app.orders"]).json()["hits"]
    assert clock.parse_rfc3339(hit["event"]["refsys"]["claimed_timestamp"]).year == 2035
    assert clock.parse_rfc3339(hit["event"]["@timestamp"]) < clock.utcnow() + timedelta(minutes=6)


def test_source_health_and_silence(app: tuple[TestClient, Services]) -> None:
    client, services = app
    headers = {**_key(services, "falco-node-1"), "Refsys-Heartbeat": "60"}
    line = b'{"time":"2026-11-25T10:00:00.000000000Z","rule":"Terminal shell in container","priority":"Notice","output":"x","output_fields":{}}'
    assert client.post("/api/v1/ingest/falco", content=line, headers=headers).status_code == 202
    telemetry = _telemetry(client)
    telemetry.upkeep()
    officer = bearer(services, Role.SECURITY_OFFICER)
    (source,) = client.get("/api/v1/ingest/sources", headers=officer).json()["items"]
    assert (source["source"], source["observer"], source["accepted"], source["status"]) == (
        "falco",
        "key:falco-node-1",
        1,
        "ok",
    )
    assert source["expected_heartbeat_s"] == 60 and source["events_per_s"] > 0
    # Two minutes of silence, as the shared table would show it.
    with services.engine.begin() as connection:
        connection.execute(source_health.update().values(last_seen=clock.utcnow() - timedelta(minutes=2)))
    telemetry.upkeep()
    (silent,) = client.get("/api/v1/ingest/sources", headers=officer).json()["items"]
    assert silent["status"] == "silent"
    events = _search(client, services, datasets=["refsys.health"]).json()["hits"]
    assert [hit["event"]["event"]["action"] for hit in events] == ["source-silent"]
    assert events[0]["event"]["refsys"]["source"]["name"] == "falco"
    telemetry.upkeep()  # still silent: no second event
    assert _search(client, services, datasets=["refsys.health"]).json()["total"] == 1
    metrics = client.get("/metrics", headers=bearer(services, Role.METRICS)).text
    assert 'refsys_source_silent{observer="key:falco-node-1",source="falco"} 1.0' in metrics
    assert (
        'refsys_ingest_events_total{observer="key:falco-node-1",outcome="accepted",source="falco"} 1.0'
        in metrics
    )


def test_audit_records_are_searchable_by_auditors_only(app: tuple[TestClient, Services]) -> None:
    client, services = app
    client.get("/api/v1/audit", headers={"Authorization": "Bearer junk"})  # a refusal: one audit record
    _telemetry(client).upkeep()
    audit = _search(client, services, Role.AUDITOR)
    assert audit.status_code == 200
    assert {hit["event"]["event"]["dataset"] for hit in audit.json()["hits"]} == {"refsys.audit"}
    assert _search(client, services, Role.SECURITY_OFFICER, datasets=["refsys.audit"]).json()["total"] == 0
    assert _search(client, services, Role.AUDITOR, datasets=["syslog.messages"]).status_code == 403
    assert _search(client, services, Role.ADMIN, datasets=["refsys.audit"]).json()["total"] >= 1


def test_search_validates_its_query(app: tuple[TestClient, Services]) -> None:
    client, services = app
    officer = bearer(services, Role.SECURITY_OFFICER)
    backwards = {"start": "2026-11-25T00:00:00Z", "end": "2026-11-24T00:00:00Z"}
    assert client.post("/api/v1/events/search", json=backwards, headers=officer).status_code == 422
    both = {"start": "2026-11-24T00:00:00Z", "end": "2026-11-25T00:00:00Z",
            "aggregations": {"x": {"terms": {"field": "source.ip"}, "date_histogram": {"interval_s": 60}}}}  # fmt: skip
    assert client.post("/api/v1/events/search", json=both, headers=officer).status_code == 422


def test_dead_letters_and_health_survive_in_the_state_database(app: tuple[TestClient, Services]) -> None:
    client, services = app
    client.post("/api/v1/ingest/suricata", content=SURICATA, headers=_key(services))
    _telemetry(client).upkeep()
    with services.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM dead_letters")).scalar_one() == 1
        assert connection.execute(sa.text("SELECT accepted FROM source_health")).scalar_one() == 2


def test_the_access_log_becomes_searchable_events(app: tuple[TestClient, Services]) -> None:
    client, services = app
    client.get("/healthz", headers={"X-Request-ID": "trace-42"})
    _telemetry(client).upkeep()
    hits = _search(
        client, services, datasets=["refsys.access"], filters={"refsys.access.route": ["/healthz"]}
    ).json()["hits"]
    assert hits, "the /healthz request was not shipped"
    event = hits[0]["event"]
    assert event["http"]["response"]["status_code"] == 200
    assert event["event"]["id"] != "trace-42" and event["refsys"]["access"]["client_request_id"] == "trace-42"


def test_enrichment_adds_context_and_its_failure_loses_nothing(app: tuple[TestClient, Services]) -> None:
    client, services = app
    calls: list[str] = []

    def enrich(doc: dict[str, Any]) -> None:
        calls.append(doc["event"]["kind"])
        if doc["event"]["kind"] == "alert":
            raise RuntimeError("inventory unreachable")
        doc.setdefault("host", {})["name"] = "edge-sensor"

    _telemetry(client).intake.enrichers["suricata"] = enrich
    assert (
        client.post("/api/v1/ingest/suricata", content=SURICATA, headers=_key(services)).json()["accepted"]
        == 2
    )
    events = {
        hit["event"]["event"]["kind"]: hit["event"]
        for hit in _search(client, services, datasets=["suricata.eve"]).json()["hits"]
    }
    assert sorted(calls) == ["alert", "event"]
    assert events["event"]["host"]["name"] == "edge-sensor" and "host" not in events["alert"]
    metrics = client.get("/metrics", headers=bearer(services, Role.METRICS)).text
    assert 'refsys_ingest_enrichment_failures_total{source="suricata"} 1.0' in metrics


def test_a_full_spool_answers_429_with_retry_after(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, telemetry={"max_backlog_events": 1000})
    with running_app(settings) as (client, services):
        telemetry = _telemetry(client)
        telemetry.indexer.stop()  # the store stops keeping up
        headers = _key(services)
        flood = b"".join(SSHD for _ in range(1001))
        assert client.post("/api/v1/ingest/syslog", content=flood, headers=headers).status_code == 202
        refused = client.post("/api/v1/ingest/syslog", content=SSHD, headers=headers)
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        with services.engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM dead_letters")).scalar_one() == 0
