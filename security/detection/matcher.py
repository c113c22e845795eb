"""Which compiled rules an event matches: routing by dataset, the atom index, and auditd's per-record rules.

Why per record: auditd rules select on one record (``type: EXECVE`` and ``a0: chmod``); evaluating them over the
whole event would let ``type`` come from one record and ``a0`` from another. A per-record rule therefore meets
one flat view per record: the event's other fields plus that record's keys under ``auditd.records.``.

Why not flatten every event: most events match nothing, and the index only needs the fields its rules read.
So a document is first *selected*: only the paths some rule (or route) reads are taken out of it, exactly as
``security.ecs.flatten`` would give them. The index rules events out on that; a keyword-free rule is evaluated
on it as well (it reads nothing else); the whole flat view is built only for keyword rules (they search every
value) and for the matches themselves (alerts carry the event's fields).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from security.sigma.index import Group, RuleIndex
from security.sigma.routing import RoutedRule

FlatEvent = dict[str, Any]
_LEAVES = frozenset({str, int, float, bool, list, type(None)})
"""Value types that are leaves without an ``isinstance(value, Mapping)`` check (the common case, cheaply)."""


@dataclass(frozen=True)
class RuleMatch:
    """One rule matching one event; ``record`` is the auditd record's position for per-record rules."""

    rule: RoutedRule
    flat: Mapping[str, Any]
    """The flat view the rule matched (the record's view for per-record rules): matched fields come from it."""
    record: int | None = None


def _flatten_into(out: FlatEvent, node: Mapping[str, Any], prefix: str) -> None:
    for key, value in node.items():
        path = prefix + key if key.__class__ is str else f"{prefix}{key}"
        kind = value.__class__
        if kind is dict or (kind not in _LEAVES and isinstance(value, Mapping)):
            _flatten_into(out, value, path + ".")
        else:
            out[path] = value


def flat_view(doc: Mapping[str, Any], prefix: str = "") -> FlatEvent:
    """``dict(security.ecs.flatten(doc, prefix))``, without a generator per level."""
    out: FlatEvent = {}
    _flatten_into(out, doc, prefix)
    return out


_LEAF = None
"""The trie key marking where a path ends (never a part: parts are text)."""
_MISSING = object()


def _trie(paths: Iterable[str]) -> dict[Any, Any]:
    """Dotted paths as nested dicts of their parts; ``{_LEAF: True}`` where a path ends."""
    root: dict[Any, Any] = {}
    for path in paths:
        node = root
        for part in path.split("."):
            node = node.setdefault(part, {})
        node[_LEAF] = True
    return root


class _Dotted(Exception):
    """A document the compiled selection cannot read plainly: the general walk reads it instead."""


