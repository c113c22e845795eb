"""Rule management through the API on SQLite and PostgreSQL: the file base and the database overlay (uploads,
enable/disable, Sigma filters with expiry), strict validation of uploads, tests and backtests over stored events,
ATT&CK coverage, the audit trail of every change and the roles that may make it.

Whether a change is in force is judged by what ``evaluate`` raises: through ``POST /api/v1/rules/test`` (the
rules in force) and through a second ``RuleCatalog`` on the same database, as another process would hold it."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from control_plane.cli import main
from control_plane.cli import rules as rules_cli
from control_plane.core import clock
from control_plane.core.audit.trail import AuditFilter
from control_plane.core.auth.machine_keys import MachineKeyStore
from control_plane.core.auth.roles import Role
from control_plane.core.services import Services
from security.detection import rules_api
from security.detection.catalog import RuleCatalog
from security.detection.evaluation import evaluate
from security.detection.rule_testing import normalise
from security.intake.identity import RequestKey
from tests.apps import bearer, make_settings, running_app

pytestmark = pytest.mark.timeout(180)

EXEC_ID = "5b0f3c1e-8a57-4f1c-9d0e-6c2a9b7d1e01"
EXEC_RULE = textwrap.dedent(
    f"""\
    title: Exec into a pod
    id: {EXEC_ID}
    status: test
    logsource:
      product: kubernetes
      service: audit
    detection:
      selection:
        verb: create
        objectRef.resource: pods
        objectRef.subresource: exec
      condition: selection
    level: high
    tags:
      - attack.execution
      - attack.t1609
    """
)
UNMAPPED_RULE = textwrap.dedent(
    """\
    title: Reads a field nothing writes
    id: 5b0f3c1e-8a57-4f1c-9d0e-6c2a9b7d1e02
    logsource:
      product: kubernetes
      service: audit
    detection:
      selection:
        NoSuchField: x
      condition: selection
    level: low
    """
)
SECRET_ID = "5b0f3c1e-8a57-4f1c-9d0e-6c2a9b7d1e03"
SECRET_RULE = textwrap.dedent(
    f"""\
    title: Secret read
    id: {SECRET_ID}
    logsource:
      product: kubernetes
      service: audit
    detection:
      selection:
        verb: get
        objectRef.resource: secrets
      condition: selection
    level: medium
    tags:
      - attack.credential-access
      - attack.t1552.007
    """
)


def _audit_event(audit_id: str, user: str, verb: str, resource: str, subresource: str | None, at: str) -> str:
    ref: dict[str, Any] = {"resource": resource, "namespace": "prod", "name": "web", "apiVersion": "v1"}
    if subresource:
        ref["subresource"] = subresource
    event = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Request", "auditID": audit_id,
        "stage": "ResponseComplete", "requestURI": f"/api/v1/namespaces/prod/{resource}/web", "verb": verb,
        "user": {"username": user}, "sourceIPs": ["10.1.0.7"], "objectRef": ref,
        "requestReceivedTimestamp": at, "stageTimestamp": at,
    }  # fmt: skip
    return orjson.dumps(event).decode()


def _lines() -> list[str]:
    """Four audit events of the last hour: alice execs, alice lists, deploy-bot execs, alice reads a secret."""
    now = clock.utcnow()
    at = [clock.rfc3339(now - timedelta(minutes=50 - 5 * n)) for n in range(4)]
    return [
        _audit_event("e-1", "alice", "create", "pods", "exec", at[0]),
        _audit_event("e-2", "alice", "list", "pods", None, at[1]),
        _audit_event("e-3", "deploy-bot", "create", "pods", "exec", at[2]),
        _audit_event("e-4", "alice", "get", "secrets", None, at[3]),
    ]


def _filter(condition: str = "not selection", rules: str = EXEC_ID) -> str:
    return textwrap.dedent(
        f"""\
        title: The deploy bot execs by design
        id: 5b0f3c1e-8a57-4f1c-9d0e-6c2a9b7d1e10
        logsource:
          product: kubernetes
          service: audit
        filter:
          rules:
            - {rules}
          selection:
            user.username: deploy-bot
          condition: {condition}
        """
    )


@pytest.fixture
def app(tmp_path: Path, db_url: str) -> Iterator[tuple[TestClient, Services]]:
    rules_dir = tmp_path / "rules"
    (rules_dir / "k8s").mkdir(parents=True)
    (rules_dir / "k8s" / "exec.yml").write_text(EXEC_RULE)
    (rules_dir / "unmapped.yml").write_text(UNMAPPED_RULE)
    settings = make_settings(
        tmp_path / "var",
        db_url,
        detection={"bundled_rules": False, "rule_dirs": [str(rules_dir)]},
        telemetry={"max_past_skew_s": None},
    )
    with running_app(settings) as pair:
        yield pair


def _matched(client: TestClient, headers: dict[str, str], **body: Any) -> list[tuple[str, int, str]]:
    response = client.post(
        "/api/v1/rules/test", json={"lines": LINES, "source": "k8s_audit", **body}, headers=headers
    )
    assert response.status_code == 200, response.text
    return [(m["rule_id"], m["event_index"], m["event_id"]) for m in response.json()["matches"]]


def _elsewhere(services: Services) -> list[tuple[str, str]]:
    """What another process's catalog on the same database raises over the same events."""
    ruleset = RuleCatalog(services.engine, services.settings.detection).current()
    docs, _ = normalise("\n".join(LINES).encode(), source="k8s_audit", origin=RequestKey("elsewhere"))
    return [(alert.rule.id, alert.events[0].id) for alert in evaluate(ruleset, docs)]


