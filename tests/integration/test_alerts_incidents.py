"""Alerts and incidents on SQLite and real PostgreSQL: the sink is idempotent by alert id, folds duplicates (same
rule and group key within the suppression window) into a count, groups alerts sharing a host, user or source
address into incidents whose severity and techniques follow their alerts; officers work incidents through the
API (transitions, assignee, resolution, comments), every change audited; the bus consumer feeds the same sink."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.core.audit.trail import AuditFilter
from control_plane.core.auth.roles import Role
from control_plane.core.bus import topics
from control_plane.core.services import Services
from security.alerts.manager import IncidentManager
from security.alerts.model import Alert, AlertEvent, AlertRule
from tests.apps import bearer, make_settings, running_app
from tests.integration.production_harness import wait_for

pytestmark = pytest.mark.timeout(240)

ATTACKER = "203.0.113.7"


def alert(
    alert_id: str,
    at: str,
    *,
    rule: str = "r-login-failure",
    level: str = "medium",
    tags: tuple[str, ...] = ("attack.credential_access", "attack.t1110"),
    entities: dict[str, list[str]] | None = None,
    kind: str = "rule",
    group: dict[str, Any] | None = None,
    suppression: dict[str, Any] | None = None,
    fields: dict[str, Any] | None = None,
) -> Alert:
    """An alert at minute-of-day ``at`` (``HH:MM``) on 2026-11-25."""
    moment = f"2026-11-25T{at}:00.000000Z"
    return Alert(
        id=alert_id,
        kind=kind,  # type: ignore[arg-type]
        rule=AlertRule(id=rule, title=f"rule {rule}", level=level, tags=tags, suppression=suppression or {}),
        first=moment,
        last=moment,
        detected_at=moment,
        events=(AlertEvent(id=f"ev-{alert_id}", timestamp=moment, dataset="keycloak", fields=fields or {}),),
        group=group or {},
        entities={"source_ip": [ATTACKER]} if entities is None else entities,
    )


@pytest.fixture
def app(tmp_path: Path, db_url: str) -> Iterator[tuple[TestClient, Services]]:
    with running_app(make_settings(tmp_path, db_url)) as running:
        yield running


def manager(client: TestClient) -> IncidentManager:
    found: IncidentManager = client.app.state.incidents  # type: ignore[attr-defined]
    return found


def officer(services: Services) -> dict[str, str]:
    return bearer(services, Role.SECURITY_OFFICER, subject="sofia")


def get(client: TestClient, services: Services, path: str, **params: Any) -> Any:
    response = client.get(path, params=params, headers=officer(services))
    assert response.status_code == 200, response.text
    return response.json()


def actions(services: Services, incident_id: str) -> list[tuple[str, str]]:
    records = services.audit.list(AuditFilter(target=incident_id), newest_first=False)
    return [(record["action"], record["outcome"]) for record in records]


def metric(services: Services, name: str) -> float:
    return services.metrics.registry.get_sample_value(name) or 0.0


def test_a_replayed_alert_changes_nothing(app: tuple[TestClient, Services]) -> None:
    client, services = app
    first, duplicate = alert("a-1", "10:00"), alert("a-2", "10:01")
    assert manager(client).handle([first, duplicate]).raised == 1

    replay = manager(client).handle([first, duplicate, first])
    assert (replay.replayed, replay.raised, replay.deduplicated) == (3, 0, 0)
    [item] = get(client, services, "/api/v1/alerts")["items"]
    assert (item["id"], item["count"]) == ("a-1", 2)
    [incident] = get(client, services, "/api/v1/incidents")["items"]
    assert incident["alert_count"] == 1
    assert actions(services, incident["id"]) == [("incident.create", "success")]
    assert metric(services, "refsys_alerts_raised_total") == 1
    assert metric(services, "refsys_alerts_deduplicated_total") == 1
    assert metric(services, "refsys_incidents_opened_total") == 1


def test_an_audit_failure_after_the_commit_loses_no_audit_record(
    app: tuple[TestClient, Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, services = app
    sink = manager(client).sink

    def broken(**_kwargs: Any) -> None:
        raise OSError("audit trail unreachable")

    monkeypatch.setattr(sink.audit, "append", broken)
    with pytest.raises(OSError):
        sink.handle([alert("o-1", "10:00")])  # the incident is committed, its audit record is not yet
    monkeypatch.undo()
    [incident] = get(client, services, "/api/v1/incidents")["items"]
    assert actions(services, incident["id"]) == []

    assert sink.handle([alert("o-1", "10:00")]).replayed == 1  # the redelivery flushes what was left
    assert actions(services, incident["id"]) == [("incident.create", "success")]
    assert sink.flush_audit() == 0


def test_duplicates_count_within_the_window_and_raise_a_new_alert_after_it(
    app: tuple[TestClient, Services],
) -> None:
    client, services = app
    summary = manager(client).handle(
        [
            alert("b-1", "10:00"),
            alert("b-2", "10:04"),  # same rule, same address, 240 s later: a duplicate
            alert("b-3", "10:02", entities={"source_ip": ["198.51.100.9"]}),  # another address: its own alert
            alert("b-4", "10:02", rule="r-other"),  # another rule: its own alert
            alert("b-5", "10:06"),  # 360 s after b-1, past the 300 s window: a new alert
        ]
    )
    assert (summary.raised, summary.deduplicated) == (4, 1)
    detail = get(client, services, "/api/v1/alerts/b-1")
    assert (detail["count"], detail["last"], detail["duplicates"]) == (2, "2026-11-25T10:04:00Z", ["b-2"])
    assert detail["suppressed_until"] == "2026-11-25T10:05:00Z"
    assert detail["events"][0]["id"] == "ev-b-1"
    assert get(client, services, "/api/v1/alerts/b-5")["count"] == 1


def test_a_rule_names_its_own_suppression_fields_and_window(app: tuple[TestClient, Services]) -> None:
    client, services = app
    by_user = {"fields": ["user.name"], "window": "10m"}

    def spray(alert_id: str, at: str, address: str, user: str) -> Alert:
        return alert(
            alert_id, at, rule="r-spray", suppression=by_user, entities={"source_ip": [address]},
            fields={"user.name": user},
        )  # fmt: skip

    summary = manager(client).handle(
        [
            spray("c-1", "10:00", "192.0.2.1", "alice"),
            spray("c-2", "10:08", "192.0.2.2", "alice"),  # other address, same user, inside 10 minutes
            spray("c-3", "10:01", "192.0.2.1", "bob"),  # same address, other user: not a duplicate
            spray("c-4", "10:11", "192.0.2.3", "alice"),  # 11 minutes after c-1
        ]
    )
    assert (summary.raised, summary.deduplicated) == (3, 1)
    assert get(client, services, "/api/v1/alerts/c-1")["duplicates"] == ["c-2"]


def test_alerts_sharing_an_entity_within_the_window_form_one_incident(
    app: tuple[TestClient, Services],
) -> None:
    client, services = app
    sink = manager(client)
    sink.handle([alert("d-1", "10:00", entities={"host": ["web-1"], "user": ["alice"]})])
    sink.handle(
        [
            alert("d-2", "10:20", rule="r-sudo", entities={"user": ["alice"], "host": ["db-1"]}),
            alert("d-3", "10:30", rule="r-scan", entities={"host": ["other"]}),
            alert("d-4", "12:30", rule="r-exec", entities={"host": ["web-1"]}),  # past the 1 h window
            alert("d-5", "10:40", rule="r-none", entities={}),  # no entity: nothing to group on
        ]
    )
    incident_of = {
        item["id"]: item["incident_id"] for item in get(client, services, "/api/v1/alerts")["items"]
    }
    assert incident_of["d-1"] == incident_of["d-2"]
    assert len({incident_of[name] for name in ("d-1", "d-3", "d-4", "d-5")}) == 4
    grouped = get(client, services, f"/api/v1/incidents/{incident_of['d-1']}")
    assert grouped["entities"] == {"host": ["db-1", "web-1"], "user": ["alice"]}
    assert [item["id"] for item in grouped["alerts"]] == ["d-1", "d-2"]
    assert (grouped["alert_count"], grouped["first"], grouped["last"]) == (
        2, "2026-11-25T10:00:00Z", "2026-11-25T10:20:00Z",
    )  # fmt: skip
    assert actions(services, grouped["id"]) == [
        ("incident.create", "success"),
        ("incident.alert-attached", "success"),
    ]
    only = get(client, services, "/api/v1/alerts", incident_id=grouped["id"])["items"]
    assert {item["id"] for item in only} == {"d-1", "d-2"}


def test_a_closed_incident_takes_no_new_alerts(app: tuple[TestClient, Services]) -> None:
    client, services = app
    manager(client).handle([alert("e-1", "10:00")])
    [incident] = get(client, services, "/api/v1/incidents")["items"]
    closed = client.patch(
        f"/api/v1/incidents/{incident['id']}",
        json={"status": "false_positive", "resolution": "pen test"},
        headers=officer(services),
    )
    assert closed.status_code == 200, closed.text
    manager(client).handle([alert("e-2", "10:10", rule="r-other")])
    assert get(client, services, "/api/v1/alerts/e-2")["incident_id"] != incident["id"]


def test_severity_follows_the_highest_alert_and_techniques_accumulate(
    app: tuple[TestClient, Services],
) -> None:
    client, services = app
    sink = manager(client)
    sink.handle([alert("f-1", "10:00", level="low")])
    sink.handle([alert("f-2", "10:01", rule="r-recon", level="medium", tags=("attack.t1046",))])
    correlation = alert(
        "f-3", "10:05", rule="c-brute-then-success", level="critical", kind="correlation",
        tags=("attack.t1110.001", "attack.t1078"), group={"source.ip": ATTACKER},
    )  # fmt: skip
    sink.handle([correlation])
    sink.handle([alert("f-4", "10:06", rule="r-info", level="urgent", tags=())])  # unknown: informational
    [incident] = get(client, services, "/api/v1/incidents")["items"]
    assert incident["severity"] == "critical"
    assert incident["techniques"] == ["T1046", "T1078", "T1110", "T1110.001"]
    assert incident["alert_count"] == 4
    records = services.audit.list(AuditFilter(target=incident["id"]), newest_first=False)
    raised = [record["details"].get("severity") for record in records[1:]]
    assert raised == [{"from": "low", "to": "medium"}, {"from": "medium", "to": "critical"}, None]
    assert get(client, services, "/api/v1/incidents", severity="critical")["items"][0]["id"] == incident["id"]
    levels = get(client, services, "/api/v1/alerts", min_level="medium")["items"]
    assert [item["id"] for item in levels] == ["f-3", "f-2"]
    assert get(client, services, "/api/v1/alerts/f-3")["kind"] == "correlation"
    assert get(client, services, "/api/v1/alerts/f-4")["level"] == "informational"


def test_officers_work_incidents_through_the_api_and_every_change_is_audited(
    app: tuple[TestClient, Services],
) -> None:
    client, services = app
    manager(client).handle([alert("g-1", "10:00"), alert("g-2", "10:00", entities={"host": ["h"]})])
    headers = officer(services)
    incident_id = get(client, services, "/api/v1/alerts/g-1")["incident_id"]
    path = f"/api/v1/incidents/{incident_id}"

    def patch(body: dict[str, Any]) -> Any:
        return client.patch(path, json=body, headers=headers)

    taken = patch({"status": "acknowledged", "assignee": "sofia"})
    assert taken.status_code == 200, taken.text
    assert (taken.json()["status"], taken.json()["assignee"]) == ("acknowledged", "sofia")
    assert patch({"status": "in_progress"}).status_code == 200
    unresolved = patch({"status": "resolved"})
    assert unresolved.status_code == 422
    assert unresolved.headers["content-type"] == "application/problem+json"
    assert "resolution" in unresolved.json()["detail"]
    assert patch({"status": "resolved", "resolution": "blocked at the firewall"}).status_code == 200
    backwards = patch({"status": "acknowledged"})
    assert backwards.status_code == 409
    assert backwards.json()["status"] == 409
    assert patch({"status": "new"}).status_code == 409
    assert patch({"priority": "p1"}).status_code == 422
    reopened = patch({"status": "in_progress", "assignee": None})
    assert reopened.status_code == 200
    assert (reopened.json()["resolution"], reopened.json()["assignee"]) == (None, None)
    assert patch({"status": "in_progress"}).status_code == 200  # no change, nothing audited

    note = client.post(f"{path}/comments", json={"body": "same address as last week"}, headers=headers)
    assert note.status_code == 201, note.text
    assert note.json()["author"] == "sofia"
    assert client.post(f"{path}/comments", json={"body": ""}, headers=headers).status_code == 422

    detail = get(client, services, path)
    assert [comment["body"] for comment in detail["comments"]] == ["same address as last week"]
    assert detail["status"] == "in_progress"
    assert get(client, services, "/api/v1/incidents", status="in_progress")["items"][0]["id"] == incident_id
    assert get(client, services, "/api/v1/incidents", assignee="sofia")["items"] == []

    records = services.audit.list(AuditFilter(target=incident_id), newest_first=False)
    assert [(r["action"], r["outcome"], r["actor"]) for r in records] == [
        ("incident.create", "success", "refsys:incidents"),
        ("incident.update", "success", "sofia"),
        ("incident.update", "success", "sofia"),
        ("incident.update", "failure", "sofia"),
        ("incident.update", "success", "sofia"),
        ("incident.update", "failure", "sofia"),
        ("incident.update", "failure", "sofia"),
        ("incident.update", "success", "sofia"),
        ("incident.comment", "success", "sofia"),
    ]
    assert records[1]["details"] == {
        "status": {"from": "new", "to": "acknowledged"},
        "assignee": {"from": None, "to": "sofia"},
    }
    assert records[7]["details"]["resolution"] == {"from": "blocked at the firewall", "to": None}
    assert records[8]["details"]["body"] == "same address as last week"
    assert records[1]["client"] is not None

    missing = client.patch("/api/v1/incidents/nope", json={"status": "acknowledged"}, headers=headers)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert client.get("/api/v1/alerts/nope", headers=headers).status_code == 404


def test_alert_pages_follow_the_cursor(app: tuple[TestClient, Services]) -> None:
    client, services = app
    manager(client).handle([alert(f"p-{n}", f"10:{n:02d}", entities={"host": [f"h{n}"]}) for n in range(5)])
    seen, cursor = [], None
    while True:
        page = get(client, services, "/api/v1/alerts", limit=2, **({"cursor": cursor} if cursor else {}))
        seen += [item["id"] for item in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == ["p-4", "p-3", "p-2", "p-1", "p-0"]
    window = get(
        client, services, "/api/v1/alerts", since="2026-11-25T10:01:00Z", until="2026-11-25T10:03:00Z"
    )
    assert [item["id"] for item in window["items"]] == ["p-2", "p-1"]
    assert len(get(client, services, "/api/v1/incidents", limit=3)["items"]) == 3


def test_only_security_officers_and_admins_see_alerts_and_work_incidents(
    app: tuple[TestClient, Services],
) -> None:
    client, services = app
    manager(client).handle([alert("h-1", "10:00")])
    incident_id = get(client, services, "/api/v1/alerts/h-1")["incident_id"]
    operator = bearer(services, Role.OPERATOR)
    admin = bearer(services, Role.ADMIN, subject="root")
    for method, path, body in (
        ("GET", "/api/v1/alerts", None),
        ("GET", "/api/v1/alerts/h-1", None),
        ("GET", "/api/v1/incidents", None),
        ("GET", f"/api/v1/incidents/{incident_id}", None),
        ("PATCH", f"/api/v1/incidents/{incident_id}", {"status": "acknowledged"}),
        ("POST", f"/api/v1/incidents/{incident_id}/comments", {"body": "x"}),
    ):
        anonymous = client.request(method, path, json=body)
        assert anonymous.status_code == 401, path
        assert anonymous.headers["content-type"] == "application/problem+json"
        assert client.request(method, path, json=body, headers=operator).status_code == 403, path
        assert client.request(method, path, json=body, headers=admin).status_code in (200, 201), path


def test_alerts_published_on_the_bus_become_alerts_and_incidents(app: tuple[TestClient, Services]) -> None:
    client, services = app
    services.bus.publish(topics.ALERTS, None, [{"not": "an alert"}])  # skipped, never blocks the rest
    timeless = alert("k-0", "10:00").to_record() | {"first": "yesterday"}
    services.bus.publish(topics.ALERTS, None, [timeless])  # cannot be stored: skipped too
    published = [alert("k-1", "10:00"), alert("k-2", "10:01"), alert("k-3", "10:02", rule="r-other")]
    services.bus.publish(topics.ALERTS, "r-login-failure", [item.to_record() for item in published])
    services.bus.publish(topics.ALERTS, "r-login-failure", [published[0].to_record()])  # redelivered

    def settled() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = get(client, services, "/api/v1/alerts")["items"]
        counted = {item["id"]: item["count"] for item in items}
        return items if counted == {"k-1": 2, "k-3": 1} else None

    items = wait_for(settled, "the consumer to store the published alerts", deadline_s=30)
    assert len({item["incident_id"] for item in items}) == 1

    def drained() -> bool:
        return services.bus.backlog(topics.ALERTS, "incidents") == 0

    wait_for(drained, "the incidents group to commit its offsets", deadline_s=30)
    [incident] = get(client, services, "/api/v1/incidents")["items"]
    assert incident["alert_count"] == 2
