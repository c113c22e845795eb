"""Streaming Sigma correlation engine: windows in event time over rule matches, fed one match at a time.

Why a streaming engine rather than a query: matches arrive as events are detected, and an alert should be
raised as soon as its window qualifies, not when a scheduled query next runs.

Window semantics (the same as pySigma's SQLite correlation backend, so the two can be compared): every
distinct event time ``t`` of a group ends one window ``[t - timespan, t]``, inclusive at both ends, and each
qualifying window raises one alert whose id is derived from (correlation, group values, window start).
Events are ordered by (event time, ingest sequence), so ties go by ingest order. Conditions that can only
become true as events are added (``gt``/``gte`` on counts, distinct values and rule types) fire as soon as they
hold; the others (``lt``, ``eq``, sums, averages, percentiles) are judged once the window is closed, that is
once the watermark (the latest event time seen) minus the allowed lateness has passed its end. Events older
than that bound are dropped and counted. A correlation keeps at most ``max_groups`` groups, evicting the one
least recently updated and counting it.

A correlation's alerts are themselves matches of that correlation, so chained correlations (one over
another) are fed from them. The whole state is plain lists and dicts, so ``snapshot()`` can be committed
together with bus offsets later and ``restore()`` resumes exactly where the snapshot was taken.
"""

from __future__ import annotations

import bisect
import heapq
import json
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationCondition, SigmaCorrelationRule
from sigma.correlations import SigmaCorrelationConditionOperator as Op
from sigma.exceptions import SigmaError
from sigma.rule import SigmaRule, SigmaRuleBase

from security.sigma.correlation_metrics import COUNTING, Entry, compare, measure, normalise_value

ALERT_NAMESPACE = uuid.UUID("6f1c0f3e-6d0b-5a43-9a59-5c0f6a1e2b7d")
SNAPSHOT_VERSION = 2


