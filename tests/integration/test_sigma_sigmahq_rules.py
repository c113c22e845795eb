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

from security.sigma import SigmaCompileError, compile_rule
from security.sigma.routing import RuleClass, classify, compile_routed
from tests.shared_data import shared_file

RULE_DIRS = ("linux", "application/kubernetes", "network")


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
