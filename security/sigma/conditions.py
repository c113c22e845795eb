"""Compile pySigma's condition tree into nested closures over a flat event.

pySigma's ``SigmaCondition.parsed`` has already resolved identifiers, ``1 of x_*``/``all of them`` selectors
and each detection's AND/OR linking into a tree of ConditionAND/OR/NOT whose leaves are field=value or
keyword expressions, so this module only has to turn that tree into predicates; there is no second parser to
drift from pySigma's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.types import (
    SigmaExists,
    SigmaExpansion,
    SigmaFieldReference,
    SigmaNull,
    SigmaNumber,
    SigmaString,
    SigmaType,
    SpecialChars,
)

from security.sigma.errors import UnsupportedValue
from security.sigma.values import (
    Placeholders,
    SimpleString,
    ValueMatcher,
    as_text,
    number_set_matcher,
    simple_matcher,
    simple_string,
    value_matcher,
)

Event = Mapping[str, Any]
Predicate = Callable[[Event], bool]


def _spread(matcher: ValueMatcher) -> Callable[[Any], bool]:
    """Lift a scalar matcher to an event value: absent/null never matches, a list matches if any item does."""

    def match(value: Any) -> bool:
        if value is None:
            return False
        if isinstance(value, list):
            return any(item is not None and matcher(item) for item in value)
        return matcher(value)

    return match


def _field_reference(field: str, ref: SigmaFieldReference) -> Predicate:
    """``fieldref``: the field equals (or starts/ends with) another field of the same event, case-insensitively."""
    other = ref.field

    def match(event: Event) -> bool:
        a, b = as_text(event.get(field)), as_text(event.get(other))
        if a is None or b is None:
            return False
        a, b = a.lower(), b.lower()
        if ref.starts_with and ref.ends_with:
            return b in a
        if ref.starts_with:
            return a.startswith(b)
        if ref.ends_with:
            return a.endswith(b)
        return a == b

    return match


def field_predicate(field: str, value: SigmaType, placeholders: Placeholders) -> Predicate:
    """One ``field|modifiers: value`` leaf; null, exists and fieldref look at the event, the rest at the value."""
    if isinstance(value, SigmaNull):
        return lambda event: event.get(field) is None
    if isinstance(value, SigmaExists):
        # The specification: "only verifies the presence of a field, not its value, be it empty or null".
        wanted = value.exists
        return lambda event: (field in event) is wanted
    if isinstance(value, SigmaFieldReference):
        return _field_reference(field, value)
    if isinstance(value, SigmaExpansion) and any(
        isinstance(v, SigmaNull | SigmaExists | SigmaFieldReference) for v in value.values
    ):
        alternatives = [field_predicate(field, v, placeholders) for v in value.values]
        return lambda event: any(p(event) for p in alternatives)
    match = _spread(value_matcher(value, placeholders))
    return lambda event: match(event.get(field))


def keyword_value(value: SigmaType) -> SigmaType:
    """Keywords are searched *within* values (full-text style), so a bare keyword gets ``*`` on both sides."""
    if isinstance(value, SigmaString):
        parts = list(value.s)
        multi = SpecialChars.WILDCARD_MULTI
        if not parts or parts[0] is not multi:
            value = SigmaString("*") + value
        if not parts or parts[-1] is not multi:
            value = value + SigmaString("*")
    return value


def keyword_predicate(value: SigmaType, placeholders: Placeholders) -> Predicate:
    """A field-less value matches when any string value of the event contains it."""
    if isinstance(value, SigmaExpansion):
        alternatives = [keyword_predicate(v, placeholders) for v in value.values]
        return lambda event: any(p(event) for p in alternatives)
    return _in_any_value(_spread(value_matcher(keyword_value(value), placeholders)))


_SEARCHED = (str, list)
"""The values keywords search: text, and lists (item by item)."""


def _in_any_value(match: Callable[[Any], bool]) -> Predicate:
    return lambda event: any(isinstance(v, _SEARCHED) and match(v) for v in event.values())


def _all(parts: list[Predicate]) -> Predicate:
    """AND; the common small arities avoid a generator per event."""
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        a, b = parts
        return lambda event: a(event) and b(event)
    return lambda event: all(p(event) for p in parts)


def _any(parts: list[Predicate]) -> Predicate:
    """OR; the common small arities avoid a generator per event."""
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        a, b = parts
        return lambda event: a(event) or b(event)
    return lambda event: any(p(event) for p in parts)


def _on_field(field: str, match: Callable[[Any], bool]) -> Predicate:
    return lambda event: match(event.get(field))


def _or_args(args: list[Any], placeholders: Placeholders) -> list[Predicate]:
    """OR-ed leaves on one field with simple string (or number) values become one predicate reading the field
    once; OR-ed simple keywords (or numbers) likewise become one pass over the event's values."""
    groups: dict[tuple[str | None, bool], list[SimpleString]] = {}
    numbers: dict[str | None, set[float]] = {}
    predicates: list[Predicate] = []
    for arg in args:
        field = arg.field if isinstance(arg, ConditionFieldEqualsValueExpression) else None
        simple = None
        if isinstance(arg, ConditionFieldEqualsValueExpression):
            simple = simple_string(arg.value)
        elif isinstance(arg, ConditionValueExpression) and isinstance(arg.value, SigmaString):
            simple = simple_string(keyword_value(arg.value))
        if simple is not None:
            groups.setdefault((field, simple.cased), []).append(simple)
        elif isinstance(arg, ConditionFieldEqualsValueExpression | ConditionValueExpression) and isinstance(
            arg.value, SigmaNumber
        ):
            numbers.setdefault(field, set()).add(float(arg.value.number))
        else:
            predicates.append(compile_condition(arg, placeholders))
    matchers: list[tuple[str | None, ValueMatcher]] = [
        (field, simple_matcher(items)) for (field, _cased), items in groups.items()
    ]
    matchers += [(field, number_set_matcher(values)) for field, values in numbers.items()]
    for field, matcher in matchers:
        match = _spread(matcher)
        predicates.append(_in_any_value(match) if field is None else _on_field(field, match))
    return predicates


def compile_condition(node: Any, placeholders: Placeholders) -> Predicate:
    """Turn one node of pySigma's postprocessed condition tree into a predicate."""
    if isinstance(node, ConditionAND):
        return _all([compile_condition(arg, placeholders) for arg in node.args])
    if isinstance(node, ConditionOR):
        return _any(_or_args(node.args, placeholders))
    if isinstance(node, ConditionNOT):
        inner = compile_condition(node.args[0], placeholders)
        return lambda event: not inner(event)
    if isinstance(node, ConditionFieldEqualsValueExpression):
        return field_predicate(node.field, node.value, placeholders)
    if isinstance(node, ConditionValueExpression):
        return keyword_predicate(node.value, placeholders)
    raise UnsupportedValue(f"unsupported condition element {type(node).__name__}")
