"""The SIEM end to end on a real ``refsys serve``: Kubernetes audit events posted to the ingest API become an
alert and an incident in the API, a signed webhook (verified here) and an alert in a real Alertmanager; and a
correlation window left open when the server is SIGKILLed fires once after the restart."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from security.hooks.signature import verify
from tests.e2e.servers import ServerProcess
from tests.hook_receivers import Receiver

pytestmark = pytest.mark.timeout(300)
ALERT_DEADLINE_S = 30.0
SECRET = b"e2e-webhook-secret"
EXEC_RULE = "5a0f7f0e-6e53-4d3c-9a1e-0000000e2e01"
BULK_DELETE = "5a0f7f0e-6e53-4d3c-9a1e-0000000e2e03"
RULES = f"""
title: Shell opened in a pod
id: {EXEC_RULE}
logsource: {{product: kubernetes, service: audit}}
detection:
  selection: {{verb: create, objectRef.resource: pods, objectRef.subresource: exec}}
  condition: selection
level: high
tags: [attack.execution, attack.t1609]
---
title: Pod deleted
id: 5a0f7f0e-6e53-4d3c-9a1e-0000000e2e02
name: e2e_pod_deleted
logsource: {{product: kubernetes, service: audit}}
detection:
  selection: {{verb: delete, objectRef.resource: pods}}
  condition: selection
level: low
---
title: Pods deleted in bulk by one user
id: {BULK_DELETE}
correlation:
  type: event_count
  rules: [e2e_pod_deleted]
  group-by: [user.name]
  timespan: 10m
  condition: {{gte: 3}}
level: high
tags: [attack.impact, attack.t1485]
"""


def audit_event(verb: str, user: str, *, minute: int, subresource: str | None = None) -> str:
    object_ref: dict[str, Any] = {"resource": "pods", "namespace": "prod", "name": f"web-{minute}"}
    if subresource:
        object_ref["subresource"] = subresource
    moment = f"2026-11-25T09:{minute:02d}:00.000000Z"
    return json.dumps(
        {
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": str(uuid.uuid4()),
            "stage": "ResponseComplete", "requestURI": f"/api/v1/namespaces/prod/pods/web-{minute}",
            "verb": verb, "user": {"username": user}, "sourceIPs": ["203.0.113.9"], "objectRef": object_ref,
            "responseStatus": {"code": 200}, "requestReceivedTimestamp": moment, "stageTimestamp": moment,
        }
    )  # fmt: skip


@pytest.fixture
def server(tmp_path: Path, receiver: Receiver, alertmanager: str) -> Iterator[ServerProcess]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "e2e.yml").write_text(RULES)
    secret = tmp_path / "webhook.key"
    secret.write_bytes(SECRET)
    config = {
        "detection": {"rule_dirs": [str(rules)], "checkpoint_every_s": 0.2, "lateness_s": 3600},
        "hooks": {
            "webhooks": [{"name": "soc", "url": f"{receiver.url}/soc", "secret_file": str(secret), "min_level": "high"}],
            "alertmanager": {"url": alertmanager, "min_level": "high"},
        },
    }  # fmt: skip
    (tmp_path / "refsys.yml").write_text(yaml.safe_dump(config))
    process = ServerProcess(tmp_path)
    process.env["REFSYS_CONFIG"] = str(tmp_path / "refsys.yml")
    process.start()
    yield process
    process.stop()


def poll(fetch: Callable[[], Any], what: str, deadline_s: float = ALERT_DEADLINE_S) -> Any:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        found = fetch()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {deadline_s:.0f} s")


def ingest(server: ServerProcess, key: str, lines: list[str]) -> None:
    response = httpx.post(
        f"{server.url}/api/v1/ingest/k8s_audit",
        content="\n".join(lines).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == len(lines)


def alerts_of(server: ServerProcess, officer: str, rule_id: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{server.url}/api/v1/alerts",
        params={"rule_id": rule_id},
        headers={"Authorization": f"Bearer {officer}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def test_ingested_events_become_alert_incident_webhook_and_alertmanager_alert(
    server: ServerProcess,
    receiver: Receiver,
    alertmanager: str,
) -> None:
    key = server.credential("key", "create", "--role", "ingest", "--name", "apiserver")
    officer = server.credential("token", "create", "--role", "security-officer")
    ingest(server, key, [audit_event("create", "mallory", minute=1, subresource="exec")])

    (alert,) = poll(lambda: alerts_of(server, officer, EXEC_RULE), "alert in the API")
    assert alert["level"] == "high"
    headers = {"Authorization": f"Bearer {officer}"}
    incidents = poll(
        lambda: httpx.get(f"{server.url}/api/v1/incidents", headers=headers, timeout=10).json()["items"],
        "incident in the API",
    )
    assert incidents[0]["severity"] == "high" and "T1609" in incidents[0]["techniques"]

    (delivery,) = poll(lambda: receiver.at("/soc"), "webhook delivery")
    assert verify(
        SECRET, delivery.headers["x-refsys-timestamp"], delivery.body, delivery.headers["x-refsys-signature"]
    )
    assert not verify(SECRET, int(delivery.headers["x-refsys-timestamp"]) - 3600, delivery.body,
                      delivery.headers["x-refsys-signature"]), "an old timestamp is a replay"  # fmt: skip
    assert delivery.json["alert"]["id"] == alert["id"]

    def listed() -> list[dict[str, Any]]:
        found = httpx.get(f"{alertmanager}/api/v2/alerts", timeout=10).json()
        return [a for a in found if a["labels"].get("rule_id") == EXEC_RULE]

    (listed_alert,) = poll(listed, "alert in Alertmanager")
    assert listed_alert["labels"]["severity"] == "high"


def test_a_correlation_window_open_across_a_crash_fires_once(server: ServerProcess) -> None:
    key = server.credential("key", "create", "--role", "ingest", "--name", "apiserver")
    officer = server.credential("token", "create", "--role", "security-officer")
    ingest(server, key, [audit_event("delete", "eve", minute=m) for m in (1, 2)])
    # Both deletions are correlated and checkpointed once the correlation stage has caught up; the
    # webhook-free low-level rule raises no alert of its own (the correlation uses it without generate).
    checkpoints = server.workdir / "var" / "refsys.db"
    poll(lambda: _checkpointed(checkpoints, "eve", 2), "a checkpoint holding both deletions")
    server.kill()
    server.start()
    ingest(server, key, [audit_event("delete", "eve", minute=3)])
    (alert,) = poll(lambda: alerts_of(server, officer, BULK_DELETE), "the correlation alert")
    assert alert["group"] == {"user.name": "eve"}
    # The stage keeps going; nothing raises the window again, on a later batch or a later checkpoint.
    ingest(server, key, [audit_event("delete", "other", minute=30)])
    poll(lambda: _checkpointed(checkpoints, "other", 1), "the later batch correlated")
    assert len(alerts_of(server, officer, BULK_DELETE)) == 1


def _checkpointed(database: Path, user: str, count: int) -> bool:
    """Whether a saved correlation snapshot holds ``count`` entries of ``user``'s group."""
    with sqlite3.connect(database) as connection:
        rows = connection.execute("select snapshot from correlation_checkpoints").fetchall()
    for (snapshot,) in rows:
        for groups in json.loads(snapshot)["groups"].values():
            for group_key, state in groups:
                if json.loads(group_key) == [user] and len(state["entries"]) >= count:
                    return True
    return False