class Selection:
    """Takes given flat paths out of a nested document, as ``flat_view`` would give them, visiting only the
    objects on the way to them.

    The usual document (plain dicts, no key holding a dot) is read by a function compiled for the paths: one
    ``get`` per part. Any other (a key with a dot, ``{"a.b": 1}``, may spell a path another way; a key that is not
    text; a mapping that is not a dict) goes through the general walk, which finds each path as flattening
    does, the last one winning.
    """

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = frozenset(paths)
        self._root = _trie(self.paths)
        lines = ["def select(doc):", " out = {}", " if '.' in ''.join(doc): raise _Dotted"]
        self._compile(self._root, "doc", "", 1, lines, itertools.count())
        lines.append(" return out")
        scope: dict[str, Any] = {"_Dotted": _Dotted, "_MISSING": _MISSING, "_LEAVES": _LEAVES}
        exec("\n".join(lines), scope)  # noqa: S102 - code built from the rule set's own field names, quoted by repr
        self._compiled: Callable[[Mapping[str, Any]], FlatEvent] = scope["select"]

    def _compile(
        self, trie: dict[Any, Any], node: str, prefix: str, depth: int, lines: list[str], names: Iterator[int]
    ) -> None:
        pad = " " * depth
        for part, sub in trie.items():
            if part is _LEAF:
                continue
            value = f"v{next(names)}"
            lines.append(f"{pad}{value} = {node}.get({part!r}, _MISSING)")
            lines.append(f"{pad}if {value}.__class__ is dict:")
            if any(k is not _LEAF for k in sub):
                lines.append(f"{pad} if '.' in ''.join({value}): raise _Dotted")
                self._compile(sub, value, prefix + part + ".", depth + 1, lines, names)
            else:
                lines.append(f"{pad} pass")
            lines.append(f"{pad}elif {value}.__class__ in _LEAVES:")
            lines.append(f"{pad} out[{prefix + part!r}] = {value}" if _LEAF in sub else f"{pad} pass")
            lines.append(f"{pad}elif {value} is not _MISSING: raise _Dotted")

    def __call__(self, doc: Mapping[str, Any]) -> FlatEvent:
        if doc.__class__ is dict:
            try:
                return self._compiled(doc)
            except (_Dotted, TypeError):  # TypeError: a key that is not text
                pass
        out: FlatEvent = {}
        self._walk(out, doc, self._root, "")
        return out

    def _walk(self, out: FlatEvent, node: Mapping[str, Any], trie: dict[Any, Any], prefix: str) -> None:
        for key, value in node.items():
            path = prefix + key if key.__class__ is str else f"{prefix}{key}"
            sub: dict[Any, Any] | None = trie
            for part in path[len(prefix) :].split("."):
                sub = sub.get(part) if sub is not None else None
            if sub is None:
                continue
            if value.__class__ not in _LEAVES and isinstance(value, Mapping):
                self._walk(out, value, sub, path + ".")
            elif _LEAF in sub:
                out[path] = value


def record_views(flat: Mapping[str, Any], list_field: str) -> Iterator[tuple[int, FlatEvent]]:
    """One flat view per item of ``list_field``: the event's other fields plus the item's under the list's name."""
    items = flat.get(list_field)
    if not isinstance(items, list):
        return
    base = {k: v for k, v in flat.items() if k != list_field}
    for position, item in enumerate(items):
        if isinstance(item, Mapping):
            view = dict(base)
            _flatten_into(view, item, list_field + ".")
            yield position, view


class _Event:
    """One document as the matcher sees it: the selected fields, the whole flat view once someone needs it."""

    __slots__ = ("_flat", "doc", "selected")

    def __init__(self, doc: Mapping[str, Any], selected: FlatEvent) -> None:
        self.doc = doc
        self.selected = selected
        self._flat: FlatEvent | None = None

    @property
    def flat(self) -> FlatEvent:
        if self._flat is None:
            self._flat = flat_view(self.doc)
        return self._flat

    def record_view(self, list_field: str, own: FlatEvent) -> FlatEvent:
        """A record's whole view (``record_views``): the event without the list, plus the record's fields."""
        view = {k: v for k, v in self.flat.items() if k != list_field}
        view.update(own)
        return view


def dataset_of(doc: Mapping[str, Any]) -> Any:
    """``flat_view(doc).get("event.dataset")`` without flattening: ``event.dataset`` written as one key, or
    under ``event`` (the usual case); when both, flattening keeps the later, so the general path decides."""
    if "event.dataset" in doc:
        return Selection(["event.dataset"])(doc).get("event.dataset")
    event = doc.get("event")
    if event.__class__ is dict or isinstance(event, Mapping):
        value = event.get("dataset")
        return None if value.__class__ is dict or isinstance(value, Mapping) else value
    return None


@dataclass(frozen=True)
class _Plan:
    """What one dataset's events meet: the groups (whole event, per record) and the fields to select."""

    whole: list[Group[RoutedRule]]
    records: list[tuple[str, RuleIndex[RoutedRule], list[Group[RoutedRule]]]]
    select: Selection


def _flat_anywhere(group: Group[RoutedRule], event: _Event) -> set[int]:
    return group.anywhere(event.flat)


def _record_anywhere(
    cache: list[set[int] | None], number: int, group: Group[RoutedRule], event: _Event, own: FlatEvent
) -> set[int]:
    """A record view's every-value atoms: the event's other values (found once per event) plus the record's."""
    found = cache[number]
    if found is None:
        found = cache[number] = group.anywhere(event.flat)
    return found | group.anywhere(own)


