"""Events generated from a Sigma rule's own detection, for differential tests of the rule compiler.

Why from the detection and not by hand: a differential test is only as strong as the events it feeds both
engines, and events written by hand cover what their author thought of. Walking pySigma's parsed condition
tree gives, for every rule, events that satisfy it (positives) and events one value away from satisfying it
(near misses), so each modifier, each ``1 of``/``all of`` branch and each ``not`` filter is exercised.

The walk turns the condition into alternative conjunctions of constraints ``(field, value, wanted)``
(``wanted`` is False under an odd number of ``not``), then builds one event per conjunction: strings are
filled in (wildcards become padding), ``re`` values get a sample string built from the parsed pattern (or
the constraint is skipped, with the reason counted), ``cidr`` an address inside the network, comparisons a
number on the right side, time parts a timestamp, ``null``/``exists`` an absent or present field, and unwanted
values are avoided by writing a neutral value. Around each positive come variants: the case swapped, padding
over two lines, each ``windash``/``base64offset`` alternative; near misses (a changed letter or symbol, the
field missing, a wrong prefix, a number as text, an address outside the network, a timestamp with a zone...);
and for each ``not``, the filter hit and a value next to it. Nothing here decides whether an event matches:
both engines under test do that.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.rule import SigmaRule
from sigma.types import (
    CompareOperators,
    SigmaBool,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaFieldReference,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SigmaTimestampPart,
    SpecialChars,
    TimestampPart,
)

PADDING = "pad"
"""What a ``*`` wildcard becomes: a visible run of text, so contains/startswith/endswith are not mere equality."""
NEUTRAL = "refsys-neutral-value"
"""Written where a field must avoid unwanted values: unlike any SigmaHQ value."""
KEYWORD_FIELD = "message"
"""Where a field-less keyword goes: keywords are searched in every value, and every source has a message."""
MAX_ALTERNATIVES = 16
"""Conjunctions kept per rule: enough to visit every branch of most rules, bounded for the largest lists."""


@dataclass(frozen=True)
class Constraint:
    """One leaf of the condition: ``field`` (None for a keyword) should (``wanted``) or should not match."""

    field: str | None
    value: Any
    wanted: bool


Conjunction = tuple[Constraint, ...]


def _spread(items: Sequence[Conjunction], limit: int) -> list[Conjunction]:
    """At most ``limit`` items, evenly spaced, so long value lists are sampled across their whole length."""
    if len(items) <= limit:
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def _product(groups: Sequence[list[Conjunction]], limit: int) -> list[Conjunction]:
    """Conjunctions satisfying every group: the first of each, then each other alternative of each group once.

    A full cartesian product explodes on ``all of selection_*`` over long lists; varying one group at a time
    still visits every alternative of every group, which is what the comparison needs.
    """
    if any(not g for g in groups):
        return []
    base = [g[0] for g in groups]
    out = [tuple(c for part in base for c in part)]
    for index, group in enumerate(groups):
        for alternative in group[1:]:
            parts = [*base[:index], alternative, *base[index + 1 :]]
            out.append(tuple(c for part in parts for c in part))
    return _spread(out, limit)


def conjunctions(node: Any, wanted: bool = True, limit: int = MAX_ALTERNATIVES) -> list[Conjunction]:
    """Alternative sets of constraints under which ``node`` evaluates to ``wanted`` (De Morgan under ``not``)."""
    if isinstance(node, ConditionNOT):
        return conjunctions(node.args[0], not wanted, limit)
    if isinstance(node, ConditionAND | ConditionOR):
        children = [conjunctions(arg, wanted, limit) for arg in node.args]
        every = isinstance(node, ConditionAND) is wanted  # AND wanted true, or OR wanted false
        if every:
            return _product(children, limit)
        return _spread([c for child in children for c in child], limit)
    if isinstance(node, ConditionFieldEqualsValueExpression):
        return [(Constraint(node.field, node.value, wanted),)]
    if isinstance(node, ConditionValueExpression):
        return [(Constraint(None, node.value, wanted),)]
    raise TypeError(f"unexpected condition element {type(node).__name__}")


# --- regular expressions: a sample string from the parsed pattern -------------------------------------------


def _category_char(category: Any) -> str:
    return {
        sre.CATEGORY_DIGIT: "1",
        sre.CATEGORY_NOT_DIGIT: "a",
        sre.CATEGORY_SPACE: " ",
        sre.CATEGORY_NOT_SPACE: "a",
        sre.CATEGORY_WORD: "a",
        sre.CATEGORY_NOT_WORD: " ",
    }.get(category, "a")


def _in_set(char: str, items: Sequence[tuple[Any, Any]]) -> bool:
    """Whether ``char`` is in a parsed character class (``[...]``)."""
    negate = bool(items) and items[0][0] is sre.NEGATE
    members = items[1:] if negate else items
    return any(_member(char, op, av) for op, av in members) is not negate


def _member(char: str, op: Any, av: Any) -> bool:
    if op is sre.LITERAL:
        return bool(chr(av) == char)
    if op is sre.RANGE:
        return bool(av[0] <= ord(char) <= av[1])
    if op is sre.CATEGORY:
        return re.fullmatch(_CATEGORY_RE.get(av, "(?!)"), char) is not None
    return False


_CATEGORY_RE = {
    sre.CATEGORY_DIGIT: r"\d",
    sre.CATEGORY_NOT_DIGIT: r"\D",
    sre.CATEGORY_SPACE: r"\s",
    sre.CATEGORY_NOT_SPACE: r"\S",
    sre.CATEGORY_WORD: r"\w",
    sre.CATEGORY_NOT_WORD: r"\W",
}


def _class_char(items: Sequence[tuple[Any, Any]]) -> str | None:
    """A character of a class: its first member, or for ``[^...]`` a common character it leaves out."""
    candidates = [chr(av) for op, av in items if op is sre.LITERAL]
    candidates += [chr(av[0]) for op, av in items if op is sre.RANGE]
    candidates += [_category_char(av) for op, av in items if op is sre.CATEGORY]
    candidates += list("a1Z _-./:x")
    return next((c for c in candidates if _in_set(c, items)), None)


def _emit(items: Any, any_char: str = "a") -> str | None:
    """The shortest-ish text a parsed pattern matches; None for what this small walker does not model.

    ``any_char`` is what ``.`` becomes: a newline tests whether the engines honour the ``s`` flag."""
    out: list[str] = []
    for op, av in items:
        if op is sre.LITERAL:
            out.append(chr(av))
        elif op is sre.NOT_LITERAL:
            out.append("a" if chr(av) != "a" else "b")
        elif op is sre.ANY:
            out.append(any_char)
        elif op is sre.IN:
            char = _class_char(av)
            if char is None:
                return None
            out.append(char)
        elif op is sre.CATEGORY:
            out.append(_category_char(av))
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            low, _high, sub = av
            text = _emit(sub, any_char)
            if text is None:
                return None
            out.append(text * low)
        elif op is sre.SUBPATTERN:
            text = _emit(av[-1], any_char)
            if text is None:
                return None
            out.append(text)
        elif op is sre.ATOMIC_GROUP:
            text = _emit(av, any_char)
            if text is None:
                return None
            out.append(text)
        elif op is sre.BRANCH:
            text = _emit(av[1][0], any_char)
            if text is None:
                return None
            out.append(text)
        elif op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
            continue  # anchors and lookarounds add no text; the final check catches a sample they reject
        else:
            return None  # back references, conditional groups
    return "".join(out)


def regex_sample(value: SigmaRegularExpression, any_char: str = "a") -> str | None:
    """A string the rule's regex finds (checked with Python's ``re``), or None when the walker cannot build one."""
    pattern = str(value.regexp.to_plain())
    flags = 0
    if SigmaRegularExpressionFlag.IGNORECASE in value.flags:
        flags |= re.IGNORECASE
    if SigmaRegularExpressionFlag.MULTILINE in value.flags:
        flags |= re.MULTILINE
    if SigmaRegularExpressionFlag.DOTALL in value.flags:
        flags |= re.DOTALL
    try:
        text = _emit(sre_parse.parse(pattern, flags), any_char)
        if text is not None and re.search(pattern, text, flags):
            return text
    except (re.error, RecursionError, OverflowError):
        return None
    return None


# --- values -----------------------------------------------------------------------------------------------


def fill(value: SigmaString) -> str:
    """The text a Sigma string matches, wildcards replaced by padding (``?`` by one character)."""
    out = []
    for part in value.s:
        if isinstance(part, str):
            out.append(part)
        elif part is SpecialChars.WILDCARD_MULTI:
            out.append(PADDING)
        elif part is SpecialChars.WILDCARD_SINGLE:
            out.append("q")
        else:  # an ``expand`` placeholder: stands for configured values, none here
            out.append(PADDING)
    return "".join(out)


def _anchored(value: SigmaString) -> tuple[bool, bool]:
    """Whether the string must match at the start and at the end of the value (no ``*`` there)."""
    parts = list(value.s)
    multi = SpecialChars.WILDCARD_MULTI
    return (not parts or parts[0] is not multi), (not parts or parts[-1] is not multi)


def combine_strings(values: Sequence[SigmaString]) -> str:
    """One text satisfying several string patterns on a field (``contains|all``, ``startswith`` plus ``contains``).

    The pattern anchored at the start leads, the one anchored at the end closes, the others sit in between.
    An exact value anchored at both ends can only be itself; a second one then simply cannot be met.
    """
    head = [v for v in values if _anchored(v) == (True, False)]
    tail = [v for v in values if _anchored(v) == (False, True)]
    exact = [v for v in values if _anchored(v) == (True, True)]
    middle = [v for v in values if _anchored(v) == (False, False)]
    if exact:
        return fill(exact[0])
    parts = (
        [fill(v) for v in head[:1]]
        + [fill(v) for v in middle + head[1:] + tail[1:]]
        + [fill(v) for v in tail[:1]]
    )
    return " ".join(parts)


def _number(value: SigmaNumber | SigmaCompareExpression) -> int | float:
    if isinstance(value, SigmaNumber):
        return value.number
    bound = value.number.number
    step = 1 if isinstance(bound, int) else 0.5
    return {
        CompareOperators.GT: bound + step,
        CompareOperators.GTE: bound,
        CompareOperators.LT: bound - step,
        CompareOperators.LTE: bound,
        CompareOperators.NEQ: bound + step,
    }[value.op]


_COMPARE: dict[CompareOperators, Callable[[float, float], bool]] = {
    CompareOperators.GT: lambda a, b: a > b,
    CompareOperators.GTE: lambda a, b: a >= b,
    CompareOperators.LT: lambda a, b: a < b,
    CompareOperators.LTE: lambda a, b: a <= b,
    CompareOperators.NEQ: lambda a, b: a != b,
}


def _satisfies(number: float, value: SigmaNumber | SigmaCompareExpression) -> bool:
    if isinstance(value, SigmaNumber):
        return bool(number == value.number)
    return _COMPARE[value.op](number, value.number.number)


def _numbers(values: Sequence[Any], skips: Skips) -> Any:
    """A number meeting several comparisons on one field (``gte: 100`` and ``lt: 200``): a candidate each
    value suggests that all of them accept."""
    for candidate in (_number(v) for v in values):
        if all(_satisfies(candidate, v) for v in values):
            return candidate
    skips.add("comparisons no single number meets")
    return _UNMET


def _address(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """An address inside the network: the first host when there is one, else the network's own address."""
    return str(network.network_address + 1 if network.num_addresses > 2 else network.network_address)