def _actions(services: Services, target: str) -> list[str]:
    records = services.audit.list(AuditFilter(target=target), newest_first=False)
    return [record["action"] for record in records]


LINES = _lines()


def test_overlay_uploads_flags_and_validation(app: tuple[TestClient, Services]) -> None:
    client, services = app
    officer = bearer(services, Role.SECURITY_OFFICER, subject="sofia")
    operator = bearer(services, Role.OPERATOR, subject="olga")

    # Who may: the security officer (and admin), nobody else; a refusal is a problem.
    assert client.get("/api/v1/rules", headers=operator).status_code == 403
    assert client.post("/api/v1/rules", json={"yaml": SECRET_RULE}, headers=operator).status_code == 403
    assert client.get("/api/v1/rules", headers=bearer(services, Role.ADMIN)).status_code == 200

    # The file base, with origin, file, class and why a rule does not run.
    listed = {item["ref"]: item for item in client.get("/api/v1/rules", headers=officer).json()["items"]}
    exec_rule = listed[EXEC_ID]
    assert (exec_rule["origin"], exec_rule["class"], exec_rule["enabled"]) == ("directory", "mapped", True)
    assert exec_rule["path"].endswith("k8s/exec.yml") and exec_rule["techniques"] == ["T1609"]
    unmapped = listed["5b0f3c1e-8a57-4f1c-9d0e-6c2a9b7d1e02"]
    assert (unmapped["class"], unmapped["unmapped_fields"]) == ("unmapped", ["NoSuchField"])
    assert _matched(client, officer) == [
        (EXEC_ID, 0, "e-1:ResponseComplete"),
        (EXEC_ID, 2, "e-3:ResponseComplete"),
    ]

    # Uploads are validated strictly; nothing is stored unless everything would run.
    bad_field = client.post(
        "/api/v1/rules", json={"yaml": UNMAPPED_RULE.replace("d1e02", "d1e05")}, headers=officer
    )
    assert bad_field.status_code == 422, bad_field.text
    assert bad_field.headers["content-type"] == "application/problem+json"
    assert "NoSuchField" in bad_field.json()["errors"][0]["message"]
    broken = client.post("/api/v1/rules", json={"yaml": SECRET_RULE + "  - [unclosed\n"}, headers=officer)
    assert broken.status_code == 422 and "invalid YAML" in broken.json()["errors"][0]["message"]
    two = (
        SECRET_RULE
        + "---\n"
        + SECRET_RULE.replace(SECRET_ID, "5b0f3c1e-8a57-4f1c-9d0e-6c2a9b7d1e06").replace(
            "condition: selection", "condition: selection and nowhere"
        )
    )
    partial = client.post("/api/v1/rules", json={"yaml": two}, headers=officer)
    assert partial.status_code == 422, partial.text
    assert SECRET_ID not in {i["ref"] for i in client.get("/api/v1/rules", headers=officer).json()["items"]}

    # A new rule, then an upload overriding a base rule by reference: origin api, versions count up.
    added = client.post("/api/v1/rules", json={"yaml": SECRET_RULE}, headers=officer)
    assert added.status_code == 201, added.text
    assert added.json()["items"][0]["origin"] == "api" and added.json()["items"][0]["version"] == 1
    critical = EXEC_RULE.replace("level: high", "level: critical").replace("Exec into a pod", "Exec (tuned)")
    for version in (1, 2):
        overridden = client.post("/api/v1/rules", json={"yaml": critical}, headers=officer)
        assert overridden.status_code == 201, overridden.text
        assert overridden.json()["items"][0]["version"] == version
    detail = client.get(f"/api/v1/rules/{EXEC_ID}", headers=officer).json()
    assert (detail["origin"], detail["level"], detail["uploaded_by"]) == ("api", "critical", "sofia")
    assert "Exec (tuned)" in detail["yaml"]
    found = client.post(
        "/api/v1/rules/test", json={"lines": LINES, "source": "k8s_audit"}, headers=officer
    ).json()
    assert {(m["rule_id"], m["rule_title"], m["level"]) for m in found["matches"]} == {
        (EXEC_ID, "Exec (tuned)", "critical"),
        (SECRET_ID, "Secret read", "medium"),
    }

    # Deleting the upload brings the file's rule back; a file's rule cannot be deleted, only disabled.
    assert client.delete(f"/api/v1/rules/{EXEC_ID}", headers=officer).status_code == 204
    assert client.get(f"/api/v1/rules/{EXEC_ID}", headers=officer).json()["origin"] == "directory"
    assert client.delete(f"/api/v1/rules/{EXEC_ID}", headers=officer).status_code == 409
    assert client.delete("/api/v1/rules/nothing-here", headers=officer).status_code == 404

    # Disable / enable change what evaluate raises, here and in another process's catalog.
    assert (EXEC_ID, "e-1:ResponseComplete") in _elsewhere(services)
    no_reason = client.post(f"/api/v1/rules/{EXEC_ID}/disable", json={}, headers=officer)
    assert no_reason.status_code == 422
    off = client.post(
        f"/api/v1/rules/{EXEC_ID}/disable", json={"reason": "noisy during the migration"}, headers=officer
    )
    assert off.status_code == 200 and off.json()["enabled"] is False and off.json()["changed_by"] == "sofia"
    assert _matched(client, officer) == [(SECRET_ID, 3, "e-4:ResponseComplete")]
    assert all(rule != EXEC_ID for rule, _event in _elsewhere(services))
    on = client.post(f"/api/v1/rules/{EXEC_ID}/enable", json={"reason": "migration done"}, headers=officer)
    assert on.status_code == 200 and on.json()["enabled"] is True
    assert (EXEC_ID, 0, "e-1:ResponseComplete") in _matched(client, officer)

    # Coverage: enabled rules that run, by technique and by tactic.
    coverage = client.get("/api/v1/rules/coverage", headers=officer).json()
    techniques = {t["technique"]: [r["ref"] for r in t["rules"]] for t in coverage["techniques"]}
    assert techniques == {"T1609": [EXEC_ID], "T1552.007": [SECRET_ID]}
    assert {t["tactic"]: t["rules"] for t in coverage["tactics"]} == {"execution": 1, "credential-access": 1}

    # Every change is in the audit trail, by whom.
    assert _actions(services, EXEC_ID) == [
        "rule.upload",
        "rule.upload",
        "rule.delete",
        "rule.disable",
        "rule.enable",
    ]
    disabled = services.audit.list(AuditFilter(action="rule.disable", target=EXEC_ID))[0]
    assert disabled["actor"] == "sofia" and disabled["details"]["reason"] == "noisy during the migration"


