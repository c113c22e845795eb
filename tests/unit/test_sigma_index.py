"""The rule index (security/sigma/index.py): its token requirements are necessary conditions, and indexed
matching equals evaluating every rule, exactly, over SigmaHQ's rules on real and generated events."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from sigma.exceptions import SigmaError
from sigma.rule import SigmaRule
from sigma.types import SigmaString, SpecialChars

from security.ecs import flatten
from security.sigma import SigmaCompileError, compile_rule, compile_yaml
from security.sigma.compiler import CompiledRule
from security.sigma.index import RuleIndex, evaluate_all, event_text, rule_requirement
from security.sigma.routing import RoutedRule, RuleClass, classify, compile_routed, detection_items
from security.sources.auditd import AuditdAdapter
from security.sources.base import Adapter, Line, Parsed
from security.sources.k8s_audit import KubernetesAuditAdapter
from security.sources.suricata import SuricataAdapter
from tests.shared_data import shared_file
from tests.source_samples import run_sample

RULE_DIRS = ("linux", "application/kubernetes", "network")


def _rule(detection: str, condition: str = "selection") -> CompiledRule:
    return compile_yaml(
        "title: t\nlogsource: {product: linux}\ndetection:\n"
        + "".join(f"  {line}\n" for line in detection.strip().splitlines())
        + f"  condition: {condition}\n"
    )


def _needs(detection: str, condition: str = "selection") -> frozenset[str] | None:
    return rule_requirement(_rule(detection, condition).rule)


def test_wildcards_require_their_literal_lower_cased() -> None:
    assert _needs("selection:\n  CommandLine|contains: FOO") == {"foo"}
    assert _needs("selection:\n  CommandLine: '*Foo*'") == {"foo"}
    assert _needs("selection:\n  Image|endswith: '\\whoami.exe'") == {"\\whoami.exe"}
    # A wildcard in the middle: the longest literal run is needed.
    assert _needs("selection:\n  CommandLine: 'ab*cde?f'") == {"cde"}


def test_and_takes_one_child_or_needs_every_branch() -> None:
    assert _needs("selection:\n  a: foo\n  b|contains: barbaz") == {"barbaz"}
    assert _needs("selection:\n  a:\n    - foo\n    - bar") == {"foo", "bar"}
    assert _needs("sel1:\n  a: foo\nsel2:\n  b: bar", "sel1 or sel2") == {"foo", "bar"}
    # One branch without a literal (a regex) makes the whole OR unconstrained.
    assert _needs("sel1:\n  a: foo\nsel2:\n  b|re: 'ba+r'", "sel1 or sel2") is None
    assert _needs("sel1:\n  a: foo\nsel2:\n  b|re: 'ba+r'", "sel1 and sel2") == {"foo"}


def test_keywords_require_their_literal_anywhere() -> None:
    assert _needs("keywords:\n  - Evil\n  - 'bad*thing'", "keywords") == {"evil", "thing"}
    rule = _rule("keywords:\n  - Evil", "keywords")
    index = RuleIndex([rule])
    assert index.matches({"message": "an EVIL day"}) == [rule]
    assert index.matches({"message": "a good day"}) == [] and index.stats.skipped == 1


def test_not_and_non_strings_require_nothing() -> None:
    assert _needs("selection:\n  a: foo\nfilter:\n  b: bar", "selection and not filter") == {"foo"}
    assert _needs("filter:\n  b: bar", "not filter") is None
    assert _needs("selection:\n  a|cidr: 10.0.0.0/8") is None
    assert _needs("selection:\n  a|gt: 5") is None
    assert _needs("selection:\n  a: null") is None
    assert _needs("selection:\n  a|exists: true") is None
    # RE2's case folding equates k and s with non-ASCII letters: such regex-path literals are not tokens.
    assert _needs("selection:\n  a: 'ask?sk'") is None
    assert _needs("selection:\n  a: 'ask?x'") == {"x"}


def test_an_event_without_the_token_skips_the_rule_and_the_result_is_unchanged() -> None:
    rules = [
        _rule("selection:\n  CommandLine|contains: whoami"),
        _rule("selection:\n  Image|endswith: /nc"),
        _rule("filter:\n  User: root", "not filter"),
    ]
    index = RuleIndex(rules)
    quiet = {"CommandLine": "ls -l", "Image": "/bin/ls", "User": "alice"}
    loud = {"CommandLine": "sh -c WHOAMI", "Image": "/bin/ls", "User": "root"}
    assert index.matches(quiet) == evaluate_all(rules, quiet) == [rules[2]]
    assert index.matches(loud) == evaluate_all(rules, loud) == [rules[0]]
    assert (index.stats.evaluated, index.stats.skipped) == (3, 3)  # /nc never occurs: never evaluated
    assert event_text({"a": ["X", 10, None], "b": True}) == "x\x0010\x00true"


def _rules() -> Iterator[SigmaRule]:
    for directory in RULE_DIRS:
        for path in sorted(shared_file(f"sigmahq-sigma/rules/{directory}").rglob("*.yml")):
            try:
                yield SigmaRule.from_yaml(path.read_text(encoding="utf-8"), collect_errors=False)
            except SigmaError:
                continue


def _sample_text(value: Any) -> str | None:
    """A string a Sigma string value matches: wildcards filled with a letter."""
    if not isinstance(value, SigmaString):
        return None
    return "".join(
        p if isinstance(p, str) else "x" if p is SpecialChars.WILDCARD_MULTI else "y" for p in value.s
    )


def _generated(rule: SigmaRule, base: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Events from the rule's own values: all its fields at once (a likely positive), then each field alone
    (near misses), each also upper-cased so case-insensitive matching is exercised."""
    together = dict(base)
    for item in detection_items(rule):
        if item.field is None:
            continue
        for value in item.value:
            text = _sample_text(value)
            if text is None:
                continue
            together.setdefault(item.field, text)
            yield {**base, item.field: text}
    yield together
    yield {k: v.upper() if isinstance(v, str) and k != "event.dataset" else v for k, v in together.items()}