def _outside(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """The first address after the network (wrapping to the network before it at the top of the space)."""
    try:
        return str(network.broadcast_address + 1)
    except ipaddress.AddressValueError:
        return str(network.network_address - 1)


@dataclass
class Skips:
    """Why constraints could not be met: counted by reason, printed by the test."""

    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, reason: str) -> None:
        self.reasons[reason] += 1


def _contained(value: SigmaString) -> SigmaString:
    """A keyword as it is searched: within a value, so with a ``*`` on each side."""
    if not value.startswith(SpecialChars.WILDCARD_MULTI):
        value = SigmaString("*") + value
    if not value.endswith(SpecialChars.WILDCARD_MULTI):
        value = value + SigmaString("*")
    return value


def _choose(value: Any, pick: int) -> Any:
    """One alternative of an expansion (``windash``, ``base64offset``), varied by ``pick``."""
    while isinstance(value, SigmaExpansion):
        value = value.values[pick % len(value.values)]
    return value


def _wanted_value(values: Sequence[Any], skips: Skips) -> Any:
    """A value meeting every wanted constraint on one field (absent: ``_ABSENT``), or ``_UNMET``."""
    strings = [v for v in values if isinstance(v, SigmaString)]
    regexes = [v for v in values if isinstance(v, SigmaRegularExpression)]
    others = [v for v in values if not isinstance(v, SigmaString | SigmaRegularExpression)]
    if not others:
        # Strings and regexes on one field: the strings' text, then a sample of each regex, space-separated
        # (SigmaHQ's regexes here look for command-line options, which a space in front suits).
        samples = [regex_sample(v) for v in regexes]
        if any(sample is None for sample in samples):
            skips.add("regular expression the sample walker cannot satisfy")
            return _UNMET
        return " ".join([combine_strings(strings)] * bool(strings) + [s for s in samples if s is not None])
    if others and all(isinstance(v, SigmaTimestampPart) for v in others):
        return _timestamp(others, skips)
    if len(others) > 1 and all(isinstance(v, SigmaNumber | SigmaCompareExpression) for v in others):
        return _numbers(others, skips)
    if len(others) > 1 or strings or regexes:
        skips.add("a number, address or null together with other values on one field")
        return _UNMET
    value = others[0]
    if isinstance(value, SigmaCIDRExpression):
        return _address(value.network)
    if isinstance(value, SigmaNumber | SigmaCompareExpression):
        return _number(value)
    if isinstance(value, SigmaBool):
        return value.boolean
    if isinstance(value, SigmaNull):
        return _ABSENT
    if isinstance(value, SigmaExists):
        return "present" if value.exists else _ABSENT
    skips.add(f"value type {type(value).__name__}")
    return _UNMET