def test_filters_exclude_until_they_expire(app: tuple[TestClient, Services]) -> None:
    client, services = app
    officer = bearer(services, Role.SECURITY_OFFICER, subject="sofia")
    expires = clock.rfc3339(clock.utcnow() + timedelta(seconds=4))
    body = {"owner": "platform-team", "reason": "deploy-bot execs for rollouts", "expires_at": expires}

    # A filter that would not exclude, one in the past, one naming no known rule: refused with reasons.
    inverted = client.post(
        "/api/v1/rules/filters", json={**body, "yaml": _filter("selection")}, headers=officer
    )
    assert inverted.status_code == 422 and "not selection" in inverted.json()["errors"][0]["message"]
    past = {**body, "expires_at": "2020-01-01T00:00:00Z", "yaml": _filter()}
    assert client.post("/api/v1/rules/filters", json=past, headers=officer).status_code == 422
    unknown = client.post(
        "/api/v1/rules/filters", json={**body, "yaml": _filter(rules="nope")}, headers=officer
    )
    assert unknown.status_code == 422 and "no rule 'nope'" in unknown.json()["errors"][0]["message"]
    no_owner = {key: value for key, value in body.items() if key != "owner"} | {"yaml": _filter()}
    assert client.post("/api/v1/rules/filters", json=no_owner, headers=officer).status_code == 422
    operator = bearer(services, Role.OPERATOR)
    assert (
        client.post("/api/v1/rules/filters", json={**body, "yaml": _filter()}, headers=operator).status_code
        == 403
    )

    assert (EXEC_ID, 2, "e-3:ResponseComplete") in _matched(client, officer)
    created = client.post("/api/v1/rules/filters", json={**body, "yaml": _filter()}, headers=officer)
    assert created.status_code == 201, created.text
    filter_id = created.json()["id"]
    assert created.json()["applied_to"] == [EXEC_ID] and created.json()["active"] is True

    # The deploy bot's exec is excluded, alice's still matches; the rule shows the filter applied.
    assert _matched(client, officer) == [(EXEC_ID, 0, "e-1:ResponseComplete")]
    rule = client.get(f"/api/v1/rules/{EXEC_ID}", headers=officer).json()
    assert rule["filters"] == ["5b0f3c1e-8a57-4f1c-9d0e-6c2a9b7d1e10"] and rule["class"] == "mapped"

    # Once expired it stops applying (polled: the catalog rebuilds when the earliest expiry passes).
    deadline = time.monotonic() + 30
    while (EXEC_ID, 2, "e-3:ResponseComplete") not in _matched(client, officer):
        assert time.monotonic() < deadline, "the expired filter still applies"
        time.sleep(0.2)
    listed = client.get("/api/v1/rules/filters", headers=officer).json()["items"]
    assert [(f["id"], f["active"], f["owner"]) for f in listed] == [(filter_id, False, "platform-team")]

    assert client.delete(f"/api/v1/rules/filters/{filter_id}", headers=officer).status_code == 204
    assert client.delete(f"/api/v1/rules/filters/{filter_id}", headers=officer).status_code == 404
    assert client.get("/api/v1/rules/filters", headers=officer).json()["items"] == []
    assert _actions(services, filter_id) == ["rule.filter.create", "rule.filter.delete"]
    create = services.audit.list(AuditFilter(action="rule.filter.create"))[0]
    assert create["details"]["owner"] == "platform-team" and create["details"]["expires_at"] == expires


