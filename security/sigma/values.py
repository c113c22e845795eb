"""Compile pySigma's parsed detection values into matchers over one event value.

pySigma has already applied the modifiers when it parsed the rule: ``contains`` became wildcards around a
SigmaString, ``base64``/``utf16``/``wide`` re-encoded the string, ``base64offset`` and ``windash`` became a
SigmaExpansion of alternatives, ``re``/``cidr``/``gt``... became their own types. So compiling the *values* covers
every modifier without re-parsing YAML, and a modifier pySigma adds later shows up here as an unknown type,
which is refused by name rather than silently mismatched.

Matching follows Sigma: strings compare case-insensitively unless ``cased``; ``*`` and ``?`` are wildcards;
regular expressions are case-sensitive unless the ``i`` flag is given and match anywhere in the value.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import re2
from sigma.types import (
    CompareOperators,
    Placeholder,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExpansion,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SigmaTimestampPart,
    SigmaType,
    SpecialChars,
    TimestampPart,
)

from security.sigma.errors import UnsupportedValue

ValueMatcher = Callable[[Any], bool]
"""Tests one scalar event value (never a list: the caller spreads lists)."""

Placeholders = Mapping[str, Sequence[str]]
"""``expand`` placeholder name (without ``%``) -> the values it stands for, from configuration."""

_RE2_INLINE_FLAGS = {
    SigmaRegularExpressionFlag.IGNORECASE: "i",
    SigmaRegularExpressionFlag.MULTILINE: "m",
    SigmaRegularExpressionFlag.DOTALL: "s",
}


def as_text(value: Any) -> str | None:
    """The text a string pattern is compared with: numbers and booleans as they would be written in a log."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return None


def as_number(value: Any) -> float | None:
    """The number a comparison or numeric value sees: numeric strings count, booleans and NaN do not."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return None if isinstance(value, float) and math.isnan(value) else float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return None if math.isnan(number) else number
    return None


def _re2_options() -> Any:
    """Quiet (a refused rule is reported by us, not logged by RE2 on stderr) and without capture groups."""
    options = re2.Options()
    options.log_errors = False
    options.never_capture = True
    return options


_RE2_OPTIONS = _re2_options()


def _re2_compile(pattern: str, what: str) -> Any:
    """Compile on RE2 or refuse with RE2's reason; RE2 has no backreferences or lookaround, by design."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise UnsupportedValue(f"{what} is not supported by RE2: {reason}") from exc


def _re2_text(text: str) -> str:
    """RE2 works on UTF-8; a lone surrogate (legal in JSON escapes) would raise, so it is replaced instead."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _pattern_regex(parts: Sequence[Any], placeholders: Placeholders) -> str:
    """An RE2 pattern for a wildcard string; placeholders become alternations of their configured values."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(re2.escape(part))
        elif part is SpecialChars.WILDCARD_MULTI:
            out.append(".*")
        elif part is SpecialChars.WILDCARD_SINGLE:
            out.append(".")
        elif isinstance(part, Placeholder):
            if part.name not in placeholders:
                raise UnsupportedValue(f"expand placeholder %{part.name}% has no configured values")
            alternatives = [_pattern_regex(SigmaString(v).s, placeholders) for v in placeholders[part.name]]
            out.append("(?:" + "|".join(alternatives) + ")" if alternatives else "(?!)")
        else:
            raise UnsupportedValue(f"unsupported string part {part!r}")
    return "".join(out)


@dataclass(frozen=True)
class SimpleString:
    """A wildcard string shaped ``x``, ``x*``, ``*x`` or ``*x*``: plain string operations, no regex needed.

    Sigma rules are mostly lists of such values on one field (``Image|endswith: [...]``), so the condition
    compiler groups them into one matcher that reads and lower-cases the field once.
    """

    kind: str  # "equals", "startswith", "endswith" or "contains"
    literal: str  # already lower-cased unless cased
    cased: bool