def _timestamp(parts: Sequence[SigmaTimestampPart], skips: Skips) -> Any:
    """An ISO timestamp (no zone: Sigma's time modifiers convert none) whose parts are the rule's numbers;
    the ISO week depends on the whole date, so a ``week`` part is not generated."""
    fields = {
        TimestampPart.YEAR: 2026,
        TimestampPart.MONTH: 11,
        TimestampPart.DAY: 25,
        TimestampPart.HOUR: 10,
        TimestampPart.MINUTE: 30,
    }
    for part in parts:
        if part.timestamp_part not in fields:
            skips.add(f"timestamp part {part.timestamp_part.name.lower()}")
            return _UNMET
        fields[part.timestamp_part] = int(part.number)
    year, month, day, hour, minute = fields.values()
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:00"


_ABSENT = object()
_UNMET = object()


def build_event(
    conjunction: Conjunction, base: Mapping[str, Any], skips: Skips, pick: int = 0
) -> dict[str, Any] | None:
    """One flat event meeting a conjunction's constraints on top of ``base``; None when one cannot be met."""
    wanted: dict[str | None, list[Any]] = {}
    unwanted: dict[str | None, list[Any]] = {}
    references: list[tuple[str, SigmaFieldReference]] = []
    for constraint in conjunction:
        value = _choose(constraint.value, pick)
        if isinstance(value, SigmaFieldReference):
            if constraint.wanted and constraint.field is not None:
                references.append((constraint.field, value))
            continue  # an unwanted reference is avoided by the neutral value on its field
        (wanted if constraint.wanted else unwanted).setdefault(constraint.field, []).append(value)
    event = dict(base)
    keywords = wanted.pop(None, [])
    unwanted.pop(None, None)  # a keyword to avoid: simply never written
    strings = [_contained(v) for v in keywords if isinstance(v, SigmaString)]
    if strings:
        event[KEYWORD_FIELD] = combine_strings(strings)
    for number, other in enumerate((v for v in keywords if not isinstance(v, SigmaString)), start=2):
        value = _wanted_value([other], skips)
        if value is _UNMET:
            return None
        if (
            value is not _ABSENT
        ):  # keywords are searched in text values, so a number keyword is written as text
            event[f"{KEYWORD_FIELD}{number}"] = str(value)
    for name, values in wanted.items():
        assert name is not None
        value = _wanted_value(values, skips)
        if value is _UNMET:
            return None
        if value is not _ABSENT:
            event[name] = value
    for name in unwanted:
        if name is not None and name not in wanted:
            event[name] = NEUTRAL
    for name, ref in references:
        target = ref.field
        event.setdefault(target, event.get(name, "referenced"))
        source = str(event[target])
        event[name] = (PADDING if ref.ends_with else "") + source + (PADDING if ref.starts_with else "")
    return event


