"""Index compiled Sigma rules so each event meets only the rules that could match it.

Why: evaluating every rule on every event costs (rules x events) predicate calls, and almost all of them fail.
Two cheap facts rule most of them out before any predicate runs:

* the log source: a routed rule only ever matches events of its route's dataset, so rules are grouped by
  ``event.dataset`` and an event only meets its own group (plus unrouted rules, which read any event);
* literal tokens: most detections cannot match unless some literal (``*\\\\whoami.exe``, ``kubectl``) occurs in
  one of the event's values. ``requirement`` derives, from the compiled condition tree, a set of lower-case
  tokens at least one of which any match needs. One Aho-Corasick pass over the event's lower-cased values finds
  the tokens present, and only rules whose requirement is met (plus the rules with no requirement) run.

Correctness first: a requirement is only a *necessary* condition, derived conservatively (AND: any child's; OR:
only when every branch has one, the union; keywords: their literal, as they are searched within values; NOT,
regex, CIDR, numbers, null, exists, fieldref: none),
so the index never drops a true match; the differential test compares it with evaluating every rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import ahocorasick
from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.rule import SigmaRule
from sigma.types import SigmaCasedString, SigmaExpansion, SigmaString

from security.sigma.compiler import CompiledRule
from security.sigma.conditions import Event
from security.sigma.routing import Route, RoutedRule
from security.sigma.values import as_text, simple_string

Requirement = frozenset[str] | None
"""Tokens of which at least one must occur (lower-cased) in some event value for a match; None: no such set."""

R = TypeVar("R", CompiledRule, RoutedRule)

_FOLD_OUTSIDE_ASCII = frozenset("ks")
"""ASCII letters RE2's case-insensitive matching also equates with a non-ASCII letter (K: Kelvin sign, s: long s),
which Python's ``lower()`` keeps apart: a regex-compiled wildcard string holding them yields no token."""


def _best(requirements: Iterable[frozenset[str]]) -> Requirement:
    """Of several sufficient requirements (AND), the most selective: fewest alternatives, then longest tokens."""
    ranked = sorted(requirements, key=lambda r: (len(r), -min(len(t) for t in r)))
    return ranked[0] if ranked else None


def string_requirement(value: SigmaString) -> Requirement:
    """The literal a string value needs: its longest literal run between wildcards, lower-cased.

    Only ASCII tokens: Python lower-cases some non-ASCII letters depending on context (final sigma), so a
    non-ASCII literal could fail to appear in the lower-cased event text while the matcher still matches.
    """
    simple = simple_string(value)
    if simple is not None:
        token = simple.literal.lower()
        return frozenset({token}) if token and token.isascii() else None
    runs = [p for p in value.s if isinstance(p, str) and p and p.isascii()]
    if not isinstance(value, SigmaCasedString):
        runs = [p for p in runs if not _FOLD_OUTSIDE_ASCII & set(p.lower())]
    if not runs:
        return None
    return frozenset({max(runs, key=len).lower()})


def value_requirement(value: Any) -> Requirement:
    """A field value's requirement: strings give their literal, expansions (base64offset, windash) the union."""
    if isinstance(value, SigmaExpansion):
        alternatives = [value_requirement(v) for v in value.values]
        if not alternatives or any(a is None for a in alternatives):
            return None
        return frozenset().union(*(a for a in alternatives if a is not None))
    if isinstance(value, SigmaString):
        return string_requirement(value)
    return None


def requirement(node: Any) -> Requirement:
    """The necessary-token set of one node of pySigma's parsed condition tree (see the module doc)."""
    if isinstance(node, ConditionAND):
        return _best(r for r in (requirement(a) for a in node.args) if r is not None)
    if isinstance(node, ConditionOR):
        return _any_of([requirement(a) for a in node.args])
    if isinstance(node, ConditionFieldEqualsValueExpression | ConditionValueExpression):
        # A keyword is searched within the event's values, so its literal must occur in one of them too.
        return value_requirement(node.value)
    return None  # NOT, and anything unknown: always evaluate


def _any_of(requirements: Sequence[Requirement]) -> Requirement:
    if not requirements or any(r is None for r in requirements):
        return None
    return frozenset().union(*(r for r in requirements if r is not None))


