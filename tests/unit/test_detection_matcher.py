"""The matcher (security/detection/matcher.py) on whole documents equals the reference: flatten the document,
evaluate every rule (auditd's per-record rules on one view per record), in rule order, with the same views.
Its shortcuts (selecting only the fields rules read, the index, the every-value text only when needed) must
change nothing, whatever shape the document has."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest
from sigma.exceptions import SigmaError
from sigma.rule import SigmaRule
from sigma.types import SigmaString, SpecialChars

from security import ecs
from security.detection.matcher import Matcher, Selection, dataset_of, flat_view, record_views
from security.ecs import flatten
from security.sigma import SigmaCompileError
from security.sigma.index import evaluate_all
from security.sigma.routing import RoutedRule, RuleClass, classify, compile_routed, detection_items
from security.sources.auditd import AuditdAdapter
from security.sources.base import Adapter, Line, Parsed
from security.sources.k8s_audit import KubernetesAuditAdapter
from security.sources.suricata import SuricataAdapter
from tests.shared_data import shared_file
from tests.source_samples import run_sample

RULE_DIRS = ("linux", "application/kubernetes", "network")
AUDITD_LOGS = ("test.log", "test2.log", "test3.log", "test4.log")


def reference(
    rules: list[RoutedRule], doc: Mapping[str, Any]
) -> list[tuple[int, int | None, dict[str, Any]]]:
    """(rule position, record, view) of every match, the slow and obvious way."""
    flat = dict(flatten(doc))
    out: list[tuple[int, int | None, dict[str, Any]]] = []
    for position, rule in enumerate(rules):
        route = rule.routing.route
        assert route is not None
        if route.per_record:
            for record, view in record_views(flat, route.per_record):
                if evaluate_all([rule], view):
                    out.append((position, record, view))
        elif evaluate_all([rule], flat):
            out.append((position, None, flat))
    # The matcher reports whole-event matches first, then each list's records in order.
    return sorted(out, key=lambda hit: (hit[1] is not None, hit[1] or 0, hit[0]))


def _routed_sigmahq() -> list[RoutedRule]:
    rules = []
    for directory in RULE_DIRS:
        for path in sorted(shared_file(f"sigmahq-sigma/rules/{directory}").rglob("*.yml")):
            try:
                rule = SigmaRule.from_yaml(path.read_text(encoding="utf-8"), collect_errors=False)
                if classify(rule).rule_class is RuleClass.MAPPED:
                    rules.append(compile_routed(rule))
            except (SigmaError, SigmaCompileError):
                continue
    return rules


def _sample(value: Any) -> str | None:
    """A text a Sigma string value matches: wildcards filled with a letter."""
    if not isinstance(value, SigmaString):
        return None
    return "".join(
        p if isinstance(p, str) else "x" if p is SpecialChars.WILDCARD_MULTI else "y" for p in value.s
    )


def _generated(rule: RoutedRule) -> dict[str, Any]:
    """A document built from the rule's own values (a likely match): its fields nested as refsys stores them,
    a per-record rule's under a record of ``auditd.records`` after another record, keywords in a message."""
    route = rule.routing.route
    assert route is not None
    flat: dict[str, Any] = {
        "event.dataset": route.dataset,
        **{k: sorted(v)[0] for k, v in route.where.items()},
    }
    record: dict[str, Any] = {}
    prefix = f"{route.per_record}."
    for item in detection_items(rule.compiled.rule):
        text = next((t for t in map(_sample, item.value) if t is not None), None)
        if text is None:
            continue
        if item.field is None:
            flat.setdefault("message", text)
        elif route.per_record and item.field.startswith(prefix):
            record.setdefault(item.field[len(prefix) :], text)
        else:
            flat.setdefault(item.field, text)
    doc: dict[str, Any] = {}
    for name, value in flat.items():
        ecs.put(doc, name, value)
    if route.per_record:
        ecs.put(doc, route.per_record, [{"type": "CWD", "cwd": "/"}, record])
    return doc


