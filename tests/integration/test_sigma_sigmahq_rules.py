"""Acceptance 2 of issue 5: every SigmaHQ Linux, Kubernetes and network rule compiles (at most 1% reported
unsupported, each with its reason), and the routing classification is printed with counts and the fields most
often left unmapped, so a gap in a source's field table shows up here rather than as a rule that never fires.

No bundled rules exist yet (``security/rules/`` is to come), so "every bundled rule is routable" is not tested.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sigma.exceptions import SigmaError
from sigma.rule import SigmaRule

from security.ecs import flatten
from security.sigma import SigmaCompileError, compile_rule
from security.sigma.routing import RuleClass, classify, compile_routed
from security.sources.k8s_audit import KubernetesAuditAdapter
from tests.shared_data import shared_file
from tests.source_samples import run_sample

RULE_DIRS = ("linux", "application/kubernetes", "network")
K8S_TRACES = "falco-legacy-tests/test/trace_files/k8s_audit"


def _rule_files() -> list[Path]:
    files: list[Path] = []
    for directory in RULE_DIRS:
        files.extend(sorted(shared_file(f"sigmahq-sigma/rules/{directory}").rglob("*.yml")))
    return files


def test_sigmahq_linux_kubernetes_network_rules_compile_and_are_classified() -> None:
    files = _rule_files()
    unsupported: list[str] = []
    classes: Counter[RuleClass] = Counter()
    missing: Counter[str] = Counter()
    examples: dict[RuleClass, list[str]] = {}
    for path in files:
        try:
            rule = SigmaRule.from_yaml(path.read_text(encoding="utf-8"), collect_errors=False)
            compile_rule(rule)
        except (SigmaError, SigmaCompileError) as exc:
            unsupported.append(f"{path.name}: {exc}")
            continue
        routing = classify(rule)
        classes[routing.rule_class] += 1
        missing.update(routing.unmapped)
        examples.setdefault(routing.rule_class, []).append(f"{path.name}: {routing.reason}")
        if routing.rule_class is RuleClass.MAPPED:
            routed = compile_routed(rule)  # a fully mapped rule must also compile on document fields
            assert set(routed.routing.fields) == set(routing.fields)

    print(f"\n{len(files)} SigmaHQ rules under {', '.join(RULE_DIRS)}")
    print(f"unsupported: {len(unsupported)}")
    for line in unsupported:
        print(f"  {line}")
    for rule_class in RuleClass:
        print(f"{rule_class.value}: {classes[rule_class]}")
    print("unmapped fields, most often missing first:")
    for name, count in missing.most_common():
        print(f"  {name}: {count}")
    print("unroutable:", ", ".join(sorted(e.split(":")[0] for e in examples.get(RuleClass.UNROUTABLE, []))))

    assert len(files) > 250, "the shared SigmaHQ snapshot holds 279 rules in these directories"
    assert len(unsupported) <= len(files) // 100, unsupported
    assert sum(classes.values()) + len(unsupported) == len(files)
    # Every ingested source with SigmaHQ rules routes: only device logs refsys does not ingest are unroutable.
    assert classes[RuleClass.MAPPED] > classes[RuleClass.UNMAPPED] + classes[RuleClass.UNROUTABLE]


def test_sigmahq_kubernetes_rules_fire_on_real_audit_events_normalised_by_the_adapter() -> None:
    """The field table meets real documents: Falco's k8s_audit traces through refsys's own adapter, every
    fully mapped SigmaHQ Kubernetes rule over them, so a wrong native path shows as a rule that stays silent."""
    rules = []
    for path in sorted(shared_file("sigmahq-sigma/rules/application/kubernetes").rglob("*.yml")):
        rule = SigmaRule.from_yaml(path.read_text(encoding="utf-8"), collect_errors=False)
        if classify(rule).rule_class is RuleClass.MAPPED:
            rules.append((path.stem, compile_routed(rule)))
    hits: dict[str, set[str]] = {}
    for trace in sorted(shared_file(K8S_TRACES).glob("*.json")):
        for doc in run_sample(KubernetesAuditAdapter(), trace).docs:
            flat = dict(flatten({**doc, "event": {**doc.get("event", {}), "dataset": "kubernetes.audit"}}))
            for name, routed in rules:
                assert routed.routing.route is not None
                if routed.routing.route.accepts(flat) and routed.compiled.matches(flat):
                    hits.setdefault(trace.stem, set()).add(name)
    print(f"\n{len(rules)} mapped Kubernetes rules; hits per trace:")
    for trace_name, names in sorted(hits.items()):
        print(f"  {trace_name}: {', '.join(sorted(names))}")
    assert "kubernetes_audit_exec_into_container" in hits["exec_pod"]
    assert "kubernetes_audit_secrets_modified_or_deleted" in hits["delete_secret"]
    assert "kubernetes_audit_serviceaccount_creation" in hits["create_serviceaccount"]
    assert "kubernetes_audit_rolebinding_modification" not in hits.get("create_configmap", set())