def test_rules_test_over_given_rules_and_a_stored_time_range(
    app: tuple[TestClient, Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, services = app
    officer = bearer(services, Role.SECURITY_OFFICER, subject="sofia")

    # Given rules (only those run), over normalised ECS documents.
    docs = [
        {"@timestamp": "2026-11-25T10:00:00Z", "event": {"id": "x-1", "dataset": "kubernetes.audit"},
         "kubernetes": {"audit": {"verb": "get", "objectRef": {"resource": "secrets"}}}},
        {"@timestamp": "2026-11-25T10:00:01Z", "event": {"id": "x-2", "dataset": "kubernetes.audit"},
         "kubernetes": {"audit": {"verb": "get", "objectRef": {"resource": "pods"}}}},
    ]  # fmt: skip
    given = client.post("/api/v1/rules/test", json={"rules": [SECRET_RULE], "events": docs}, headers=officer)
    assert given.status_code == 200, given.text
    assert given.json()["events"] == 2
    assert given.json()["matches"] == [
        {
            "rule_id": SECRET_ID,
            "rule_title": "Secret read",
            "level": "medium",
            "event_index": 0,
            "event_id": "x-1",
        }
    ]
    invalid = client.post(
        "/api/v1/rules/test", json={"rules": [UNMAPPED_RULE], "events": docs}, headers=officer
    )
    assert invalid.status_code == 422 and "NoSuchField" in invalid.json()["errors"][0]["message"]
    neither = client.post("/api/v1/rules/test", json={"rules": [SECRET_RULE]}, headers=officer)
    assert neither.status_code == 422

    # Backtest: ingest first, then the stored events of a time range stream through the same evaluation.
    key = MachineKeyStore(services.engine).create(name="k8s", role=Role.INGEST, created_by="test").key
    ingest = client.post(
        "/api/v1/ingest/k8s_audit",
        content="\n".join(LINES).encode(),
        headers={"Authorization": f"Bearer {key}"},
    )
    assert ingest.status_code == 202 and ingest.json()["accepted"] == 4, ingest.text
    start = clock.rfc3339(clock.utcnow() - timedelta(hours=2))
    end = clock.rfc3339(clock.utcnow() + timedelta(minutes=1))
    backtest = {"from": start, "to": end}

    def matched() -> list[tuple[str, str]]:
        result = client.post("/api/v1/rules/test", json=backtest, headers=officer)
        assert result.status_code == 200, result.text
        return [(m["rule_id"], m["event_id"]) for m in result.json()["matches"]]

    deadline = time.monotonic() + 30
    while len(found := matched()) < 2:  # the store indexer works in the background
        assert time.monotonic() < deadline, f"only {found} after 30 s"
        time.sleep(0.1)
    assert found == [(EXEC_ID, "e-1:ResponseComplete"), (EXEC_ID, "e-3:ResponseComplete")]
    with_rules = client.post("/api/v1/rules/test", json={**backtest, "rules": [SECRET_RULE]}, headers=officer)
    assert [m["event_id"] for m in with_rules.json()["matches"]] == ["e-4:ResponseComplete"]
    empty = {"from": "2000-01-01T00:00:00Z", "to": "2000-01-02T00:00:00Z"}
    assert client.post("/api/v1/rules/test", json=empty, headers=officer).json()["events"] == 0
    # A backtest is bounded: past the cap it stops and says so.
    assert client.post("/api/v1/rules/test", json=backtest, headers=officer).json()["truncated"] is False
    monkeypatch.setattr(rules_api, "MAX_TEST_EVENTS", 2)
    capped = client.post("/api/v1/rules/test", json=backtest, headers=officer).json()
    assert (capped["events"], capped["truncated"]) == (2, True)


def test_cli_rules_test_with_url_asks_the_server(
    app: tuple[TestClient, Services], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``refsys rules test --url``: the same lines as in-process, computed by ``POST /api/v1/rules/test`` (the
    HTTP transport is the test client's, the request and answer are the CLI's own)."""
    client, services = app
    token = bearer(services, Role.SECURITY_OFFICER)["Authorization"].removeprefix("Bearer ")
    monkeypatch.setenv("REFSYS_TOKEN", token)

    def post(url: str, **kwargs: Any) -> Any:
        assert url == "http://refsys.test/api/v1/rules/test"
        kwargs.pop("timeout")
        return client.post("/api/v1/rules/test", **kwargs)

    monkeypatch.setattr(rules_cli.httpx, "post", post)
    (tmp_path / "exec.yml").write_text(EXEC_RULE)
    (tmp_path / "events.ndjson").write_text("\n".join(LINES) + "\n")
    args = [
        "rules",
        "test",
        "--rules",
        str(tmp_path / "exec.yml"),
        "--events",
        str(tmp_path / "events.ndjson"),
    ]
    remote = CliRunner().invoke(main, [*args, "--source", "k8s_audit", "--url", "http://refsys.test"])
    assert remote.exit_code == 0, remote.output
    lines = [orjson.loads(line) for line in remote.stdout.splitlines()]
    assert [(m["rule_id"], m["event_index"], m["event_id"]) for m in lines] == [
        (EXEC_ID, 0, "e-1:ResponseComplete"),
        (EXEC_ID, 2, "e-3:ResponseComplete"),
    ]
    (tmp_path / "bad.yml").write_text(UNMAPPED_RULE)
    refused = CliRunner().invoke(
        main,
        ["rules", "test", "--rules", str(tmp_path / "bad.yml"), *args[4:], "--url", "http://refsys.test"],
    )
    assert refused.exit_code == 1 and "NoSuchField" in refused.stderr
