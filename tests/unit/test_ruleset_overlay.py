"""The loader's overlay semantics, judged by what ``evaluate`` raises: a later text replaces a rule by reference,
disabled rules never alert, a disabled correlation keeps the rules it used quiet, filters exclude (their fields
mapped like the rule's own), and correlations naming what is missing are reported instead of breaking the set."""

from __future__ import annotations

import textwrap
from typing import Any

from security.detection.evaluation import evaluate
from security.detection.ruleset import RuleText, build

RULE = textwrap.dedent(
    """\
    title: Secret read
    id: 0d6c3f2a-1b4e-4c5d-9e6f-7a8b9c0d1e01
    logsource: {product: kubernetes, service: audit}
    detection:
      selection: {verb: get, objectRef.resource: secrets}
      condition: selection
    level: medium
    """
)
CORRELATION = textwrap.dedent(
    """\
    title: Many secret reads
    id: 0d6c3f2a-1b4e-4c5d-9e6f-7a8b9c0d1e02
    correlation:
      type: event_count
      rules: [0d6c3f2a-1b4e-4c5d-9e6f-7a8b9c0d1e01]
      group-by: [user.username]
      timespan: 10m
      condition: {gte: 2}
    level: high
    """
)
PARENT = textwrap.dedent(
    """\
    title: Secret reads then more
    id: 0d6c3f2a-1b4e-4c5d-9e6f-7a8b9c0d1e03
    correlation:
      type: event_count
      rules: [0d6c3f2a-1b4e-4c5d-9e6f-7a8b9c0d1e02]
      group-by: [user.username]
      timespan: 1h
      condition: {gte: 1}
    """
)
FILTER = textwrap.dedent(
    """\
    title: The backup job reads secrets
    id: 0d6c3f2a-1b4e-4c5d-9e6f-7a8b9c0d1e10
    logsource: {product: kubernetes, service: audit}
    filter:
      rules: [0d6c3f2a-1b4e-4c5d-9e6f-7a8b9c0d1e01]
      selection: {user.username: backup}
      condition: not selection
    """
)
RULE_ID, CORRELATION_ID, PARENT_ID = (f"0d6c3f2a-1b4e-4c5d-9e6f-7a8b9c0d1e0{n}" for n in (1, 2, 3))


def _doc(n: int, user: str) -> dict[str, Any]:
    return {
        "@timestamp": f"2026-11-25T10:0{n}:00Z",
        "event": {"id": f"e-{n}", "dataset": "kubernetes.audit"},
        "kubernetes": {
            "audit": {"verb": "get", "objectRef": {"resource": "secrets"}, "user": {"username": user}}
        },
    }


DOCS = [_doc(0, "alice"), _doc(1, "backup"), _doc(2, "alice")]


def _raised(*texts: str, **kwargs: Any) -> list[tuple[str, tuple[str, ...]]]:
    ruleset = build([RuleText(t, "directory", f"f{n}.yml") for n, t in enumerate(texts)], **kwargs)
    return [(a.rule.id, tuple(e.id for e in a.events)) for a in evaluate(ruleset, DOCS)]


def test_later_texts_replace_by_reference_and_disabled_rules_never_alert() -> None:
    assert _raised(RULE) == [(RULE_ID, ("e-0",)), (RULE_ID, ("e-1",)), (RULE_ID, ("e-2",))]
    tuned = RULE.replace("verb: get", "verb: list")
    ruleset = build([RuleText(RULE, "bundled", "a.yml"), RuleText(tuned, "api", "api:x")])
    assert ruleset.origins[RULE_ID].origin == "api" and evaluate(ruleset, DOCS) == []
    assert _raised(RULE, disabled=[RULE_ID]) == []
    assert build([RuleText(RULE, "bundled", "a.yml")], disabled=[RULE_ID]).infos[RULE_ID].enabled is False


def test_a_disabled_correlation_keeps_its_rules_quiet() -> None:
    assert _raised(RULE, CORRELATION) == [(CORRELATION_ID, ("e-0", "e-2"))]
    assert _raised(RULE, CORRELATION, disabled=[CORRELATION_ID]) == []
    # A correlation naming the disabled one cannot run: reported, the rest of the set still loads.
    ruleset = build(
        [RuleText(RULE, "d", "a.yml"), RuleText(CORRELATION, "d", "b.yml"), RuleText(PARENT, "d", "c.yml")],
        disabled=[CORRELATION_ID],
    )
    assert ruleset.infos[PARENT_ID].rule_class == "invalid"
    assert [p.rule for p in ruleset.problems] == [PARENT_ID]
    assert [c.title for c in ruleset.correlations] == []


def test_filters_exclude_from_the_rules_they_name() -> None:
    filtered = _raised(RULE, filters=[RuleText(FILTER, "api", "api:filters/1")])
    assert filtered == [(RULE_ID, ("e-0",)), (RULE_ID, ("e-2",))]
    in_a_file = build([RuleText(RULE + "---\n" + FILTER, "directory", "a.yml")])
    assert in_a_file.infos[RULE_ID].filters == ["0d6c3f2a-1b4e-4c5d-9e6f-7a8b9c0d1e10"]
    assert [a.events[0].id for a in evaluate(in_a_file, DOCS)] == ["e-0", "e-2"]
    assert _raised(RULE, FILTER, disabled=["0d6c3f2a-1b4e-4c5d-9e6f-7a8b9c0d1e10"]) == _raised(RULE)
    unmapped = FILTER.replace("user.username", "NoSuchField")
    ruleset = build([RuleText(RULE, "d", "a.yml")], filters=[RuleText(unmapped, "api", "api:filters/2")])
    assert ruleset.infos[RULE_ID].rule_class == "unmapped" and ruleset.rules == []
