"""Rule tests and backtests: events in (a file, a request, the event store), the lines ``refsys rules test`` prints.

Why here and not in the CLI: ``refsys rules test`` and ``POST /api/v1/rules/test`` must give the same lines for
the same rules and events, and both must run the events through the same ``evaluate`` the stages run. Raw
source lines are normalised by the intake's adapters and stamped as the intake would (ids derived from the
file's fingerprint and offsets, so a file tested here names the same event ids ``refsys ingest`` stores), but
event times are never clamped: a backtest replays old events on purpose.

Output lines (DESIGN.md section 4): one per rule match ``{rule_id, rule_title, level, event_index, event_id}``
and one per correlation alert ``{correlation_id, title, group, event_indexes, event_ids, first, last}``;
``event_index`` is the event's 0-based position in the stream tested.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

import orjson

from control_plane.core import clock
from security import ecs
from security.alerts.model import Alert
from security.detection.evaluation import evaluate
from security.detection.ruleset import RuleSet
from security.intake.framing import frame_all
from security.intake.identity import Origin, derived_event_id, line_basis
from security.intake.stamping import Stamp, stamp
from security.sources.base import Line, Rejection
from security.sources.registry import adapter_for
from security.store.base import EventQuery, EventStore

STORE_PAGE = 1000
"""Events read from the store per page during a backtest."""
NO_CLAMP = timedelta(days=365 * 1000)
ECS_SOURCE = "ecs-json"
"""The source name ids of already-normalised documents without one are derived under."""


def normalise(
    data: bytes, *, source: str | None, origin: Origin, observer: str = "rules-test"
) -> tuple[list[dict[str, Any]], list[Rejection]]:
    """Documents from raw lines of ``source`` (through its adapter), or from ECS JSON lines when ``source`` is
    None; every document gets an ``event.id``. Raises ``KeyError`` for an unknown source."""
    adapter = adapter_for(source) if source is not None else None
    framed = frame_all(data, adapter.framing if adapter is not None else "json")
    lines, offsets, rejections = framed.lines, framed.offsets, framed.rejections
    if adapter is None:
        return _ecs_documents(lines, offsets, origin, rejections), rejections
    stamp_for = Stamp(
        source=adapter.name,
        dataset=adapter.dataset,
        observer=observer,
        ingested=clock.utcnow(),
        max_future_skew=NO_CLAMP,
        max_past_skew=None,
    )
    docs: list[dict[str, Any]] = []
    produced: dict[int, int] = {}
    for outcome in adapter.parse(lines):
        if isinstance(outcome, Rejection):
            rejections.append(outcome)
            continue
        number = outcome.line.number
        index = produced.get(number, 0)
        produced[number] = index + 1
        basis = line_basis(origin, number=number, offset=offsets.get(number))
        stamp(outcome.doc, stamp_for, fallback_id=derived_event_id(adapter.name, basis, index))
        docs.append(outcome.doc)
    rejections.sort(key=lambda rejection: rejection.line.number)
    return docs, rejections


def _ecs_documents(
    lines: list[Line], offsets: Mapping[int, int | None], origin: Origin, rejections: list[Rejection]
) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for line in lines:
        if not isinstance(line.value, dict):
            rejections.append(Rejection(line, "an ECS document is a JSON object"))
            continue
        doc = dict(line.value)
        if not ecs.get(doc, "event.id"):
            basis = line_basis(origin, number=line.number, offset=offsets.get(line.number))
            ecs.put(doc, "event.id", derived_event_id(ECS_SOURCE, basis, 0))
        docs.append(doc)
    return docs


def stored_events(
    store: EventStore, start: datetime, end: datetime, *, exclude_datasets: Iterable[str] = ()
) -> Iterator[dict[str, Any]]:
    """Every stored event with ``start <= @timestamp < end``, oldest first, a page at a time."""
    after: list[Any] | None = None
    excluded = tuple(exclude_datasets)
    while True:
        query = EventQuery(
            start=start, end=end, exclude_datasets=excluded, sort="asc", size=STORE_PAGE, search_after=after
        )
        hits = store.search(query).hits
        for hit in hits:
            yield hit.doc
        if len(hits) < STORE_PAGE:
            return
        after = hits[-1].sort


class _Positions:
    """Passes events through while remembering each event id's positions, to map alerts back to indexes."""

    def __init__(self, docs: Iterable[Mapping[str, Any]]) -> None:
        self.docs = docs
        self.positions: dict[str, list[int]] = defaultdict(list)
        self.count = 0

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        for position, doc in enumerate(self.docs):
            self.positions[str(ecs.get(doc, "event.id") or "")].append(position)
            self.count = position + 1
            yield doc


def result_lines(alerts: Iterable[Alert], positions: Mapping[str, list[int]]) -> list[dict[str, Any]]:
    """The output lines of some alerts; a rule match takes the first position of its event id it has not
    reported yet (an event id seen twice, or an auditd rule matching two records of one event)."""
    lines: list[dict[str, Any]] = []
    reported: set[tuple[str, int]] = set()
    for alert in alerts:
        if alert.kind == "rule":
            event_id = alert.events[0].id if alert.events else ""
            candidates = positions.get(event_id) or [-1]
            index = next((i for i in candidates if (alert.rule.id, i) not in reported), candidates[-1])
            reported.add((alert.rule.id, index))
            lines.append(
                {
                    "rule_id": alert.rule.id,
                    "rule_title": alert.rule.title,
                    "level": alert.level,
                    "event_index": index,
                    "event_id": event_id,
                }
            )
            continue
        event_ids = [event.id for event in alert.events]
        indexes = sorted({i for event_id in event_ids for i in positions.get(event_id, ())})
        lines.append(
            {
                "correlation_id": alert.rule.id,
                "title": alert.rule.title,
                "group": alert.group,
                "event_indexes": indexes,
                "event_ids": event_ids,
                "first": alert.first,
                "last": alert.last,
            }
        )
    return lines


def run(ruleset: RuleSet, docs: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Evaluate ``docs`` (streamed from the store a page at a time; the positions and alerts kept grow with
    them, so callers bound the stream) and return the output lines and how many events were evaluated."""
    stream = _Positions(docs)
    alerts = evaluate(ruleset, stream)
    return result_lines(alerts, stream.positions), stream.count


def dumps(line: Mapping[str, Any]) -> str:
    return orjson.dumps(line).decode()