def simple_string(value: SigmaType) -> SimpleString | None:
    """The SimpleString form of a value, or None when it needs the regex engine (or is not a string)."""
    if not isinstance(value, SigmaString):
        return None
    cased = isinstance(value, SigmaCasedString)
    parts = list(value.s)
    multi = SpecialChars.WILDCARD_MULTI
    if any(isinstance(p, Placeholder) for p in parts):
        return None

    def make(kind: str, literal: Any) -> SimpleString:
        return SimpleString(kind, literal if cased else literal.lower(), cased)

    if all(isinstance(p, str) for p in parts):
        return make("equals", "".join(p for p in parts if isinstance(p, str)))
    if parts == [multi]:
        return make("contains", "")
    if len(parts) == 2 and parts[0] is multi and isinstance(parts[1], str):
        return make("endswith", parts[1])
    if len(parts) == 2 and parts[1] is multi and isinstance(parts[0], str):
        return make("startswith", parts[0])
    if len(parts) == 3 and parts[0] is multi and parts[2] is multi and isinstance(parts[1], str):
        return make("contains", parts[1])
    return None


def simple_matcher(items: Sequence[SimpleString]) -> ValueMatcher:
    """One matcher for several simple strings OR-ed on one field (all cased, or all not)."""
    cased = items[0].cased
    equals = frozenset(i.literal for i in items if i.kind == "equals")
    starts = tuple(i.literal for i in items if i.kind == "startswith")
    ends = tuple(i.literal for i in items if i.kind == "endswith")
    contains = tuple(i.literal for i in items if i.kind == "contains")

    def match(value: Any) -> bool:
        text = value if value.__class__ is str else as_text(value)
        if text is None:
            return False
        if not cased:
            text = text.lower()
        return (
            text in equals
            or text.startswith(starts)
            or text.endswith(ends)
            or any(needle in text for needle in contains)
        )

    return match


def string_matcher(value: SigmaString, placeholders: Placeholders) -> ValueMatcher:
    """Match a Sigma string; the common shapes (plain, ``*x``, ``x*``, ``*x*``) avoid the regex engine."""
    simple = simple_string(value)
    if simple is not None:
        return simple_matcher([simple])
    cased = isinstance(value, SigmaCasedString)
    parts = list(value.s)
    flags = "(?s)" if cased else "(?si)"
    compiled = _re2_compile(flags + _pattern_regex(parts, placeholders), f"string {value.original!r}")
    return lambda v: (t := as_text(v)) is not None and compiled.fullmatch(_re2_text(t)) is not None


def _regex_source(regexp: SigmaString, placeholders: Placeholders) -> str:
    """The regex text; with ``re|expand`` each placeholder becomes an alternation of its literal values."""
    if not any(isinstance(p, Placeholder) for p in regexp.s):
        return str(regexp.to_plain())
    out: list[str] = []
    for part in regexp.s:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, Placeholder):
            if part.name not in placeholders:
                raise UnsupportedValue(f"expand placeholder %{part.name}% has no configured values")
            out.append("(?:" + "|".join(re2.escape(v) for v in placeholders[part.name]) + ")")
        else:  # wildcards have no meaning inside a regex: they are its own * and ? characters
            out.append("*" if part is SpecialChars.WILDCARD_MULTI else "?")
    return "".join(out)


def regex_matcher(value: SigmaRegularExpression, placeholders: Placeholders) -> ValueMatcher:
    """A ``re`` value on RE2, so an uploaded rule cannot stall detection with catastrophic backtracking."""
    flags = "".join(sorted(_RE2_INLINE_FLAGS[f] for f in value.flags))
    source = _regex_source(value.regexp, placeholders)
    pattern = (f"(?{flags})" if flags else "") + source
    compiled = _re2_compile(pattern, f"regular expression {source!r}")
    return lambda v: (t := as_text(v)) is not None and compiled.search(_re2_text(t)) is not None


def cidr_matcher(value: SigmaCIDRExpression) -> ValueMatcher:
    """IPv4 or IPv6 network membership; a value that is not an address is simply not in the network."""
    network = value.network

    def match(v: Any) -> bool:
        if not isinstance(v, str):
            return False
        try:
            address = ipaddress.ip_address(v.strip())
        except ValueError:
            return False
        return address.version == network.version and address in network

    return match


_COMPARE: dict[CompareOperators, Callable[[float, float], bool]] = {
    CompareOperators.LT: lambda a, b: a < b,
    CompareOperators.LTE: lambda a, b: a <= b,
    CompareOperators.GT: lambda a, b: a > b,
    CompareOperators.GTE: lambda a, b: a >= b,
    CompareOperators.NEQ: lambda a, b: a != b,
}


