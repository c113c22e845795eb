"""Detection in two stages, the same code online and offline: match (stateless), then correlate (stateful).

``Detector.match_records`` turns one normalised event into match records, one per destination: the
standalone alert of a rule that reports on its own, and one per correlation the rule feeds, keyed by
(correlation, group values) so that one correlation window always lands on one partition of the ``matches``
topic. ``Correlator.feed`` turns match records into alerts. ``evaluate`` chains both over a list of events
(``refsys ingest``, ``refsys rules test``, ``POST /api/v1/rules/test``, backtests, tests); the serving stages
(``security.detection.stages``) put the bus between them.

Ties in event time are ordered by ``seq``: the ingest order (offline the event's position; online the
ingest time in microseconds with the bus offset as the tie-break), deterministic, so a replay orders alike.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from control_plane.core import clock
from security.alerts.model import Alert, AlertEvent, entities_of
from security.detection.matcher import Matcher, RuleMatch
from security.detection.ruleset import RuleSet, rule_ref
from security.sigma.correlation import CorrelationAlert, CorrelationEngine

RULE_ALERT_NAMESPACE = uuid.UUID("0b6f4a0e-3f3c-5a55-8d0e-2f5f1f6c9a11")
STANDALONE = ""
"""The ``target`` of a match record that raises the rule's own alert rather than feeding a correlation."""
ENTITY_KEEP = ("host.name", "host.hostname", "user.name", "source.ip", "client.ip", "destination.ip")
"""Flat fields a match record always carries, besides the rule's own: incidents group on them."""