def _docs() -> list[dict[str, Any]]:
    """Shared real events as refsys's adapters normalise them (documents, not flattened)."""
    docs: list[tuple[str, dict[str, Any]]] = []
    k8s = KubernetesAuditAdapter()
    for trace in sorted(shared_file("falco-legacy-tests/test/trace_files/k8s_audit").glob("*.json")):
        docs.extend((k8s.dataset, d) for d in run_sample(k8s, trace).docs)
    suricata = SuricataAdapter()
    eve = shared_file("suricata-stamus-analytics/jupyter/Notebooks/training/data/02/eve.json")
    docs.extend((suricata.dataset, d) for d in run_sample(suricata, eve).docs)
    auditd: Adapter = AuditdAdapter()
    for name in AUDITD_LOGS:
        raw = shared_file(f"linux-audit-userspace/auparse/test/{name}").read_bytes()
        lines = [Line(n, r.rstrip(b"\r")) for n, r in enumerate(raw.splitlines(), start=1)]
        docs.extend(("auditd.log", o.doc) for o in auditd.parse(lines) if isinstance(o, Parsed))
    return [{**d, "event": {**d.get("event", {}), "dataset": ds}} for ds, d in docs]


def test_matcher_equals_evaluating_every_rule_on_real_documents() -> None:
    rules = _routed_sigmahq()
    matcher = Matcher(rules)
    position = {id(rule): n for n, rule in enumerate(rules)}
    docs = _docs() + [_generated(rule) for rule in rules]
    # The same documents in shapes the shortcuts must see through: the dataset and a field spelled as one
    # dotted key, a mapping that is not a dict, and upper-cased values (matching is case-insensitive).
    reshaped: list[Any] = []
    for doc in docs[:60]:
        dotted = {k: v for k, v in doc.items() if k != "event"}
        dotted["event.dataset"] = doc["event"]["dataset"]
        dotted["event"] = {k: v for k, v in doc["event"].items() if k != "dataset"}
        reshaped.append(dotted)
        reshaped.append(MappingProxyType(doc))
        reshaped.append({k: (v.upper() if isinstance(v, str) else v) for k, v in doc.items()})
    matches = 0
    for doc in [*docs, *reshaped]:
        expected = reference(rules, doc)
        got = [(position[id(m.rule)], m.record, dict(m.flat)) for m in matcher.match(doc)]
        assert got == expected, doc
        matches += len(expected)
    print(f"\n{len(rules)} rules, {len(docs) + len(reshaped)} documents, {matches} matches, all equal")
    assert len(docs) > 500 and matches > 200


@pytest.mark.parametrize(
    "doc",
    [
        {"a": {"b.c": 1, "b": {"c": 2}}, "x": 1},
        {"a.b": {"c": 5}, "a": {"b": {"c": 6}}},
        {"a": {"b": {"c": [1, {"d": 2}]}}, 3: {"b": 1}},
        {"a": {"b": {"c": {"d": 1}}}, "a.b.c": 7},
        {"a": {"b": None}, "x": {}},
        {"a": MappingProxyType({"b": {"c": "t"}})},
        {"a": ("tuple", 1), "x": b"bytes"},
    ],
)
def test_selection_equals_flattening(doc: dict[Any, Any]) -> None:
    for paths in (["a.b.c", "x"], ["a.b", "a.b.c", "3.b", "a"], ["a.b.c.d"]):
        selection = Selection(paths)
        assert selection(doc) == {k: v for k, v in flat_view(doc).items() if k in selection.paths}
        assert flat_view(doc) == dict(flatten(doc))


def test_dataset_of_reads_it_as_flattening_does() -> None:
    for doc in (
        {"event": {"dataset": "a"}},
        {"event.dataset": "b", "event": {"dataset": "a"}},
        {"event": "x"},
        {},
    ):
        assert dataset_of(doc) == dict(flatten(doc)).get("event.dataset")
    assert dataset_of({"event": {"dataset": "a"}, "event.dataset": "b"}) == "b"