def rule_requirement(rule: SigmaRule) -> Requirement:
    """A rule matches when any of its conditions does, so its requirement is the OR of theirs."""
    return _any_of([requirement(c.parsed) for c in rule.detection.parsed_condition])


def _compiled(rule: CompiledRule | RoutedRule) -> CompiledRule:
    return rule.compiled if isinstance(rule, RoutedRule) else rule


def _route(rule: CompiledRule | RoutedRule) -> Route | None:
    return rule.routing.route if isinstance(rule, RoutedRule) else None


class _Group(Generic[R]):
    """The rules of one dataset: an automaton over their tokens, and the rules every event must meet."""

    def __init__(self, rules: Sequence[tuple[int, R]]) -> None:
        self.always: list[int] = []
        by_token: dict[str, list[int]] = {}
        for position, rule in rules:
            needed = rule_requirement(_compiled(rule).rule)
            if needed is None:
                self.always.append(position)
            else:
                for token in needed:
                    by_token.setdefault(token, []).append(position)
        self.automaton: Any = None
        if by_token:
            self.automaton = ahocorasick.Automaton()
            for token, positions in by_token.items():
                self.automaton.add_word(token, tuple(positions))
            self.automaton.make_automaton()

    def candidates(self, haystack: str) -> list[int]:
        """Positions (in index order) of the rules this event's text could satisfy."""
        found = set(self.always)
        if self.automaton is not None:
            for _end, positions in self.automaton.iter(haystack):
                found.update(positions)
        return sorted(found)


def event_text(event: Event) -> str:
    """The event's values as one lower-cased text, as the string matchers see them (lists item by item).

    A NUL joins values so a token cannot straddle two of them, except by an extra evaluation, never a miss.
    """
    parts: list[str] = []
    for value in event.values():
        for item in value if isinstance(value, list) else (value,):
            text = as_text(item)
            if text is not None:
                parts.append(text.lower())
    return "\x00".join(parts)


@dataclass
class IndexStats:
    """How much the index saved: evaluations done versus what evaluating every rule would have cost."""

    events: int = 0
    evaluated: int = 0
    skipped: int = 0


class RuleIndex(Generic[R]):
    """Rules grouped by dataset and token; ``matches(event)`` equals evaluating every rule, in rule order.

    A routed rule meets an event when its route accepts it and its predicate matches; an unrouted
    ``CompiledRule`` (the flat regression pipeline) meets every event.
    """

    def __init__(self, rules: Iterable[R]) -> None:
        self.rules: list[R] = list(rules)
        unrouted: list[tuple[int, R]] = []
        grouped: dict[str, list[tuple[int, R]]] = {}
        for position, rule in enumerate(self.rules):
            route = _route(rule)
            if route is None:
                unrouted.append((position, rule))
            else:
                grouped.setdefault(route.dataset, []).append((position, rule))
        self._unrouted: _Group[R] = _Group(unrouted)
        self._groups: dict[str, _Group[R]] = {d: _Group(rs) for d, rs in grouped.items()}
        self.stats = IndexStats()

    def matches(self, event: Event) -> list[R]:
        """The rules matching a flat event."""
        dataset = event.get("event.dataset")
        group = self._groups.get(dataset) if isinstance(dataset, str) else None
        text = event_text(event)
        positions: list[int] = self._unrouted.candidates(text)
        if group is not None:
            positions = sorted(set(positions).union(group.candidates(text)))
        self.stats.events += 1
        self.stats.evaluated += len(positions)
        self.stats.skipped += len(self.rules) - len(positions)
        hits: list[R] = []
        for position in positions:
            rule = self.rules[position]
            route = _route(rule)
            if (route is None or route.accepts(event)) and _compiled(rule).matches(event):
                hits.append(rule)
        return hits


def evaluate_all(rules: Iterable[R], event: Event) -> list[R]:
    """The reference the index must equal: every rule evaluated on the event, in rule order."""
    return [
        rule
        for rule in rules
        if ((route := _route(rule)) is None or route.accepts(event)) and _compiled(rule).matches(event)
    ]


__all__ = [
    "IndexStats",
    "Requirement",
    "RuleIndex",
    "evaluate_all",
    "event_text",
    "requirement",
    "rule_requirement",
]
