"""Index compiled Sigma rules so each event meets only the rules that could match it.

Why: evaluating every rule on every event costs (rules x events) predicate calls, and almost all of them fail.
Two cheap facts rule most of them out before any predicate runs:

* the log source: a routed rule only ever matches events of its route's dataset, so rules are grouped by
  ``event.dataset`` and an event only meets its own group (plus unrouted rules, which read any event);
* literals: most detections cannot match unless certain literals occur in certain fields. ``requirement``
  derives from the compiled condition tree a *requirement*: clauses that must all hold, each a set of atoms of
  which at least one must hold. An atom is a literal with its place: equal to a field (``type`` is ``execve``),
  at the start of a field, at the end of any value, or anywhere in a value (keywords, ``contains``).

Per event and group, one text is built from the fields the group's atoms read, each value lower-cased once
and framed as ``\\x01<field id>\\x02<value>\\x03`` (every value of the event for groups with keyword rules, as
keywords search them all), and one Aho-Corasick pass finds every atom present: framed, an equality or a prefix
is a plain substring. Each rule is filed under one of its clauses (the one whose atoms the fewest other rules
share, so common atoms such as ``type: EXECVE`` trigger little), and only rules whose every clause then holds
reach their predicate.

Correctness first: a requirement is only a *necessary* condition, derived conservatively (AND: every child's
clauses; OR: the clauses of the disjunction, by distribution while small, else one clause per branch; NOT,
regex, CIDR, numbers, null, exists, fieldref: nothing), so the index never drops a true match; framing bytes
inside a value can only make an atom seem present, never hide it. Tests compare it with evaluating every rule.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, NamedTuple, TypeVar

import ahocorasick
from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.rule import SigmaRule
from sigma.types import SigmaExpansion, SigmaFieldReference, SigmaString

from security.sigma.compiler import CompiledRule
from security.sigma.conditions import Event, keyword_value
from security.sigma.routing import Route, RoutedRule
from security.sigma.values import as_text, simple_string

R = TypeVar("R", CompiledRule, RoutedRule)


class Atom(NamedTuple):
    """A literal that must occur, lower-cased, in an event value: ``field`` None means in any value."""

    field: str | None
    kind: str  # "equals", "startswith", "endswith" or "contains"
    literal: str


Clause = frozenset[Atom]
Requirement = frozenset[Clause]
"""Clauses that must all hold, each by one of its atoms; the empty requirement is always met."""

NOTHING: Requirement = frozenset()
_DISTRIBUTE_MAX = 256
"""Clauses an OR may distribute into (``(a and b) or c`` -> ``(a or c) and (b or c)``); beyond, the branch with
the most clauses keeps only its best one until the product fits: distributing keeps every branch's
constraints, but the product grows fast."""

LONG_S = "\u017f"
"""RE2's case-insensitive matching equates ``s`` with the long s, which Python's ``lower()`` keeps apart (the
Kelvin sign, RE2's other ASCII fold, lower-cases to ``k``): texts and literals alike read it as ``s``, so a
regex-compiled wildcard string still yields its literals as atoms."""


def _clause_rank(clause: Clause) -> tuple[int, int]:
    """Fewer alternatives and longer literals first: a guess at the more selective clause."""
    return (len(clause), -min(len(a.literal) for a in clause))


def _and(requirements: Iterable[Requirement]) -> Requirement:
    return frozenset().union(*requirements)


def _or(requirements: Sequence[Requirement]) -> Requirement:
    """The disjunction of several requirements, in clause form; any branch without one leaves none."""
    if not requirements or any(not r for r in requirements):
        return NOTHING
    requirements = list(requirements)
    while math.prod(len(r) for r in requirements) > _DISTRIBUTE_MAX:
        widest = max(range(len(requirements)), key=lambda i: len(requirements[i]))
        requirements[widest] = frozenset({min(requirements[widest], key=_clause_rank)})
    clauses = {frozenset().union(*choice) for choice in itertools.product(*requirements)}
    return frozenset(c for c in clauses if not any(o < c for o in clauses))  # drop the weaker supersets


_SIGMAS = frozenset("\u03c3\u03c2")
"""Python lower-cases capital sigma by context (final or not): texts are lower-cased joined, so a literal with a
sigma could differ from its value lower-cased alone; such literals give no atom."""


def _literal(text: str) -> str | None:
    """A literal as atoms hold it: lower-cased, the long s read as ``s`` (``LONG_S``), as event texts are."""
    lowered = text.lower().replace(LONG_S, "s")
    return None if _SIGMAS & set(lowered) else lowered


def _runs(field: str | None, value: SigmaString) -> Requirement:
    """A regex-compiled wildcard string: each literal run must occur, the first/last anchored when it is.

    Only ASCII runs (RE2 folds case by Unicode's simple folding, not as ``lower()``) without ``?`` (RE2 sees a
    lone surrogate as ``?``).
    """
    parts = list(value.s)
    clauses: set[Clause] = set()
    for position, part in enumerate(parts):
        if not (isinstance(part, str) and part and part.isascii() and "?" not in part):
            continue
        kind = "contains"
        if position == 0:
            kind = "startswith"
        elif position == len(parts) - 1:
            kind = "endswith"
        literal = _literal(part)
        if literal is not None:
            clauses.add(frozenset({Atom(field, kind, literal)}))
    return frozenset(clauses)


def string_requirement(field: str | None, value: SigmaString) -> Requirement:
    """What a string value needs of ``field`` (None: a keyword, searched within any value)."""
    simple = simple_string(value)
    if simple is not None:
        if simple.cased and not simple.literal.isascii():
            return NOTHING  # compared as written: only an ASCII literal lower-cases like the value around it
        literal = _literal(simple.literal)
        if literal is None:
            return NOTHING
        kind = simple.kind
        if field is None and kind != "contains":
            return NOTHING  # keywords are always wrapped in wildcards; anything else is not ours to guess
        if not literal and kind in ("contains", "endswith"):
            return NOTHING
        return frozenset({frozenset({Atom(field, kind, literal)})})
    return _runs(field, value)


def value_requirement(field: str | None, value: Any) -> Requirement:
    """A value's requirement: strings their atoms, expansions (base64offset, windash) the OR of theirs."""
    if isinstance(value, SigmaExpansion):
        return _or([value_requirement(field, v) for v in value.values])
    if isinstance(value, SigmaString):
        return string_requirement(field, value)
    return NOTHING


def requirement(node: Any) -> Requirement:
    """The requirement of one node of pySigma's parsed condition tree (see the module doc)."""
    if isinstance(node, ConditionAND):
        return _and(requirement(a) for a in node.args)
    if isinstance(node, ConditionOR):
        return _or([requirement(a) for a in node.args])
    if isinstance(node, ConditionFieldEqualsValueExpression):
        return value_requirement(node.field, node.value)
    if isinstance(node, ConditionValueExpression):
        value = node.value
        if isinstance(value, SigmaExpansion):
            return _or([value_requirement(None, keyword_value(v)) for v in value.values])
        return value_requirement(None, keyword_value(value))
    return NOTHING  # NOT, and anything unknown: always evaluate


def rule_requirement(rule: SigmaRule) -> Requirement:
    """A rule matches when any of its conditions does, so its requirement is the OR of theirs."""
    return _or([requirement(c.parsed) for c in rule.detection.parsed_condition])


def route_requirement(route: Route | None) -> Requirement:
    """A route's ``where`` narrowing: the field equals one of the accepted values (compared as written)."""
    if route is None:
        return NOTHING
    clauses = []
    for name, values in route.where.items():
        literals = [_literal(v) for v in values]
        if literals and None not in literals:
            clauses.append(frozenset(Atom(name, "equals", lit) for lit in literals if lit is not None))
    return frozenset(clauses)


def _walk(node: Any) -> Iterable[Any]:
    yield node
    if isinstance(node, ConditionAND | ConditionOR | ConditionNOT):
        for arg in node.args:
            yield from _walk(arg)


def read_fields(rule: SigmaRule) -> tuple[frozenset[str], bool]:
    """The fields a rule's predicate reads, and whether it has keywords (which read every value)."""
    fields: set[str] = set()
    keywords = False
    for condition in rule.detection.parsed_condition:
        for node in _walk(condition.parsed):
            if isinstance(node, ConditionValueExpression):
                keywords = True
            elif isinstance(node, ConditionFieldEqualsValueExpression):
                fields.add(node.field)
                values = node.value.values if isinstance(node.value, SigmaExpansion) else [node.value]
                fields.update(v.field for v in values if isinstance(v, SigmaFieldReference))
    return frozenset(fields), keywords


def _compiled(rule: CompiledRule | RoutedRule) -> CompiledRule:
    return rule.compiled if isinstance(rule, RoutedRule) else rule


def _route(rule: CompiledRule | RoutedRule) -> Route | None:
    return rule.routing.route if isinstance(rule, RoutedRule) else None


def _texts(value: Any, opening: str, parts: list[str]) -> None:
    """Append ``opening`` and each text the string matchers would see in ``value`` (a list: each item)."""
    if value.__class__ is str:
        parts.append(opening)
        parts.append(value)
    elif value.__class__ is list:
        for item in value:
            text = item if item.__class__ is str else as_text(item)
            if text is not None:
                parts.append(opening)
                parts.append(text)
    elif (text := as_text(value)) is not None:
        parts.append(opening)
        parts.append(text)


def _scan_text(parts: list[str]) -> str:
    """The framed text: lower-cased in one call, which equals lower-casing each value (see ``_literal``)."""
    text = "".join(parts).lower()
    return text.replace(LONG_S, "s") if LONG_S in text else text


class Group(Generic[R]):
    """The rules of one dataset: which fields they read, one automaton over their atoms, and the filing.

    ``fields``: every field a rule's predicate or route reads (a view holding just these, as flattening gives
    them, evaluates a keyword-free rule exactly as the whole event would). Two texts are scanned: the *field
    text* (the values of fields atoms name, framed with the field) for every event, and the *every-value text*
    (every value, unframed) only when a keyword rule is still in question once the field text is known.
    """

    def __init__(self, rules: Sequence[tuple[int, R]]) -> None:
        requirements: dict[int, Requirement] = {}
        fields: set[str] = {"event.dataset"}
        keyword_rules: set[int] = set()
        for position, rule in rules:
            route = _route(rule)
            compiled = _compiled(rule)
            requirements[position] = _and([rule_requirement(compiled.rule), route_requirement(route)])
            read, keywords = read_fields(compiled.rule)
            fields |= read
            if route is not None:
                fields |= set(route.where)
            if keywords:
                keyword_rules.add(position)
        self.keyword_rules = frozenset(keyword_rules)
        self.fields: frozenset[str] = frozenset(fields)
        atoms = {a for r in requirements.values() for clause in r for a in clause}
        field_ids = {name: str(n) for n, name in enumerate(sorted({a.field for a in atoms if a.field}))}
        self.openings: dict[str, str] = {name: f"\x03\x01{fid}\x02" for name, fid in field_ids.items()}
        ids: dict[Atom, int] = {}
        self.automaton: Any = None
        patterns: dict[str, int] = {}
        for atom in sorted(atoms, key=lambda a: (a.field or "", a.kind, a.literal)):
            ids[atom] = patterns.setdefault(self._pattern(atom), len(patterns))
        if patterns:
            self.automaton = ahocorasick.Automaton()
            for pattern, number in patterns.items():
                self.automaton.add_word(pattern, number)
            self.automaton.make_automaton()
        self.always: list[int] = []
        self.trigger: dict[int, list[int]] = {}
        """Atom -> rules filed under it (a field-text clause of theirs)."""
        self.trigger_anywhere: dict[int, list[int]] = {}
        """Atom -> rules filed under it that only keyword clauses constrain (every-value text)."""
        self.rest: dict[int, tuple[frozenset[int], ...]] = {}
        """Rule -> its other field-text clauses, checked once it is reached."""
        self.rest_anywhere: dict[int, tuple[frozenset[int], ...]] = {}
        """Rule -> its clauses with a keyword atom: the every-value text may be needed to decide them."""
        shared = Counter(i for r in requirements.values() for i in {ids[a] for c in r for a in c})

        def rank(clause: frozenset[int]) -> tuple[int, int, list[int]]:
            # The clause fewest other rules share: it files the rule where the fewest events reach it.
            return (sum(shared[i] for i in clause), len(clause), sorted(clause))

        for position, needed in requirements.items():
            fielded = {frozenset(ids[a] for a in c) for c in needed if all(a.field for a in c)}
            anywhere = {frozenset(ids[a] for a in c) for c in needed if not all(a.field for a in c)}
            if fielded:
                first = min(fielded, key=rank)
                for number in first:
                    self.trigger.setdefault(number, []).append(position)
                self.rest[position] = tuple(c for c in fielded if c is not first)
                if anywhere:
                    self.rest_anywhere[position] = tuple(anywhere)
            elif anywhere:
                first = min(anywhere, key=rank)
                for number in first:
                    self.trigger_anywhere.setdefault(number, []).append(position)
                self.rest_anywhere[position] = tuple(c for c in anywhere if c is not first)
            else:
                self.always.append(position)

    def _pattern(self, atom: Atom) -> str:
        """The substring of the framed text that shows the atom: framing makes equals and starts plain."""
        opening = "\x02" if atom.field is None else self.openings[atom.field]  # None: a keyword, any value
        if atom.kind == "equals":
            return opening + atom.literal + "\x03"
        if atom.kind == "startswith":
            return opening + atom.literal
        # Ends and insides are searched in every framed value: found elsewhere, the rule is merely evaluated.
        return atom.literal + "\x03" if atom.kind == "endswith" else atom.literal

    def fielded(self, view: Mapping[str, Any]) -> set[int]:
        """Atoms found in the field text of ``view``: the values of the fields atoms name, each framed."""
        if self.automaton is None:
            return set()
        parts: list[str] = []
        openings = self.openings
        if len(view) < len(openings):
            for name, value in view.items():
                opening = openings.get(name)
                if opening is None:
                    continue
                if value.__class__ is str:  # the common case, without a call
                    parts.append(opening)
                    parts.append(value)
                elif value is not None:
                    _texts(value, opening, parts)
        else:
            for name, opening in openings.items():
                value = view.get(name)
                if value.__class__ is str:
                    parts.append(opening)
                    parts.append(value)
                elif value is not None:
                    _texts(value, opening, parts)
        if not parts:
            return set()
        parts.append("\x03")
        return {number for _end, number in self.automaton.iter(_scan_text(parts))}

    def anywhere(self, view: Mapping[str, Any]) -> set[int]:
        """Atoms found in the every-value text of ``view``: each value framed as ``\\x02value\\x03``."""
        if self.automaton is None:
            return set()
        values = view.values()
        parts = ["\x03\x02", "\x03\x02".join([v for v in values if v.__class__ is str])]
        for value in values:
            if value.__class__ is not str and value is not None:
                _texts(value, "\x03\x02", parts)
        parts.append("\x03")
        return {number for _end, number in self.automaton.iter(_scan_text(parts))}

    def candidates(self, found: set[int], anywhere: Callable[[], set[int]]) -> list[int]:
        """Positions (in index order) of the rules whose every clause holds.

        ``found``: the atoms of the field text; ``anywhere()``: those of the every-value text, asked for only
        when a keyword clause is left to decide (it costs a pass over every value).
        """
        rest, rest_anywhere = self.rest, self.rest_anywhere
        reached: set[int] = set()
        for number in found:
            positions = self.trigger.get(number)
            if positions is not None:
                reached.update(positions)
        out: list[int] = []
        undecided: list[int] = []
        for p in reached:
            if all(not c.isdisjoint(found) for c in rest[p]):
                if p in rest_anywhere and not all(not c.isdisjoint(found) for c in rest_anywhere[p]):
                    undecided.append(p)
                else:
                    out.append(p)
        if undecided or self.trigger_anywhere:
            found = found | anywhere()
            out += [p for p in undecided if all(not c.isdisjoint(found) for c in rest_anywhere[p])]
            reached = set()
            for number in found:
                positions = self.trigger_anywhere.get(number)
                if positions is not None:
                    reached.update(positions)
            out += [p for p in reached if all(not c.isdisjoint(found) for c in rest_anywhere[p])]
        if self.always:
            out.extend(self.always)
        if len(out) > 1:
            out.sort()
        return out


@dataclass
class IndexStats:
    """How much the index saved: evaluations done versus what evaluating every rule would have cost."""

    events: int = 0
    evaluated: int = 0
    skipped: int = 0


class RuleIndex(Generic[R]):
    """Rules grouped by dataset and atoms; ``matches(event)`` equals evaluating every rule, in rule order.

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
        self.unrouted: Group[R] | None = Group(unrouted) if unrouted else None
        self.groups: dict[str, Group[R]] = {d: Group(rs) for d, rs in grouped.items()}
        self.fields: frozenset[str] = frozenset().union(
            *(g.fields for g in self.groups.values()), self.unrouted.fields if self.unrouted else ()
        )
        self.stats = IndexStats()

    def groups_for(self, dataset: Any) -> list[Group[R]]:
        """The groups an event of ``dataset`` meets: its dataset's, and the unrouted rules'."""
        group = self.groups.get(dataset) if dataset.__class__ is str else None
        if group is None:
            return [self.unrouted] if self.unrouted is not None else []
        return [group, self.unrouted] if self.unrouted is not None else [group]

    def candidates(self, view: Mapping[str, Any]) -> list[int]:
        """Positions (in rule order) of the rules the index cannot rule out for a flat ``view``."""
        groups = self.groups_for(view.get("event.dataset"))
        positions: list[int] = []
        for group in groups:
            positions += group.candidates(group.fielded(view), partial(group.anywhere, view))
        if len(groups) > 1:
            positions.sort()
        return positions

    def accepts(self, position: int, view: Event) -> bool:
        """Whether the rule at ``position`` matches ``view``: its route accepts it and its predicate holds."""
        rule = self.rules[position]
        route = _route(rule)
        return (route is None or route.accepts(view)) and _compiled(rule).matches(view)

    def matches(self, event: Event) -> list[R]:
        """The rules matching a flat event."""
        positions = self.candidates(event)
        self.stats.events += 1
        self.stats.evaluated += len(positions)
        self.stats.skipped += len(self.rules) - len(positions)
        return [self.rules[p] for p in positions if self.accepts(p, event)]

    def reads_everything(self, position: int) -> bool:
        """Whether the rule at ``position`` searches every value (keywords), so it needs the whole event."""
        route = _route(self.rules[position])
        group = self.unrouted if route is None else self.groups.get(route.dataset)
        return group is not None and position in group.keyword_rules


def evaluate_all(rules: Iterable[R], event: Event) -> list[R]:
    """The reference the index must equal: every rule evaluated on the event, in rule order."""
    return [
        rule
        for rule in rules
        if ((route := _route(rule)) is None or route.accepts(event)) and _compiled(rule).matches(event)
    ]


__all__ = [
    "Atom",
    "Group",
    "IndexStats",
    "Requirement",
    "RuleIndex",
    "evaluate_all",
    "read_fields",
    "requirement",
    "rule_requirement",
]