def _real_events() -> list[dict[str, Any]]:
    """Shared real events normalised by refsys's adapters, flattened as detection sees them."""
    docs: list[tuple[str, dict[str, Any]]] = []
    k8s = KubernetesAuditAdapter()
    for trace in sorted(shared_file("falco-legacy-tests/test/trace_files/k8s_audit").glob("*.json")):
        docs.extend((k8s.dataset, d) for d in run_sample(k8s, trace).docs)
    suricata = SuricataAdapter()
    eve = shared_file("suricata-stamus-analytics/jupyter/Notebooks/training/data/02/eve.json")
    docs.extend((suricata.dataset, d) for d in run_sample(suricata, eve).docs)
    auditd: Adapter = AuditdAdapter()
    for name in ("test.log", "test2.log", "test3.log", "test4.log"):
        raw = shared_file(f"linux-audit-userspace/auparse/test/{name}").read_bytes()
        lines = [Line(n, r.rstrip(b"\r")) for n, r in enumerate(raw.splitlines(), start=1)]
        docs.extend(("auditd.log", o.doc) for o in auditd.parse(lines) if isinstance(o, Parsed))
    return [dict(flatten({**d, "event": {**d.get("event", {}), "dataset": ds}})) for ds, d in docs]


def test_indexed_matches_equal_evaluating_every_sigmahq_rule() -> None:
    rules: list[CompiledRule | RoutedRule] = []
    generated: list[dict[str, Any]] = []
    for rule in _rules():
        try:
            raw = compile_rule(rule)  # unrouted: reads Sigma field names on any event
        except SigmaCompileError:
            continue
        rules.append(raw)
        generated.extend(_generated(rule, {}))
        if classify(rule).rule_class is RuleClass.MAPPED:
            routed = compile_routed(rule)
            route = routed.routing.route
            assert route is not None
            rules.append(routed)
            base = {"event.dataset": route.dataset, **{k: sorted(v)[0] for k, v in route.where.items()}}
            generated.extend(_generated(routed.compiled.rule, base))
    real = _real_events()
    events = real + generated

    index = RuleIndex(rules)
    positives = 0
    for event in events:
        expected = evaluate_all(rules, event)
        assert index.matches(event) == expected, event
        positives += len(expected)

    total = index.stats.evaluated + index.stats.skipped
    print(
        f"\n{len(rules)} rules ({sum(isinstance(r, RoutedRule) for r in rules)} routed), {len(real)} real and "
        f"{len(generated)} generated events, {positives} matches, identical with and without the index; "
        f"evaluations {index.stats.evaluated} of {total} ({index.stats.skipped / total:.1%} saved)"
    )
    assert len(real) > 300 and positives > 500

    # One speed figure on the real events (printed, never asserted: speed belongs in bench/).
    started = time.perf_counter()
    for event in real:
        evaluate_all(rules, event)
    every = len(real) / (time.perf_counter() - started)
    started = time.perf_counter()
    for event in real:
        index.matches(event)
    indexed = len(real) / (time.perf_counter() - started)
    print(f"real events/s: every rule {every:,.0f}, indexed {indexed:,.0f} ({indexed / every:.1f}x)")
