"""The rule index (security/sigma/index.py): its requirements (clauses of literal atoms) are necessary
conditions, and indexed matching equals evaluating every rule, exactly, over SigmaHQ's rules on real and
generated events; the matcher (security/detection/matcher.py) equals it on whole documents."""

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
from security.sigma.index import Atom, Requirement, RuleIndex, evaluate_all, rule_requirement
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


def _needs(detection: str, condition: str = "selection") -> Requirement:
    return rule_requirement(_rule(detection, condition).rule)


def _all_of(*clauses: set[Atom]) -> Requirement:
    """A requirement written as its clauses (each a set of alternative atoms)."""
    return frozenset(frozenset(c) for c in clauses)


def test_strings_require_their_literal_lower_cased_in_its_place() -> None:
    assert _needs("selection:\n  CommandLine|contains: FOO") == _all_of(
        {Atom("CommandLine", "contains", "foo")}
    )
    assert _needs("selection:\n  CommandLine: '*Foo*'") == _all_of({Atom("CommandLine", "contains", "foo")})
    assert _needs("selection:\n  Image|endswith: '\\whoami.exe'") == _all_of(
        {Atom("Image", "endswith", "\\whoami.exe")}
    )
    assert _needs("selection:\n  User: Root") == _all_of({Atom("User", "equals", "root")})
    # A wildcard in the middle: every literal run is needed, the outer ones anchored.
    assert _needs("selection:\n  CommandLine: 'ab*cde?f'") == _all_of(
        {Atom("CommandLine", "startswith", "ab")},
        {Atom("CommandLine", "contains", "cde")},
        {Atom("CommandLine", "endswith", "f")},
    )


def test_and_needs_every_child_or_distributes() -> None:
    foo, bar = Atom("a", "equals", "foo"), Atom("b", "equals", "bar")
    assert _needs("selection:\n  a: foo\n  b|contains: barbaz") == _all_of(
        {foo}, {Atom("b", "contains", "barbaz")}
    )
    assert _needs("selection:\n  a:\n    - foo\n    - bar") == _all_of({foo, Atom("a", "equals", "bar")})
    assert _needs("sel1:\n  a: foo\nsel2:\n  b: bar", "sel1 or sel2") == _all_of({foo, bar})
    # (foo and bar) or baz: each of foo and bar is needed unless baz holds.
    baz = Atom("c", "equals", "baz")
    assert _needs("sel1:\n  a: foo\n  b: bar\nsel2:\n  c: baz", "sel1 or sel2") == _all_of(
        {foo, baz}, {bar, baz}
    )
    # One branch without a literal (a regex) makes the whole OR unconstrained.
    assert _needs("sel1:\n  a: foo\nsel2:\n  b|re: 'ba+r'", "sel1 or sel2") == frozenset()
    assert _needs("sel1:\n  a: foo\nsel2:\n  b|re: 'ba+r'", "sel1 and sel2") == _all_of({foo})


def test_keywords_require_their_literal_in_any_value() -> None:
    evil, bad, thing = (Atom(None, "contains", t) for t in ("evil", "bad", "thing"))
    assert _needs("keywords:\n  - Evil\n  - 'bad*thing'", "keywords") == _all_of({evil, bad}, {evil, thing})
    rule = _rule("keywords:\n  - Evil", "keywords")
    index = RuleIndex([rule])
    assert index.matches({"message": "an EVIL day"}) == [rule]
    assert index.matches({"message": "a good day"}) == [] and index.stats.skipped == 1


def test_not_and_non_strings_require_nothing() -> None:
    assert _needs("selection:\n  a: foo\nfilter:\n  b: bar", "selection and not filter") == _all_of(
        {Atom("a", "equals", "foo")}
    )
    for detection in ("a|cidr: 10.0.0.0/8", "a|gt: 5", "a: null", "a|exists: true", "a|contains: 'ΑΣ'"):
        assert _needs(f"selection:\n  {detection}") == frozenset(), detection


def test_case_folds_beyond_lower_are_still_found() -> None:
    """RE2 equates s with the long s and k with the Kelvin sign: a regex-compiled string still matches them,
    so the index (which reads the long s as s, and lower-cases the Kelvin sign to k) must not skip it."""
    rule = _rule("selection:\n  a: 'ask?x'")
    index = RuleIndex([rule])
    for value in ("A\u017fk-x", "as\u212a-x", "ASK-X"):
        assert index.matches({"a": value}) == evaluate_all([rule], {"a": value}) == [rule], value


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


def test_equality_is_framed_per_field_and_per_item() -> None:
    rule = _rule("selection:\n  a: foo")
    index = RuleIndex([rule])
    assert index.matches({"a": "foobar"}) == index.matches({"b": "foo"}) == []
    assert index.stats.evaluated == 0
    assert index.matches({"a": ["x", "FOO", 3]}) == [rule]


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