# --- near misses --------------------------------------------------------------------------------------------


SYMBOLS = "*?_%\\.[]'\"$/-"
"""Characters that mean something to a LIKE, GLOB or regex translation: changing one exposes a missed escape."""


def _changed_symbol(text: str, literal: str) -> str | None:
    """``text`` with the last symbol of the rule's literal (``_``, ``%``, an escaped ``*``...) made a letter."""
    start = text.find(literal) if literal else -1
    offsets = [i for i, char in enumerate(literal) if char in SYMBOLS]
    if start < 0 or not offsets:
        return None
    at = start + offsets[-1]
    return text[:at] + "x" + text[at + 1 :]


def _changed_character(text: str, literal: str) -> str | None:
    """``text`` with one character of the rule's literal changed (case-insensitively different)."""
    start = text.find(literal) if literal else -1
    if start < 0:
        return None
    for offset in range(len(literal) - 1, -1, -1):
        char = literal[offset]
        if char.isalpha():
            other = "b" if char.lower() == "a" else "a"
        elif char.isdigit():
            other = "1" if char == "0" else "0"
        else:
            continue
        return text[: start + offset] + other + text[start + offset + 1 :]
    return text[:start] + "#" + text[start + 1 :] if literal else None


def near_misses(
    event: Mapping[str, Any], conjunction: Conjunction, pick: int = 0
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Events one wanted value away from ``event``: a changed character, the field missing, a wrong prefix.

    Each comes with a short label saying what was perturbed; whether it still matches (another branch may
    hold it) is for the engines to say.
    """
    seen: set[str] = set()
    for constraint in conjunction:
        name = constraint.field or KEYWORD_FIELD
        value = _choose(constraint.value, pick)
        if constraint.wanted and isinstance(value, SigmaNull) and name not in event:
            yield f"{name}: explicit null", {**event, name: None}  # still null: should match
            yield f"{name}: empty string", {**event, name: ""}
            continue
        if not constraint.wanted or name in seen or name not in event:
            continue
        seen.add(name)
        current = event[name]
        yield f"{name}: missing", {k: v for k, v in event.items() if k != name}
        if isinstance(value, SigmaExists):
            yield f"{name}: null value", {**event, name: None}
        if isinstance(value, SigmaString) and isinstance(current, str):
            literal = max((p for p in value.s if isinstance(p, str)), key=len, default="")
            changed = _changed_character(current, literal)
            if changed is not None:
                yield f"{name}: changed character", {**event, name: changed}
            symbol = _changed_symbol(current, literal)
            if symbol is not None:
                yield f"{name}: changed symbol", {**event, name: symbol}
            yield f"{name}: wrong prefix", {**event, name: "x" + current}
            if current.isdigit() and len(current) < 10:
                yield f"{name}: as a number", {**event, name: int(current)}
        elif isinstance(value, SigmaCIDRExpression) and isinstance(current, str):
            yield f"{name}: outside the network", {**event, name: _outside(value.network)}
            yield f"{name}: not an address", {**event, name: current + ".example"}
            if value.network.version == 6:
                yield f"{name}: exploded IPv6 form", {**event, name: ipaddress.ip_address(current).exploded}
        elif isinstance(value, SigmaTimestampPart) and isinstance(current, str):
            moment = datetime.fromisoformat(current).replace(tzinfo=UTC)
            yield f"{name}: with a zone offset", {**event, name: current + "+05:00"}
            yield f"{name}: as epoch seconds", {**event, name: int(moment.timestamp())}
        elif isinstance(value, SigmaNumber | SigmaCompareExpression) and isinstance(current, int | float):
            yield f"{name}: off by one", {**event, name: current + 1}
            yield f"{name}: as text", {**event, name: str(current)}
            yield f"{name}: not a number", {**event, name: "n/a"}
        elif isinstance(value, SigmaBool) and isinstance(current, bool):
            yield f"{name}: flipped", {**event, name: not current}
            yield f"{name}: as a number", {**event, name: int(current)}
        elif isinstance(value, SigmaRegularExpression) and isinstance(current, str) and current:
            yield (
                f"{name}: changed character",
                {**event, name: current[:-1] + ("#" if current[-1] != "#" else "!")},
            )


def filter_variants(
    conjunction: Conjunction, base: Mapping[str, Any], skips: Skips, pick: int = 0, limit: int = 6
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Events that exercise a ``not``: one unwanted value met (the filter hits, so the rule should stay quiet),
    and the same value with one character changed (next to the filter, so the rule should still fire)."""
    unwanted = [c for c in conjunction if not c.wanted and not isinstance(c.value, SigmaFieldReference)]
    for constraint in _spread([(c,) for c in unwanted], limit):
        flipped = tuple(Constraint(c.field, c.value, True) if c is constraint[0] else c for c in conjunction)
        event = build_event(flipped, base, skips, pick)
        if event is None:
            continue
        name = constraint[0].field or KEYWORD_FIELD
        yield f"filter hit: {name}", event
        value = _choose(constraint[0].value, pick)
        if isinstance(value, SigmaString) and isinstance(event.get(name), str):
            literal = max((p for p in value.s if isinstance(p, str)), key=len, default="")
            changed = _changed_character(event[name], literal)
            if changed is not None:
                yield f"next to filter: {name}", {**event, name: changed}
        elif isinstance(value, SigmaCIDRExpression):
            yield f"next to filter: {name}", {**event, name: _outside(value.network)}


def regex_over_lines(event: Mapping[str, Any], conjunction: Conjunction) -> dict[str, Any] | None:
    """The event with each wanted ``re|m`` value between two other lines and each ``re|s`` sample holding
    newlines for its dots: a match then needs the flag; None when the rule has neither flag."""
    changed = dict(event)
    for constraint in conjunction:
        name, value = constraint.field, constraint.value
        wanted_regex = constraint.wanted and isinstance(value, SigmaRegularExpression)
        if name is None or name not in event or not wanted_regex:
            continue
        if SigmaRegularExpressionFlag.DOTALL in value.flags:
            sample = regex_sample(value, "\n")
            if sample is not None:
                changed[name] = sample
        if SigmaRegularExpressionFlag.MULTILINE in value.flags:
            changed[name] = f"first line\n{changed[name]}\nlast line"
    return changed if changed != event else None


def swapped_case(event: Mapping[str, Any], protected: Callable[[str], bool]) -> dict[str, Any]:
    """The event with its string values' letter case swapped (except ``protected`` fields, e.g. routing keys)."""
    return {k: v.swapcase() if isinstance(v, str) and not protected(k) else v for k, v in event.items()}


@dataclass
class Generated:
    """One generated event: the rule it was built from, and what kind of event it is."""

    rule_id: str
    kind: str  # "positive[ (case swapped)]", "near miss: <what>", "filter hit: <field>", "next to filter: <field>"
    event: dict[str, Any]


def generate(
    rule: SigmaRule,
    rule_id: str,
    base: Mapping[str, Any],
    skips: Skips,
    protected: Callable[[str], bool] = lambda name: False,
    near_miss_sources: int = 3,
) -> list[Generated]:
    """Positives for each alternative of each condition, a case-swapped positive, and near misses of the first few.

    ``rule`` must read the field names the events carry (a mapped rule for routed documents).
    """
    out: list[Generated] = []
    for condition in rule.detection.parsed_condition:
        for pick, conjunction in enumerate(conjunctions(condition.parsed)):
            event = build_event(conjunction, base, skips, pick)
            if event is None:
                continue
            out.append(Generated(rule_id, "positive", event))
            widest = max(
                (
                    len(c.value.values)
                    for c in conjunction
                    if c.wanted and isinstance(c.value, SigmaExpansion)
                ),
                default=1,
            )
            for other in range(pick + 1, pick + widest):  # every alternative of a windash/base64offset value
                alternative = build_event(conjunction, base, skips, other)
                if alternative is not None and alternative != event:
                    out.append(Generated(rule_id, "positive (another expansion)", alternative))
            if pick == 0:
                out.append(Generated(rule_id, "positive (case swapped)", swapped_case(event, protected)))
                multi_line = {
                    k: v.replace(PADDING, "p\nd") if isinstance(v, str) and not protected(k) else v
                    for k, v in event.items()
                }
                if multi_line != event:
                    out.append(Generated(rule_id, "positive (multi-line padding)", multi_line))
                over_lines = regex_over_lines(event, conjunction)
                if over_lines is not None:
                    out.append(Generated(rule_id, "positive (regex over lines)", over_lines))
            if pick < near_miss_sources:
                out.extend(
                    Generated(rule_id, f"near miss: {what}", missed)
                    for what, missed in near_misses(event, conjunction, pick)
                )
                out.extend(
                    Generated(rule_id, what, variant)
                    for what, variant in filter_variants(conjunction, base, skips, pick)
                )
    return out
