"""``refsys rules validate|test``: exit codes (0 valid, 1 a rule that would not run, 2 usage), one problem line
per rule naming file, line and class, and the JSON lines of ``test`` for a rule match and a correlation alert
over raw source lines, ECS documents and a stored time range (a backtest on the embedded store)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from control_plane.cli import main

EXEC_ID = "7c1d2e3f-0a1b-4c2d-8e3f-4a5b6c7d8e01"
CORRELATION_ID = "7c1d2e3f-0a1b-4c2d-8e3f-4a5b6c7d8e02"
RULES = textwrap.dedent(
    f"""\
    title: Exec into a pod
    id: {EXEC_ID}
    logsource:
      product: kubernetes
      service: audit
    detection:
      selection:
        verb: create
        objectRef.subresource: exec
      condition: selection
    level: high
    tags:
      - attack.t1609
    ---
    title: Repeated execs by one user
    id: {CORRELATION_ID}
    correlation:
      type: event_count
      rules:
        - {EXEC_ID}
      group-by:
        - user.username
      timespan: 10m
      generate: true
      condition:
        gte: 2
    level: critical
    """
)
UNMAPPED = textwrap.dedent(
    """\
    title: Reads a field nothing writes
    id: 7c1d2e3f-0a1b-4c2d-8e3f-4a5b6c7d8e03
    logsource:
      product: kubernetes
      service: audit
    detection:
      selection:
        NoSuchField: x
      condition: selection
    """
)
UNROUTABLE = UNMAPPED.replace("8e03", "8e04").replace("product: kubernetes", "product: cisco")


def _event(audit_id: str, user: str, at: str, subresource: str = "exec") -> dict[str, Any]:
    return {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Request", "auditID": audit_id,
        "stage": "ResponseComplete", "requestURI": "/api/v1/namespaces/prod/pods/web/exec", "verb": "create",
        "user": {"username": user}, "sourceIPs": ["10.1.0.7"],
        "objectRef": {"resource": "pods", "namespace": "prod", "name": "web", "subresource": subresource},
        "requestReceivedTimestamp": at, "stageTimestamp": at,
    }  # fmt: skip


EVENTS = [
    _event("a-1", "alice", "2026-11-25T10:00:00Z"),
    _event("a-2", "bob", "2026-11-25T10:01:00Z", subresource="log"),
    _event("a-3", "alice", "2026-11-25T10:04:00Z"),
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in [name for name in os.environ if name.startswith("REFSYS_")]:
        monkeypatch.delenv(name)
    config = {"data_dir": str(tmp_path / "var"), "detection": {"bundled_rules": False}}
    (tmp_path / "refsys.yaml").write_text(json.dumps(config))
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "exec.yml").write_text(RULES)
    (tmp_path / "events.ndjson").write_text("".join(orjson.dumps(e).decode() + "\n" for e in EVENTS))
    return tmp_path


def refsys(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [*args[:2], "--config", "refsys.yaml", *args[2:]])
    return result.exit_code, result.stdout, result.stderr


def test_validate_exit_codes_and_problem_lines(workdir: Path) -> None:
    assert refsys("rules", "validate", "rules") == (0, "ok rules/exec.yml (2 rules)\n", "")
    (workdir / "bad").mkdir()
    (workdir / "bad" / "unmapped.yml").write_text(UNMAPPED + "---\n" + UNROUTABLE)
    (workdir / "bad" / "broken.yml").write_text("title: x\ndetection: [unclosed\n")
    code, out, err = refsys("rules", "validate", "rules", "bad")
    assert code == 1
    assert out == "ok rules/exec.yml (2 rules)\n"
    assert err.splitlines() == [
        "bad/broken.yml:3: bad/broken.yml: invalid: invalid YAML: while parsing a flow sequence, "
        "expected ',' or ']', but got '<stream end>'",
        "bad/unmapped.yml:1: 7c1d2e3f-0a1b-4c2d-8e3f-4a5b6c7d8e03: unmapped: "
        "route kubernetes-audit maps no field for NoSuchField",
        "bad/unmapped.yml:11: 7c1d2e3f-0a1b-4c2d-8e3f-4a5b6c7d8e04: unroutable: no route for its logsource",
    ]
    # Usage: no path, a path that does not exist, a directory without rule files.
    assert refsys("rules", "validate")[0] == 2
    assert refsys("rules", "validate", "missing.yml")[0] == 2
    (workdir / "empty").mkdir()
    code, _out, err = refsys("rules", "validate", "empty")
    assert code == 2 and "no rule files" in err


def _lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


EXPECTED_MATCHES = [(EXEC_ID, "Exec into a pod", "high", 0), (EXEC_ID, "Exec into a pod", "high", 2)]


def _check(lines: list[dict[str, Any]], ids: list[str]) -> None:
    matches = [line for line in lines if "rule_id" in line]
    alerts = [line for line in lines if "correlation_id" in line]
    assert [
        (m["rule_id"], m["rule_title"], m["level"], m["event_index"]) for m in matches
    ] == EXPECTED_MATCHES
    assert [m["event_id"] for m in matches] == [ids[0], ids[2]]
    assert len(alerts) == 1
    alert = alerts[0]
    assert set(alert) == {"correlation_id", "title", "group", "event_indexes", "event_ids", "first", "last"}
    assert (alert["correlation_id"], alert["title"], alert["group"]) == (
        CORRELATION_ID,
        "Repeated execs by one user",
        {"user.username": "alice"},
    )
    assert (alert["event_indexes"], alert["event_ids"]) == ([0, 2], [ids[0], ids[2]])
    assert alert["last"] == "2026-11-25T10:04:00.000000Z"


def test_test_prints_matches_and_correlation_alerts(workdir: Path) -> None:
    # Raw audit lines, normalised by the k8s_audit adapter as `refsys ingest` would.
    code, out, err = refsys(
        "rules", "test", "--rules", "rules", "--events", "events.ndjson", "--source", "k8s_audit"
    )
    assert (code, err) == (0, ""), err
    _check(_lines(out), ["a-1:ResponseComplete", "a-2:ResponseComplete", "a-3:ResponseComplete"])

    # Already-normalised ECS documents, without --source.
    docs = [
        {"@timestamp": e["stageTimestamp"], "event": {"id": f"doc-{n}", "dataset": "kubernetes.audit"},
         "kubernetes": {"audit": {k: e[k] for k in ("verb", "user", "objectRef")}}}
        for n, e in enumerate(EVENTS)
    ]  # fmt: skip
    (workdir / "ecs.ndjson").write_text("".join(json.dumps(d) + "\n" for d in docs) + "not json\n")
    code, out, err = refsys("rules", "test", "--rules", "rules/exec.yml", "--events", "ecs.ndjson")
    assert code == 0
    _check(_lines(out), ["doc-0", "doc-1", "doc-2"])
    assert err.startswith("ecs.ndjson:4: invalid JSON")

    # Usage errors: both inputs, neither, a backtest without an end, --source without --events.
    assert refsys("rules", "test", "--rules", "rules")[0] == 2
    both = ("--events", "events.ndjson", "--from", "2026-11-25T00:00:00Z", "--to", "2026-11-26T00:00:00Z")
    assert refsys("rules", "test", "--rules", "rules", *both)[0] == 2
    assert refsys("rules", "test", "--rules", "rules", "--from", "2026-11-25T00:00:00Z")[0] == 2
    assert refsys("rules", "test", "--rules", "rules", "--from", "yesterday", "--to", "today")[0] == 2
    # Rules that would not run: a failed check, with the problem named.
    (workdir / "unmapped.yml").write_text(UNMAPPED)
    code, out, err = refsys("rules", "test", "--rules", "unmapped.yml", "--events", "events.ndjson")
    assert (code, out) == (1, "") and "unmapped" in err


def test_backtest_over_the_embedded_store(workdir: Path) -> None:
    config = json.loads((workdir / "refsys.yaml").read_text())
    config["telemetry"] = {"max_past_skew_s": None}
    (workdir / "refsys.yaml").write_text(json.dumps(config))
    ingested = CliRunner().invoke(
        main, ["ingest", "--config", "refsys.yaml", "--source", "k8s_audit", "events.ndjson"]
    )
    assert ingested.exit_code == 0, ingested.output
    assert json.loads(ingested.stdout)["accepted"] == 3
    window = ("--from", "2026-11-25T09:00:00Z", "--to", "2026-11-25T11:00:00Z")
    code, out, err = refsys("rules", "test", "--rules", "rules", *window)
    assert (code, err) == (0, ""), err
    _check(_lines(out), ["a-1:ResponseComplete", "a-2:ResponseComplete", "a-3:ResponseComplete"])
    code, out, _err = refsys(
        "rules", "test", "--rules", "rules", "--from", "2026-11-24T00:00:00Z", "--to", "2026-11-24T01:00:00Z"
    )
    assert (code, out) == (0, "")
