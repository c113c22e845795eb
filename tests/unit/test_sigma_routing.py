"""Log-source routing and field mapping (issue 5): which dataset a rule watches and which document fields it
reads, the strict failure on a field nothing maps, and the three classes a rule falls into."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from sigma.rule import SigmaRule

from security.ecs import flatten
from security.sigma import SigmaCompileError
from security.sigma.routing import RuleClass, classify, compile_routed, map_rule, route_for


def _rule(logsource: str, detection: str) -> SigmaRule:
    text = textwrap.dedent(
        """\
        title: test rule
        id: 5f0e1c7a-0000-4000-8000-000000000001
        logsource:
        {logsource}
        detection:
        {detection}
        """
    ).format(logsource=textwrap.indent(logsource, "    "), detection=textwrap.indent(detection, "    "))
    return SigmaRule.from_yaml(text, collect_errors=False)


def _flat(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(flatten(doc))


PROCESS = "product: linux\ncategory: process_creation"


@pytest.mark.parametrize(
    ("logsource", "route", "dataset"),
    [
        ("product: linux\nservice: auditd", "linux-auditd", "auditd.log"),
        (PROCESS, "linux-process-creation", "auditd.log"),
        ("product: kubernetes\nservice: audit", "kubernetes-audit", "kubernetes.audit"),
        (
            "product: kubernetes\ncategory: application\nservice: audit",
            "kubernetes-audit",
            "kubernetes.audit",
        ),
        ("product: zeek\nservice: dns", "network-dns", "suricata.eve"),
        ("category: dns", "network-dns", "suricata.eve"),
        ("category: firewall", "network-firewall", "suricata.eve"),
        ("product: linux\nservice: sshd", "linux-sshd", "syslog.messages"),
    ],
)
def test_logsources_route_to_the_dataset_that_carries_them(logsource: str, route: str, dataset: str) -> None:
    found = route_for(_rule(logsource, "sel:\n    x: 1\ncondition: sel"))
    assert found is not None
    assert (found.name, found.dataset) == (route, dataset)


def test_a_logsource_refsys_does_not_ingest_is_unroutable() -> None:
    rule = _rule("product: cisco\nservice: aaa", "keywords:\n    - 'clear logging'\ncondition: keywords")
    routing = classify(rule)
    assert routing.rule_class is RuleClass.UNROUTABLE
    assert routing.route is None
    assert routing.reason == "no route for its logsource"


def test_native_namespaced_fields_come_first() -> None:
    rule = _rule(
        "product: kubernetes\nservice: audit",
        "sel:\n    verb: create\n    objectRef.subresource: exec\n    apiGroup: rbac.authorization.k8s.io\n"
        "condition: sel",
    )
    routing = classify(rule)
    assert routing.rule_class is RuleClass.MAPPED
    assert routing.fields == {
        "verb": "kubernetes.audit.verb",
        "objectRef.subresource": "kubernetes.audit.objectRef.subresource",
        "apiGroup": "kubernetes.audit.objectRef.apiGroup",
    }


def test_ecs_is_the_fallback_and_only_for_fields_the_source_writes() -> None:
    rule = _rule(PROCESS, "sel:\n    Image|endswith: /chmod\n    CommandLine|contains: ' +x'\ncondition: sel")
    assert classify(rule).fields == {"Image": "process.executable", "CommandLine": "process.command_line"}
    # ParentImage has an ECS name, but auditd documents carry no process.parent.executable.
    parent = _rule(PROCESS, "sel:\n    ParentImage|endswith: /bash\ncondition: sel")
    routing = classify(parent)
    assert routing.rule_class is RuleClass.UNMAPPED
    assert routing.unmapped == ("ParentImage",)


def test_auditd_fields_map_to_records_evaluated_one_at_a_time() -> None:
    rule = _rule(
        "product: linux\nservice: auditd",
        "sel:\n    type: EXECVE\n    a0: chmod\n    SYSCALL: execve\ncondition: sel",
    )
    routing = classify(rule)
    assert routing.fields == {
        "type": "auditd.records.type",
        "a0": "auditd.records.a0",
        "SYSCALL": "auditd.records.SYSCALL",
    }
    assert routing.route is not None and routing.route.per_record == "auditd.records"


def test_unmapped_fields_are_listed_and_mapping_strictly_fails_naming_them() -> None:
    rule = _rule(
        "product: zeek\nservice: dns",
        "sel:\n    query: evil.example\n    Z: 1\n    rejected: 'true'\ncondition: sel",
    )
    routing = classify(rule)
    assert routing.rule_class is RuleClass.UNMAPPED
    assert routing.unmapped == ("Z", "rejected")
    with pytest.raises(SigmaCompileError, match=r"maps no field for Z, rejected") as caught:
        map_rule(rule)
    assert "5f0e1c7a-0000-4000-8000-000000000001" in str(caught.value)


def test_unroutable_rules_fail_strict_mapping_too() -> None:
    with pytest.raises(SigmaCompileError, match="no route for its logsource"):
        compile_routed(_rule("product: juniper\nservice: bgp", "keywords:\n    - md5\ncondition: keywords"))


def test_a_mapped_rule_matches_normalised_documents_of_its_route_only() -> None:
    rule = _rule(
        "product: zeek\nservice: dns",
        "sel:\n    query|endswith: .evil.example\n    id.resp_p: 53\ncondition: sel",
    )
    routed = compile_routed(rule)
    dns = {
        "event": {"dataset": "suricata.eve"},
        "dns": {"question": {"name": "c2.evil.example"}},
        "destination": {"port": 53},
        "suricata": {"eve": {"event_type": "dns"}},
    }
    route = routed.routing.route
    assert route is not None
    assert route.accepts(_flat(dns)) and routed.compiled.matches(_flat(dns))
    benign = {**dns, "dns": {"question": {"name": "evil.example.org"}}}
    assert not routed.compiled.matches(_flat(benign))
    http = {**dns, "suricata": {"eve": {"event_type": "http"}}}
    assert not route.accepts(_flat(http))
    assert not route.accepts(_flat({**dns, "event": {"dataset": "syslog.messages"}}))
    # the rule's own copy is untouched: mapping works on a copy
    assert classify(rule).fields["query"] == "dns.question.name"


def test_fieldref_targets_are_mapped_too() -> None:
    rule = _rule(PROCESS, "sel:\n    CommandLine|fieldref: Image\ncondition: sel")
    routed = compile_routed(rule)
    doc = {"process": {"executable": "/bin/sh", "command_line": "/bin/sh"}}
    assert routed.compiled.matches(_flat(doc))
    assert not routed.compiled.matches(
        _flat({"process": {"executable": "/bin/sh", "command_line": "sh -c x"}})
    )