def epoch(value: Any) -> float | None:
    """An event's ``@timestamp`` (RFC 3339 text or datetime) as POSIX seconds, or None when unreadable."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        moment = clock.canonical_moment(value)
        if moment is not None:
            return moment.timestamp()
        try:
            return clock.parse_rfc3339(value).timestamp()
        except ValueError:
            return None
    return None


def rfc3339(seconds: float) -> str:
    return clock.rfc3339(clock.from_timestamp(seconds))


class Detector:
    """The stateless stage: which rules an event matches, as records for the correlation stage."""

    def __init__(self, ruleset: RuleSet, engine: CorrelationEngine | None = None) -> None:
        self.ruleset = ruleset
        self.matcher = Matcher(ruleset.rules)
        # Only to route: which correlations a rule feeds, their group keys, whether it alerts on its own.
        self._engine = engine or CorrelationEngine(ruleset.collection)
        self._plan: dict[str, tuple[bool, list[str], list[str]]] = {}
        for routed in ruleset.rules:
            ref = rule_ref(routed.compiled.rule)
            targets = self._engine.subscribers(ref)
            needs = sorted({f for t in targets for f in self._engine.group_fields(t)})
            self._plan[ref] = (self._engine.standalone_alerts(ref), targets, needs)

    def match_records(self, doc: Mapping[str, Any], seq: int) -> list[tuple[str, dict[str, Any]]]:
        """``(bus key, record)`` for every destination of every rule the event matches."""
        out: list[tuple[str, dict[str, Any]]] = []
        for match in self.matcher.match(doc):
            out += self._records(match, seq)
        return out

    def _records(self, match: RuleMatch, seq: int) -> list[tuple[str, dict[str, Any]]]:
        routed = match.rule
        ref = rule_ref(routed.compiled.rule)
        standalone, targets, needs = self._plan[ref]
        flat = match.flat
        mapped = routed.routing.fields
        # The correlation reads Sigma names (group-by) or document names: give both.
        values: dict[str, Any] = {}
        for name in needs:
            value = flat.get(mapped.get(name, name))
            if value is None and routed.routing.route is not None:
                resolved = routed.routing.route.resolve(name)
                value = flat.get(resolved) if resolved else None
            if value is not None:
                values[name] = value
        event_id = str(flat.get("event.id") or "")
        record: dict[str, Any] = {
            "rule": ref,
            "time": epoch(flat.get("@timestamp")) or clock.utcnow().timestamp(),
            "seq": seq,
            "record": match.record,
            "ingested": epoch(flat.get("event.ingested")),
            "event": {
                "id": event_id,
                "timestamp": str(flat.get("@timestamp") or ""),
                "dataset": str(flat.get("event.dataset") or ""),
                "fields": {d: flat[d] for d in (*mapped.values(), *ENTITY_KEEP) if d in flat},
            },
            "values": values,
        }
        out: list[tuple[str, dict[str, Any]]] = []
        if standalone:
            out.append((f"{ref}|{event_id}", {**record, "target": STANDALONE}))
        for target in targets:
            group = self._engine.group_key(target, ref, values)
            if group is not None:
                out.append((f"{target}|{group}", {**record, "target": target}))
        return out


class Correlator:
    """The stateful stage: match records in, alerts out; its state snapshots with the offsets it consumed."""

    def __init__(self, ruleset: RuleSet, *, lateness: float = 0.0, max_groups: int = 100_000) -> None:
        self.ruleset = ruleset
        self.engine = CorrelationEngine(ruleset.collection, lateness=lateness, max_groups=max_groups)

    def feed(self, record: Mapping[str, Any]) -> list[Alert]:
        if record["target"] == STANDALONE:
            return [self._rule_alert(record)]
        fired = self.engine.feed(
            record["rule"],
            record["time"],
            record["seq"],
            record["values"],
            ref=record["event"]["id"] or None,
            only=record["target"],
        )
        return [self._correlation_alert(a) for a in fired]

    def flush(self) -> list[Alert]:
        """End of a finite stream: windows waiting for their close are judged now."""
        return [self._correlation_alert(a) for a in self.engine.flush()]

    def _rule_alert(self, record: Mapping[str, Any]) -> Alert:
        event = record["event"]
        name = json.dumps([record["rule"], event["id"], record.get("record")])
        timestamp = event["timestamp"] or rfc3339(record["time"])
        return Alert(
            id=str(uuid.uuid5(RULE_ALERT_NAMESPACE, name)),
            kind="rule",
            rule=self.ruleset.describe(record["rule"]),
            first=timestamp,
            last=timestamp,
            detected_at=rfc3339(clock.utcnow().timestamp()),
            events=(AlertEvent(event["id"], timestamp, event["dataset"], dict(event["fields"])),),
            entities=entities_of([event["fields"]]),
        )

    def _correlation_alert(self, fired: CorrelationAlert) -> Alert:
        return Alert(
            id=fired.alert_id,
            kind="correlation",
            rule=self.ruleset.describe(fired.correlation),
            first=rfc3339(fired.window_start),
            last=rfc3339(fired.window_end),
            detected_at=rfc3339(clock.utcnow().timestamp()),
            events=tuple(AlertEvent(str(ref), "", "", {}) for ref in fired.event_refs),
            group=dict(fired.group),
            entities=entities_of([fired.group]),
            metric=fired.metric,
        )


class InlineDetection:
    """Both stages in the caller's thread, without the bus: events in, alerts handed to ``sinks`` as they fire.
    ``refsys ingest`` runs it across its batches; ``evaluate`` over one finite list."""

    def __init__(
        self,
        ruleset: RuleSet,
        *,
        lateness: float = 0.0,
        sinks: Sequence[Callable[[list[Alert]], object]] = (),
    ) -> None:
        self.detector = Detector(ruleset)
        self.correlator = Correlator(ruleset, lateness=lateness)
        self.sinks = list(sinks)
        self._seq = 0

    def __call__(self, docs: Iterable[Mapping[str, Any]]) -> None:
        alerts: list[Alert] = []
        for doc in docs:
            for _key, record in self.detector.match_records(doc, self._seq):
                alerts += self.correlator.feed(record)
            self._seq += 1
        self._hand_over(alerts)

    def close(self) -> None:
        """The input is over: judge the windows still open."""
        self._hand_over(self.correlator.flush())

    def _hand_over(self, alerts: list[Alert]) -> None:
        if alerts:
            for sink in self.sinks:
                sink(alerts)


def evaluate(ruleset: RuleSet, docs: Iterable[Mapping[str, Any]], *, lateness: float = 0.0) -> list[Alert]:
    """Every alert the rule set raises on a finite list of events, in order (windows flushed at the end)."""
    alerts: list[Alert] = []
    inline = InlineDetection(ruleset, lateness=lateness, sinks=[alerts.extend])
    inline(docs)
    inline.close()
    return alerts