class CorrelationError(Exception):
    """A correlation rule the engine cannot run; names the rule so a loader can report and skip it."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"correlation {rule}: {reason}")
        self.rule = rule
        self.reason = reason


@dataclass(frozen=True)
class CorrelationAlert:
    """One qualifying window: enough to raise an alert and to find the events behind it."""

    alert_id: str
    correlation: str
    title: str
    level: str | None
    group: dict[str, Any]
    window_start: float
    window_end: float
    metric: float
    event_seqs: tuple[int, ...]
    end_seq: int
    reported: bool
    event_refs: tuple[Any, ...] = ()
    """The ``ref`` each event was fed with (for the streaming stage: the event's id), in window order."""


@dataclass
class _Correlation:
    """A parsed correlation rule reduced to what evaluation needs."""

    key: str
    title: str
    level: str | None
    kind: str
    span: float
    group_by: list[str]
    field_name: str | None
    op: Op
    count: float
    percent: int | None
    eager: bool
    reported: bool
    # per slot: group-by (or condition) field -> event field, from aliases
    aliases: list[dict[str, str]] = field(default_factory=list)
    names: set[str] = field(default_factory=set)


def _names(rule: SigmaRuleBase) -> set[str]:
    """Every way a correlation may refer to a rule: its id and its name."""
    return {str(n) for n in (rule.id, rule.name) if n}


def _key(rule: SigmaRuleBase) -> str:
    return str(rule.id) if rule.id else (rule.name or rule.title)


def _insert(state: dict[str, Any], name: str, end: float) -> None:
    """Add a window end to a group's sorted ``fired`` or ``pending`` ends (an empty tuple until the first)."""
    ends = state[name]
    if isinstance(ends, list):
        bisect.insort(ends, end)
    else:
        state[name] = [end]


def _group_values(corr: _Correlation, slot: int, fields: Mapping[str, Any]) -> tuple[str, list[Any]] | None:
    """A match's group key (JSON of the normalised group-by values, through the slot's aliases) and the raw
    values; None when the event lacks one of them."""
    raw = [fields.get(corr.aliases[slot].get(g, g)) for g in corr.group_by]
    if any(v is None for v in raw):
        return None
    return json.dumps([normalise_value(v) for v in raw], default=str), raw


def _build(rule: SigmaCorrelationRule) -> _Correlation:
    key = _key(rule)
    condition = rule.condition
    if not isinstance(condition, SigmaCorrelationCondition):
        raise CorrelationError(key, "extended (boolean) correlation conditions are not supported")
    kind = rule.type.name.lower()
    fieldref = condition.fieldref
    if isinstance(fieldref, list):
        raise CorrelationError(key, "a list of condition fields is not supported")
    percent = condition.percentile
    if kind == "value_percentile" and (percent is None or not 0 <= percent <= 100):
        raise CorrelationError(key, "value_percentile needs a percentile between 0 and 100")
    aliases: list[dict[str, str]] = []
    for ref in rule.referenced_rules:
        refs = {ref.reference} | _names(ref.rule)
        aliases.append(
            {a.alias: name for a in rule.aliases for r, name in a.mapping.items() if r.reference in refs}
        )
    return _Correlation(
        key=key,
        title=rule.title,
        level=rule.level.name.lower() if rule.level else None,
        kind=kind,
        span=float(rule.timespan.seconds),
        group_by=list(rule.group_by or []),
        field_name=fieldref,
        op=condition.op,
        count=float(condition.count),
        percent=percent,
        eager=kind in COUNTING and condition.op in (Op.GT, Op.GTE),
        reported=rule._output,
        aliases=aliases,
        names=_names(rule),
    )


def _time(entry: Entry) -> float:
    return float(entry[0])


def _order(entry: Entry) -> tuple[float, int]:
    """Event time first, ingest sequence to break ties."""
    return (entry[0], entry[1])


def _between(entries: list[Entry], start: float, end: float) -> list[Entry]:
    """Entries with start <= time <= end (both inclusive), found by bisection in the time-ordered buffer."""
    low = bisect.bisect_left(entries, start, key=_time)
    return entries[low : bisect.bisect_right(entries, end, key=_time)]


def load_correlations(collection: SigmaCollection) -> SigmaCollection:
    """Resolve references (by id or name) so each correlation knows the rules it correlates.

    Raises CorrelationError naming the rule when a reference points at nothing.
    """
    try:
        collection.resolve_rule_references()
    except SigmaError as exc:
        raise CorrelationError("collection", str(exc)) from exc
    for rule in collection:
        if rule.errors:
            raise CorrelationError(_key(rule), "; ".join(str(e) for e in rule.errors))
    return collection


class CorrelationEngine:
    """Keeps the open windows of every correlation in a collection and raises alerts as they qualify."""

    def __init__(
        self, collection: SigmaCollection, *, lateness: float = 0.0, max_groups: int = 100_000
    ) -> None:
        load_correlations(collection)
        rules = [r for r in collection if isinstance(r, SigmaCorrelationRule)]
        self.lateness = lateness
        self.max_groups = max_groups
        self._corrs: dict[str, _Correlation] = {}
        self._subscribers: dict[str, list[tuple[str, int]]] = {}
        for rule in self._topological(rules):
            corr = _build(rule)
            self._corrs[corr.key] = corr
            for slot, ref in enumerate(rule.referenced_rules):
                for name in {ref.reference} | _names(ref.rule):
                    self._subscribers.setdefault(name, []).append((corr.key, slot))
        self._silent = {
            name
            for rule in collection
            if isinstance(rule, SigmaRule) and not rule._output
            for name in _names(rule)
        }
        self._reset()

    @staticmethod
    def _topological(rules: list[SigmaCorrelationRule]) -> list[SigmaCorrelationRule]:
        """Children before parents, so a watermark closes a child's windows before its parent judges them."""
        done: list[SigmaCorrelationRule] = []

        def visit(rule: SigmaCorrelationRule) -> None:
            if any(rule is d for d in done):
                return
            for ref in rule.referenced_rules:
                if isinstance(ref.rule, SigmaCorrelationRule):
                    visit(ref.rule)
            done.append(rule)

        for rule in rules:
            visit(rule)
        return done

    def _reset(self) -> None:
        self.watermark: float | None = None
        self.counters = {"dropped_late": 0, "evicted_groups": 0, "missing_group_key": 0}
        self._groups: dict[str, OrderedDict[str, dict[str, Any]]] = {k: OrderedDict() for k in self._corrs}
        self._pending: dict[str, list[list[Any]]] = {k: [] for k in self._corrs}

    def group_count(self) -> int:
        """Groups held across every correlation: the size of the state."""
        return sum(len(groups) for groups in self._groups.values())

    def standalone_alerts(self, rule_ref: str) -> bool:
        """Whether a plain rule's own matches alert: not when a correlation uses it without ``generate``."""
        return rule_ref not in self._silent

    def feed(
        self,
        rule_ref: str,
        time: float,
        seq: int,
        fields: Mapping[str, Any],
        *,
        ref: Any = None,
        only: str | None = None,
    ) -> list[CorrelationAlert]:
        """One match of rule ``rule_ref`` (id or name) by event ``seq`` at event ``time``; returns new alerts.

        ``ref`` (JSON-able, e.g. the event id) is kept with the entry and returned in the alert's
        ``event_refs``; with a ``ref`` a replayed match is recognised by it rather than by ``seq``. ``only``
        feeds just the correlation with that key (the streaming stage routes one record per correlation).
        Only alerts of correlations whose output is reported are returned (a correlation used by another
        without ``generate`` feeds its parent silently).
        """
        if self.watermark is not None and time < self.watermark - self.lateness:
            self.counters["dropped_late"] += 1
            return []
        alerts = self._dispatch(rule_ref, time, seq, fields, ref, only)
        if self.watermark is None or time > self.watermark:
            self.watermark = time
            alerts += self._close(self.watermark - self.lateness, final=False)
        return [a for a in alerts if a.reported]

    def flush(self) -> list[CorrelationAlert]:
        """End of stream: judge every window still waiting for its close."""
        return [a for a in self._close(float("inf"), final=True) if a.reported]

    def subscribers(self, rule_ref: str) -> list[str]:
        """Keys of the correlations a rule's matches feed directly."""
        return sorted({key for key, _slot in self._subscribers.get(rule_ref, [])})

    def group_fields(self, key: str) -> list[str]:
        """Event fields a correlation reads (group-by through aliases, and its value field)."""
        corr = self._corrs[key]
        names = {a.get(g, g) for a in corr.aliases for g in corr.group_by} | set(corr.group_by)
        if corr.field_name:
            names |= {a.get(corr.field_name, corr.field_name) for a in corr.aliases} | {corr.field_name}
        return sorted(names)

    def group_key(self, key: str, rule_ref: str, fields: Mapping[str, Any]) -> str | None:
        """The group a match of ``rule_ref`` falls in for correlation ``key`` (None: a group-by is missing)."""
        corr = self._corrs[key]
        for sub_key, slot in self._subscribers.get(rule_ref, []):
            if sub_key == key:
                found = _group_values(corr, slot, fields)
                return None if found is None else found[0]
        return None

    def _dispatch(
        self,
        rule_ref: str,
        time: float,
        seq: int,
        fields: Mapping[str, Any],
        ref: Any = None,
        only: str | None = None,
    ) -> list[CorrelationAlert]:
        alerts: list[CorrelationAlert] = []
        for key, slot in self._subscribers.get(rule_ref, []):
            if only is None or key == only:
                alerts += self._chain(self._add(self._corrs[key], slot, time, seq, fields, ref))
        return alerts

    def _chain(self, fired: list[CorrelationAlert]) -> list[CorrelationAlert]:
        """Feed each alert to the correlations over it, as a match at the end of its window."""
        alerts = list(fired)
        for alert in fired:
            for name in self._corrs[alert.correlation].names | {alert.correlation}:
                alerts += self._dispatch(name, alert.window_end, alert.end_seq, alert.group, alert.alert_id)
        return alerts

    def _add(
        self,
        corr: _Correlation,
        slot: int,
        time: float,
        seq: int,
        fields: Mapping[str, Any],
        ref: Any = None,
    ) -> list[CorrelationAlert]:
        aliases = corr.aliases[slot]
        found = _group_values(corr, slot, fields)
        if found is None:
            self.counters["missing_group_key"] += 1
            return []
        gkey, raw = found
        groups = self._groups[corr.key]
        state = groups.get(gkey)
        if state is None:
            # Empty tuples until a window fires or waits: most groups never need those lists (memory per group).
            state = {"values": raw, "entries": [], "fired": (), "pending": ()}
            groups[gkey] = state
            if len(groups) > self.max_groups:
                groups.popitem(last=False)
                self.counters["evicted_groups"] += 1
        groups.move_to_end(gkey)
        value = fields.get(aliases.get(corr.field_name, corr.field_name)) if corr.field_name else None
        entries: list[Entry] = state["entries"]
        if any(
            e[2] == slot and (e[4] == ref if ref is not None else e[1] == seq)
            for e in _between(entries, time, time)
        ):
            return []  # the same match replayed: counting it twice would be wrong
        bisect.insort(entries, (time, seq, slot, value, ref), key=_order)
        self._prune(corr, state)
        ends = sorted({e[0] for e in _between(entries, time, time + corr.span)})
        if not corr.eager:
            for end in ends:
                if end not in state["pending"] and end not in state["fired"]:
                    _insert(state, "pending", end)
                    heapq.heappush(self._pending[corr.key], [end, gkey])
            return []
        fired = [self._judge(corr, gkey, state, end) for end in ends]
        return [a for a in fired if a is not None]

    def _prune(self, corr: _Correlation, state: dict[str, Any]) -> None:
        """Forget what no window still open can need: the state stays proportional to open windows."""
        if self.watermark is None:
            return
        bound = self.watermark - self.lateness
        entries = state["entries"]
        cut = bisect.bisect_left(entries, bound - corr.span, key=_time)
        del entries[:cut]
        if state["fired"]:
            state["fired"] = [t for t in state["fired"] if t >= bound] or ()

    def _judge(
        self, corr: _Correlation, gkey: str, state: dict[str, Any], end: float
    ) -> CorrelationAlert | None:
        if end in state["fired"]:
            return None
        start = end - corr.span
        window = _between(state["entries"], start, end)
        metric = measure(corr.kind, window, corr.percent)
        if metric is None or not compare(metric, corr.op, corr.count):
            return None
        _insert(state, "fired", end)
        name = json.dumps([corr.key, json.loads(gkey), start], default=str)
        return CorrelationAlert(
            alert_id=str(uuid.uuid5(ALERT_NAMESPACE, name)),
            correlation=corr.key,
            title=corr.title,
            level=corr.level,
            group=dict(zip(corr.group_by, state["values"], strict=True)),
            window_start=start,
            window_end=end,
            metric=metric,
            event_seqs=tuple(sorted({e[1] for e in window})),
            event_refs=tuple(dict.fromkeys(e[4] for e in window if e[4] is not None)),
            end_seq=max(e[1] for e in window if e[0] == end),
            reported=corr.reported,
        )

    def _close(self, bound: float, *, final: bool) -> list[CorrelationAlert]:
        """Judge the windows that ended before ``bound``: no event still accepted can change them."""
        alerts: list[CorrelationAlert] = []
        for key, corr in self._corrs.items():
            heap = self._pending[key]
            while heap and (heap[0][0] < bound or final):
                end, gkey = heapq.heappop(heap)
                state = self._groups[key].get(gkey)
                if state is None or end not in state["pending"]:
                    continue
                state["pending"].remove(end)
                alert = self._judge(corr, gkey, state, end)
                if alert is not None:
                    alerts += self._chain([alert])
        return alerts

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain JSON-able data, to be committed together with the consumed offsets."""
        return json.loads(
            json.dumps(
                {
                    "version": SNAPSHOT_VERSION,
                    "watermark": self.watermark,
                    "counters": self.counters,
                    "groups": {k: list(g.items()) for k, g in self._groups.items()},
                    "pending": self._pending,
                },
                default=str,
            )
        )

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Resume from ``snapshot()``; correlations absent from the snapshot start empty."""
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(
                f"correlation snapshot version {snapshot.get('version')!r} is not {SNAPSHOT_VERSION}"
            )
        data = json.loads(json.dumps(snapshot))
        self._reset()
        self.watermark = data["watermark"]
        self.counters.update(data["counters"])
        for key, items in data["groups"].items():
            if key in self._groups:
                self._groups[key] = OrderedDict((gkey, state) for gkey, state in items)
                self._pending[key] = data["pending"].get(key, [])