def compare_matcher(value: SigmaCompareExpression) -> ValueMatcher:
    """``gt``/``gte``/``lt``/``lte``: numeric, so ``"10"`` in an event compares as 10, and text never matches."""
    op = _COMPARE[value.op]
    bound = float(value.number.number)
    return lambda v: (n := as_number(v)) is not None and op(n, bound)


def number_matcher(value: SigmaNumber) -> ValueMatcher:
    """A plain number matches the same number whether the log wrote it as a number or as text."""
    expected = float(value.number)
    return lambda v: (n := as_number(v)) is not None and n == expected


def number_set_matcher(expected: frozenset[float] | set[float]) -> ValueMatcher:
    """Several plain numbers OR-ed (``code: [401, 403]``): the value read as a number once, one set lookup."""
    numbers = frozenset(expected)
    return lambda v: (n := as_number(v)) is not None and n in numbers


def bool_matcher(value: SigmaBool) -> ValueMatcher:
    """A boolean matches a JSON boolean or its text form (``true``/``false``, any case)."""
    expected = value.boolean
    text = "true" if expected else "false"
    return lambda v: v is expected if isinstance(v, bool) else isinstance(v, str) and v.lower() == text


_TIMESTAMP_TEXT = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:[Zz]|[+-]\d{2}:?\d{2})?)?"
)
"""The timestamp text logs write: RFC 3339 (``T`` or ``t``, ``Z`` or ``z``) and its SQL-style space form.

Python's ``fromisoformat`` alone reads far more (any character between date and time, ``20261125T1030``,
week dates ``2026-W48-3``), so text that is no timestamp, like ``2026-11-25x10:30``, would yield a date."""


def as_datetime(value: Any) -> datetime | None:
    """A log's timestamp as written (RFC 3339-style text, or epoch seconds/milliseconds taken as UTC).

    The specification says time modifiers do no timezone conversion, so text keeps its own wall-clock time.
    """
    if isinstance(value, str):
        text = value.strip()
        if not _TIMESTAMP_TEXT.fullmatch(text):
            return None
        try:
            return datetime.fromisoformat(text[:-1] + "Z" if text.endswith("z") else text)
        except ValueError:
            return None
    number = as_number(value)
    if number is None:
        return None
    try:
        return datetime.fromtimestamp(number / 1000 if abs(number) >= 1e11 else number, UTC)
    except (OverflowError, OSError, ValueError):
        return None


_TIME_PARTS: dict[TimestampPart, Callable[[datetime], int]] = {
    TimestampPart.MINUTE: lambda d: d.minute,
    TimestampPart.HOUR: lambda d: d.hour,
    TimestampPart.DAY: lambda d: d.day,
    TimestampPart.WEEK: lambda d: d.isocalendar().week,
    TimestampPart.MONTH: lambda d: d.month,
    TimestampPart.YEAR: lambda d: d.year,
}


def timestamp_part_matcher(value: SigmaTimestampPart) -> ValueMatcher:
    """``minute``/``hour``/``day``/``week`` (ISO week)/``month``/``year``: that part of the field's date equals the value."""
    extract = _TIME_PARTS[value.timestamp_part]
    expected = int(value.number)
    return lambda v: (d := as_datetime(v)) is not None and extract(d) == expected


def value_matcher(value: SigmaType, placeholders: Placeholders) -> ValueMatcher:
    """The matcher for one scalar-comparable value; types that need the whole event are handled by the caller."""
    if isinstance(value, SigmaTimestampPart):
        return timestamp_part_matcher(value)
    if isinstance(value, SigmaString):
        return string_matcher(value, placeholders)
    if isinstance(value, SigmaRegularExpression):
        return regex_matcher(value, placeholders)
    if isinstance(value, SigmaCIDRExpression):
        return cidr_matcher(value)
    if isinstance(value, SigmaCompareExpression):
        return compare_matcher(value)
    if isinstance(value, SigmaNumber):
        return number_matcher(value)
    if isinstance(value, SigmaBool):
        return bool_matcher(value)
    if isinstance(value, SigmaExpansion):
        matchers = [value_matcher(v, placeholders) for v in value.values]
        return lambda v: any(m(v) for m in matchers)
    raise UnsupportedValue(f"unsupported value type {type(value).__name__}")
