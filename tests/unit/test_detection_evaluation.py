"""The two detection stages run offline (``evaluate``): per-record auditd rules, rule alerts versus
correlation-only rules, chained correlations, deterministic alert ids, entities for incidents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from security.detection import ruleset
from security.detection.evaluation import evaluate
from security.sources.auditd import AuditdAdapter
from security.sources.base import Line, Parsed
from tests.unit.test_source_auditd import HEX_EXECVE

AUDITD_RULES = """
title: bash -c in one EXECVE record
id: 1b9c1c8e-0000-4000-8000-00000000a001
logsource: {product: linux, service: auditd}
detection:
  selection: {type: EXECVE, a1: '-c'}
  condition: selection
level: medium
---
title: a1 of -c on the SYSCALL record (never true within one record)
id: 1b9c1c8e-0000-4000-8000-00000000a002
logsource: {product: linux, service: auditd}
detection:
  selection: {type: SYSCALL, a1: '-c'}
  condition: selection
level: medium
"""

K8S_RULES = """
title: Secret read
id: 1b9c1c8e-0000-4000-8000-00000000b001
name: secret_read
logsource: {product: kubernetes, service: audit}
detection:
  selection: {verb: get, objectRef.resource: secrets}
  condition: selection
level: low
---
title: Many secrets read by one user
id: 1b9c1c8e-0000-4000-8000-00000000b002
name: many_secrets
correlation:
  type: value_count
  rules: [secret_read]
  group-by: [user.name]
  timespan: 10m
  condition: {field: objectRef.name, gte: 3}
level: medium
---
title: Secret spree by one user
id: 1b9c1c8e-0000-4000-8000-00000000b003
correlation:
  type: event_count
  rules: [many_secrets]
  group-by: [user.name]
  timespan: 1h
  condition: {gte: 1}
level: critical
"""


def load(tmp_path: Path, text: str) -> ruleset.RuleSet:
    (tmp_path / "rules.yml").write_text(text)
    loaded = ruleset.load(bundled=False, rule_dirs=[tmp_path])
    assert not loaded.problems, loaded.problems
    return loaded


def auditd_docs() -> list[dict[str, Any]]:
    lines = [Line(n, raw) for n, raw in enumerate(HEX_EXECVE.encode().splitlines(), start=1)]
    docs = [o.doc for o in AuditdAdapter().parse(lines) if isinstance(o, Parsed)]
    for doc in docs:
        doc["event"]["dataset"] = "auditd.log"  # what the intake stamps
    return docs


def test_auditd_rules_are_evaluated_record_by_record(tmp_path: Path) -> None:
    alerts = evaluate(load(tmp_path, AUDITD_RULES), auditd_docs())
    assert [a.rule.title for a in alerts] == ["bash -c in one EXECVE record"]
    assert alerts[0].events[0].fields["auditd.records.type"] == "EXECVE"


def secret_read(n: int, user: str, name: str, minute: int) -> dict[str, Any]:
    return {
        "@timestamp": f"2026-11-25T10:{minute:02d}:00.000000Z",
        "event": {"id": f"audit-{n}", "dataset": "kubernetes.audit"},
        "user": {"name": user},
        "source": {"ip": f"10.1.0.{n}"},
        "kubernetes": {"audit": {"verb": "get", "objectRef": {"resource": "secrets", "name": name}}},
    }


def test_correlation_only_rules_chains_and_deterministic_ids(tmp_path: Path) -> None:
    rules = load(tmp_path, K8S_RULES)
    docs = [secret_read(n, "system:serviceaccount:ci:deployer", f"s{n % 3}", n) for n in range(4)]
    docs.append(secret_read(9, "alice", "s0", 5))
    alerts = evaluate(rules, docs)
    # The base rule feeds a correlation without `generate`: it raises no alert of its own, nor does the inner
    # correlation (used by another without generate); only the outermost one reports.
    # Two windows of the inner one qualify (ending at the 3rd and at the 4th read), each feeding the outer.
    assert [(a.kind, a.rule.title) for a in alerts] == [("correlation", "Secret spree by one user")] * 2
    alert = alerts[0]
    assert alert.rule.level == "critical"
    assert alert.group == {"user.name": "system:serviceaccount:ci:deployer"}
    assert alert.entities == {"user": ["system:serviceaccount:ci:deployer"]}
    assert len({a.id for a in alerts}) == 2
    assert [a.id for a in evaluate(rules, docs)] == [a.id for a in alerts], "ids: rule, group and window"


def test_a_rule_alert_names_its_event_and_entities(tmp_path: Path) -> None:
    rules = load(tmp_path, K8S_RULES.split("---")[0])
    (alert,) = evaluate(rules, [secret_read(1, "bob", "db-password", 1)])
    assert alert.kind == "rule" and alert.first == alert.last == "2026-11-25T10:01:00.000000Z"
    assert alert.events[0].id == "audit-1"
    assert alert.events[0].fields["kubernetes.audit.objectRef.resource"] == "secrets"
    assert alert.entities == {"user": ["bob"], "source_ip": ["10.1.0.1"]}
    assert alert.rule.tags == () and alert.rule.level == "low"
