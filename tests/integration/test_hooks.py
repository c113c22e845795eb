"""Alert hooks end to end: alerts published on the ``alerts`` topic reach signed webhooks (verified, replays
refused), flaky receivers are retried and delivered once, dead receivers are dead-lettered, listed and retried
through the API, routing follows level and tags; a real Alertmanager lists the alert with its labels; the bus
topic carries the notification; and acceptance 5: an attack ingested through the API becomes an alert and an
incident, and reaches the signed webhook and a real Alertmanager."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from control_plane.core import clock
from control_plane.core.audit.trail import AuditFilter
from control_plane.core.auth.roles import Role
from control_plane.core.bus import topics
from security.alerts.model import Alert, AlertEvent, AlertRule
from security.hooks import signature
from security.hooks.notifier import NOTIFIER_GROUP, Notifier
from tests.apps import bearer, make_settings, running_app
from tests.hook_receivers import Receiver
from tests.integration.production_harness import wait_for

pytestmark = pytest.mark.timeout(180)
SECRET = b"s3cret-hook-key"


def make_alert(alert_id: str, *, level: str, tags: tuple[str, ...] = (), host: str = "node-1") -> Alert:
    first = clock.utcnow() - timedelta(minutes=1)
    return Alert(
        id=alert_id,
        kind="rule",
        rule=AlertRule(
            id=f"rule-{alert_id}",
            title=f"Rule {alert_id}",
            level=level,
            tags=tags,
            description="why it matters",
        ),
        first=clock.rfc3339(first),
        last=clock.rfc3339(first),
        detected_at=clock.rfc3339(clock.utcnow()),
        events=(
            AlertEvent(
                id=f"ev-{alert_id}",
                timestamp=clock.rfc3339(first),
                dataset="keycloak.event",
                fields={"user.name": "mallory", "event.outcome": "failure"},
            ),
        ),
        entities={"host": [host], "user": ["mallory"]},
    )


def _webhook(receiver: Receiver, secret: Path, name: str, **options: Any) -> dict[str, Any]:
    return {"name": name, "url": f"{receiver.url}/{name}", "secret_file": str(secret), **options}


def test_webhooks_signed_retried_dead_lettered_and_retried_through_the_api(
    tmp_path: Path, db_url: str, receiver: Receiver
) -> None:
    secret = tmp_path / "hook.key"
    secret.write_bytes(SECRET + b"\n")  # the trailing newline of `echo key > file` is not part of the key
    receiver.script = {"/flaky": [500, 429, 200], "/down": [500], "/refusing": [400]}
    hooks = {
        "webhooks": [
            _webhook(receiver, secret, "ok", min_level="high"),
            _webhook(receiver, secret, "flaky", min_level="high", max_attempts=3),
            _webhook(receiver, secret, "down", min_level="high", max_attempts=2),
            _webhook(receiver, secret, "refusing", min_level="high"),
            _webhook(receiver, secret, "slow", min_level="high", timeout_s=0.3, max_attempts=1),
            _webhook(receiver, secret, "tagged", min_level="informational", tags=["ATTACK.T1609"]),
            _webhook(receiver, tmp_path / "missing.key", "keyless", min_level="high"),
        ],
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "public_url": "https://refsys.example",
    }
    settings = make_settings(tmp_path / "var", db_url, hooks=hooks)
    high = make_alert("a-high", level="high", tags=("attack.t1110",))
    low = make_alert("a-low", level="low", tags=("attack.t1609",))
    with running_app(settings) as (client, services):
        services.bus.publish(topics.ALERTS, high.id, [high.to_record()])
        services.bus.publish(topics.ALERTS, low.id, [low.to_record()])
        # The same rule and entities again within the suppression window: folded by the sink, not notified.
        services.bus.publish(
            topics.ALERTS, high.id, [dataclasses.replace(high, id="a-high-again").to_record()]
        )
        officer = bearer(services, Role.SECURITY_OFFICER, subject="sofia")

        def dead_letters(**params: Any) -> list[dict[str, Any]]:
            answer = client.get("/api/v1/hooks/dead-letters", params=params, headers=officer)
            assert answer.status_code == 200, answer.text
            return list(answer.json()["items"])

        # The consumer commits once every notification of the batch is delivered or dead-lettered.
        wait_for(lambda: services.bus.backlog(topics.ALERTS, NOTIFIER_GROUP) == 0, "alerts committed")
        assert {d["hook"] for d in dead_letters()} == {"down", "refusing", "slow", "keyless"}

        # Signed, verifiable, and a replay (the same request later) is refused.
        (ok,) = receiver.at("/ok")
        timestamp, body = ok.headers["x-refsys-timestamp"], ok.body
        assert signature.verify(SECRET, timestamp, body, ok.headers["x-refsys-signature"])
        assert not signature.verify(SECRET, timestamp, body, ok.headers["x-refsys-signature"],
                                    now=int(timestamp) + 600)  # fmt: skip
        assert not signature.verify(SECRET, timestamp, body.replace(b"a-high", b"a-hagh"),
                                    ok.headers["x-refsys-signature"])  # fmt: skip
        assert not signature.verify(b"other key", timestamp, body, ok.headers["x-refsys-signature"])
        payload = ok.json
        assert payload["delivery_id"] == ok.headers["x-refsys-delivery"]
        assert payload["alert"] == high.to_record()
        assert payload["rule"]["techniques"] == ["T1110"]
        assert payload["events"][0]["fields"] == {"user.name": "mallory", "event.outcome": "failure"}
        assert payload["url"] == "https://refsys.example/api/v1/alerts/a-high"

        # 500, then 429 (Retry-After: 0), then 200: three attempts, one delivery, one delivery id.
        flaky = receiver.at("/flaky")
        assert [r.status for r in flaky] == [500, 429, 200]
        assert len({r.headers["x-refsys-delivery"] for r in flaky}) == 1
        assert flaky[0].headers["x-refsys-delivery"] != ok.headers["x-refsys-delivery"]  # per hook
        registry = services.metrics.registry
        assert registry.get_sample_value("refsys_hook_delivered_total", {"hook": "flaky"}) == 1
        assert registry.get_sample_value("refsys_hook_delivered_total", {"hook": "down"}) == 0
        assert registry.get_sample_value("refsys_hook_duplicates_suppressed_total") == 1

        # Routing: the low alert reaches only the tagged webhook (tags match case-insensitively); the high
        # alert has no such tag.
        assert [r.json["alert"]["id"] for r in receiver.at("/tagged")] == ["a-low"]
        assert all(r.json["alert"]["id"] == "a-high" for r in receiver.received if r.path != "/tagged")

        # Out of attempts (two 500s), refused (one 400, never retried), too slow (timeout): dead letters.
        assert [r.status for r in receiver.at("/down")] == [500, 500]
        assert [r.status for r in receiver.at("/refusing")] == [400]
        by_hook = {d["hook"]: d for d in dead_letters(pending=True)}
        assert (by_hook["down"]["attempts"], by_hook["down"]["status_code"]) == (2, 500)
        assert by_hook["down"]["reason"].startswith("HTTP 500")
        assert (by_hook["refusing"]["attempts"], by_hook["refusing"]["status_code"]) == (1, 400)
        assert "Timeout" in by_hook["slow"]["reason"]
        assert "missing.key unreadable" in by_hook["keyless"]["reason"] and not receiver.at("/keyless")
        assert by_hook["down"]["alert"] == high.to_record()
        assert registry.get_sample_value("refsys_hook_dead_lettered_total", {"hook": "down"}) == 1
        assert [d["hook"] for d in dead_letters(hook="down")] == ["down"]
        receiver.release.set()

        # Retry through the API: still failing -> 502 and it stays; receiver back -> delivered, same id.
        down_id = by_hook["down"]["id"]
        still = client.post(f"/api/v1/hooks/dead-letters/{down_id}/retry", headers=officer)
        assert still.status_code == 502, still.text
        assert still.headers["content-type"] == "application/problem+json"
        receiver.script["/down"] = [200]
        retried = client.post(f"/api/v1/hooks/dead-letters/{down_id}/retry", headers=officer)
        assert retried.status_code == 200, retried.text
        assert retried.json()["redelivered_by"] == "sofia" and retried.json()["attempts"] == 3
        down = receiver.at("/down")
        assert [r.status for r in down] == [500, 500, 500, 200]
        assert {r.headers["x-refsys-delivery"] for r in down} == {by_hook["down"]["delivery_id"]}
        assert signature.verify(SECRET, down[-1].headers["x-refsys-timestamp"], down[-1].body,
                                down[-1].headers["x-refsys-signature"])  # fmt: skip
        assert {d["hook"] for d in dead_letters(pending=True)} == {"refusing", "slow", "keyless"}
        assert [d["id"] for d in dead_letters(pending=False)] == [down_id]
        unknown = "00000000-0000-7000-8000-000000000000"
        assert client.post(f"/api/v1/hooks/dead-letters/{unknown}/retry", headers=officer).status_code == 404

        # Roles: security-officer and admin; nobody else.
        admin = bearer(services, Role.ADMIN)
        assert client.get("/api/v1/hooks/dead-letters", headers=admin).status_code == 200
        for role in (Role.OPERATOR, Role.OPS_MANAGER, Role.AUDITOR):
            headers = bearer(services, role)
            assert client.get("/api/v1/hooks/dead-letters", headers=headers).status_code == 403
            assert (
                client.post(f"/api/v1/hooks/dead-letters/{down_id}/retry", headers=headers).status_code == 403
            )
        assert client.get("/api/v1/hooks/dead-letters").status_code == 401

        actions = [r["action"] for r in services.audit.list(AuditFilter(target="hook:down"))]
        assert actions.count("hook.dead_letter") == 1 and actions.count("hook.dead_letter.retry") == 2


def test_alertmanager_lists_the_alert_with_its_labels(tmp_path: Path, alertmanager: str) -> None:
    hooks = {
        "alertmanager": {
            "url": alertmanager,
            "min_level": "medium",
            "labels": {"cluster": "test", "severity": "x"},
        },
        "public_url": "https://refsys.example",
    }
    settings = make_settings(tmp_path / "var", hooks=hooks)
    critical = make_alert("am-crit", level="critical", tags=("attack.t1059.004", "attack.execution"))
    quiet = make_alert("am-low", level="low")
    with running_app(settings) as (client, _services):
        notifier: Notifier = client.app.state.notifier  # type: ignore[attr-defined]
        outcomes = notifier.notify([critical, quiet])
        assert [(o.hook, o.alert.id, o.delivered) for o in outcomes] == [("alertmanager", "am-crit", True)]
        listed = httpx.get(f"{alertmanager}/api/v2/alerts", timeout=10).json()
        (alert,) = [a for a in listed if a["labels"].get("refsys_alert_id") == "am-crit"]
        assert alert["labels"] == {
            "alertname": "Rule am-crit",
            "rule_id": "rule-am-crit",
            "severity": "critical",  # refsys's own label wins over the configured one
            "refsys_alert_id": "am-crit",
            "kind": "rule",
            "techniques": "T1059.004",
            "host": "node-1",
            "user": "mallory",
            "cluster": "test",
        }
        assert alert["annotations"]["event_ids"] == "ev-am-crit"
        assert alert["annotations"]["summary"].startswith("Rule am-crit (critical)")
        assert alert["generatorURL"] == "https://refsys.example/api/v1/alerts/am-crit"
        started = clock.parse_rfc3339(alert["startsAt"]) - clock.parse_rfc3339(critical.first)
        assert abs(started) < timedelta(milliseconds=1)  # Alertmanager keeps milliseconds
        assert alert["status"]["state"] == "active"
        assert not [a for a in listed if a["labels"].get("refsys_alert_id") == "am-low"]  # below min_level


def test_routed_notifications_are_republished_on_the_configured_topic(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "var", hooks={"topic": "alerts.notifications", "topic_min_level": "high"}
    )
    alerts = [make_alert("t-high", level="high"), make_alert("t-medium", level="medium")]
    with running_app(settings) as (client, services):
        for alert in alerts:
            services.bus.publish(topics.ALERTS, alert.id, [alert.to_record()])
        with services.bus.consumer("alerts.notifications", "reader") as reader:
            records = wait_for(lambda: reader.poll(timeout_s=0.2), "a notification on the topic")
            assert [(r.key, r.value["alert"]["id"]) for r in records] == [("t-high", "t-high")]
            wait_for(lambda: services.bus.backlog(topics.ALERTS, NOTIFIER_GROUP) == 0, "alerts committed")
            assert reader.poll(timeout_s=0.2) == []  # the medium alert is below topic_min_level
        notifier: Notifier = client.app.state.notifier  # type: ignore[attr-defined]
        assert records[0].value["delivery_id"] == notifier.notify(alerts[:1])[0].delivery_id


FALCO_CRITICAL_RULE = "a1cf9b4b-5460-4db5-a057-b800e235c475"


def test_acceptance_5_an_ingested_attack_reaches_the_webhook_and_alertmanager(
    tmp_path: Path, receiver: Receiver, alertmanager: str
) -> None:
    secret = tmp_path / "hook.key"
    secret.write_bytes(SECRET)
    hooks = {
        "webhooks": [_webhook(receiver, secret, "soc", min_level="high")],
        "alertmanager": {"url": alertmanager, "min_level": "high"},
    }
    settings = make_settings(tmp_path / "var", hooks=hooks)
    now = clock.utcnow()
    falco = {
        "hostname": "proc-node-2", "priority": "Critical", "rule": "Drop and execute new binary in container",
        "output": "Drop and execute new binary in container (test)", "source": "syscall",
        "time": clock.rfc3339(now),
        "output_fields": {"proc.name": "x", "container.id": "4f2a9c1b7d3e", "user.name": "root"},
    }  # fmt: skip
    with running_app(settings) as (client, services):
        ingested = client.post("/api/v1/ingest/falco", json=falco, headers=bearer(services, Role.INGEST))
        assert ingested.status_code == 202 and ingested.json()["accepted"] == 1, ingested.text
        officer = bearer(services, Role.SECURITY_OFFICER)

        def raised() -> list[dict[str, Any]]:
            items = client.get("/api/v1/alerts", headers=officer).json()["items"]
            return [a for a in items if a["rule"]["id"] == FALCO_CRITICAL_RULE]

        (alert,) = wait_for(raised, "the Falco critical alert", deadline_s=30)
        wait_for(lambda: client.get("/api/v1/incidents", headers=officer).json()["items"], "its incident", 30)

        (delivered,) = wait_for(lambda: receiver.at("/soc"), "the webhook notification", deadline_s=30)
        headers = delivered.headers
        assert signature.verify(
            SECRET, headers["x-refsys-timestamp"], delivered.body, headers["x-refsys-signature"]
        )
        assert delivered.json["alert"]["id"] == alert["id"]
        assert delivered.json["rule"]["techniques"] == ["T1059", "T1611"]

        def listed() -> list[dict[str, Any]]:
            found = httpx.get(f"{alertmanager}/api/v2/alerts", timeout=10).json()
            return [a for a in found if a["labels"].get("refsys_alert_id") == alert["id"]]

        (managed,) = wait_for(listed, "the alert in Alertmanager", deadline_s=30)
        assert managed["labels"]["rule_id"] == FALCO_CRITICAL_RULE
        assert managed["labels"]["severity"] == "critical"
        assert managed["labels"]["host"] == "proc-node-2"