class Matcher:
    """Evaluates a fixed list of routed rules on events; equal to evaluating every rule, only faster."""

    def __init__(self, rules: Iterable[RoutedRule]) -> None:
        rules = list(rules)
        self.rules = rules
        self._whole = RuleIndex(
            [r for r in rules if r.routing.route is None or not r.routing.route.per_record]
        )
        per_record: dict[str, list[RoutedRule]] = {}
        for rule in rules:
            route = rule.routing.route
            if route is not None and route.per_record:
                per_record.setdefault(route.per_record, []).append(rule)
        self._per_record = {name: RuleIndex(group) for name, group in per_record.items()}
        self._plans: dict[Any, _Plan | None] = {}

    def _plan(self, dataset: Any) -> _Plan | None:
        """The plan of a dataset (None: no rule reads its events), made on its first event and kept."""
        if dataset.__class__ is not str:
            dataset = None  # every non-text dataset meets the same groups: only unrouted rules'
        plan = self._plans.get(dataset, False)
        if plan is not False:
            return plan  # type: ignore[return-value]
        whole = self._whole.groups_for(dataset)
        records = [(n, i, gs) for n, i in self._per_record.items() if (gs := i.groups_for(dataset))]
        paths = {"event.dataset", *(f for g in whole for f in g.fields)}
        for name, _, groups in records:
            paths |= {name, *(f for g in groups for f in g.fields)}
        made = _Plan(whole, records, Selection(paths)) if whole or records else None
        if len(self._plans) < 1024:  # datasets are few; a flood of made-up ones is not remembered
            self._plans[dataset] = made
        return made

    def match(self, doc: Mapping[str, Any]) -> list[RuleMatch]:
        """Every rule the document matches; a per-record rule matches at most once per record."""
        plan = self._plan(dataset_of(doc))
        if plan is None:
            return []
        event = _Event(doc, plan.select(doc))
        hits = self._match_whole(event, plan.whole) if plan.whole else []
        for name, index, groups in plan.records:
            hits += self._match_records(event, name, index, groups)
        return hits

    def _match_whole(self, event: _Event, groups: list[Group[RoutedRule]]) -> list[RuleMatch]:
        index, view = self._whole, event.selected
        positions: list[int] = []
        for group in groups:
            positions += group.candidates(group.fielded(view), partial(_flat_anywhere, group, event))
        if not positions:
            return []
        if len(groups) > 1:
            positions.sort()
        return [
            RuleMatch(index.rules[p], event.flat)
            for p in positions
            if index.accepts(p, event.flat if index.reads_everything(p) else view)
        ]

    def _match_records(
        self, event: _Event, name: str, index: RuleIndex[RoutedRule], groups: list[Group[RoutedRule]]
    ) -> list[RuleMatch]:
        """Per record: the atoms of the event's other fields are found once, each record's added to them."""
        items = event.selected.get(name)
        if not isinstance(items, list):
            return []
        base = {k: v for k, v in event.selected.items() if k != name}
        prefix = name + "."
        fielded = [group.fielded(base) for group in groups]
        anywhere: list[set[int] | None] = [None] * len(groups)
        hits: list[RuleMatch] = []
        for position, item in enumerate(items):
            if not isinstance(item, Mapping):
                continue
            own = flat_view(item, prefix)
            candidates: list[int] = []
            for number, group in enumerate(groups):
                every_value = partial(_record_anywhere, anywhere, number, group, event, own)
                candidates += group.candidates(fielded[number] | group.fielded(own), every_value)
            if not candidates:
                continue
            if len(groups) > 1:
                candidates.sort()
            view = {**base, **own}
            full: FlatEvent | None = None
            for candidate in candidates:
                if index.reads_everything(candidate):
                    full = full if full is not None else event.record_view(name, own)
                    matched = index.accepts(candidate, full)
                else:
                    matched = index.accepts(candidate, view)
                if matched:
                    full = full if full is not None else event.record_view(name, own)
                    hits.append(RuleMatch(index.rules[candidate], full, position))
        return hits
