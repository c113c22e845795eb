"""What both back-ends agree on when they read documents and queries: names, free text, time.

Kept apart from either back-end so that SQLite and OpenSearch accept exactly the same datasets, ids, fields and
free-text expressions, and split a free-text expression into the same terms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from control_plane.core import clock
from security.store.base import Aggregation, DateHistogramAgg, TermsAgg

DATASET = re.compile(r"[a-z0-9][a-z0-9_.]{0,199}")
"""``event.dataset``: lowercase, no ``-`` (so that ``<prefix>-<dataset>-*`` index patterns cannot match
another dataset's indices) and nothing OpenSearch refuses in an index name."""
FIELD = re.compile(r"[A-Za-z0-9_@][A-Za-z0-9_@-]*(?:\.[A-Za-z0-9_@-]+)*")
"""A dotted field path; no quotes, brackets or glob characters, so it can be embedded in a JSON path."""
MAX_ID_BYTES = 512
"""OpenSearch's limit on ``_id``; enforced on SQLite too so a document accepted by one is accepted by both."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TERM = re.compile(r'"([^"]*)"|([^\s"]+)')


class InvalidDocument(ValueError):
    """A document without a usable ``event.id``, ``event.dataset`` or ``@timestamp``: nothing is stored."""


def check_dataset(name: str) -> str:
    if not DATASET.fullmatch(name):
        raise ValueError(f"invalid dataset {name!r}: expected lowercase letters, digits, '_' and '.'")
    return name


def check_field(name: str) -> str:
    if not FIELD.fullmatch(name):
        raise ValueError(f"invalid field name {name!r}")
    return name


def identity(doc: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(event.id, event.dataset, @timestamp)`` of a document about to be stored, checked."""
    event = doc.get("event")
    event_id = event.get("id") if isinstance(event, Mapping) else None
    dataset = event.get("dataset") if isinstance(event, Mapping) else None
    timestamp = doc.get("@timestamp")
    if not isinstance(event_id, str) or not event_id or len(event_id.encode()) > MAX_ID_BYTES:
        raise InvalidDocument(f"document without a usable event.id: {event_id!r}")
    if not isinstance(dataset, str) or not DATASET.fullmatch(dataset):
        raise InvalidDocument(f"event {event_id}: invalid event.dataset {dataset!r}")
    if not isinstance(timestamp, str):
        raise InvalidDocument(f"event {event_id}: @timestamp missing")
    return event_id, dataset, timestamp


def check_aggregations(aggregations: Mapping[str, Aggregation]) -> None:
    for name, agg in aggregations.items():
        if name == "count":
            raise ValueError("'count' is always in the result: name the aggregation otherwise")
        check_field(agg.field)
        if isinstance(agg, TermsAgg) and agg.size < 1:
            raise ValueError(f"aggregation {name}: size must be positive")
        if isinstance(agg, DateHistogramAgg) and agg.interval_s < 1:
            raise ValueError(f"aggregation {name}: interval_s must be at least 1")


def text_terms(text: str | None) -> list[str]:
    """The words and ``"quoted phrases"`` of a free-text expression; every one must occur.

    A term without a letter or digit (``-``, ``"!!"``) would analyse to nothing: it is dropped rather than
    making the whole query match nothing, identically on both back-ends. An unbalanced quote is ignored.
    """
    if not text:
        return []
    terms = []
    for match in _TERM.finditer(text):
        term = (match.group(1) if match.group(1) is not None else match.group(2)).strip()
        if any(char.isalnum() for char in term):
            terms.append(term)
    return terms


def epoch_us(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact, unlike ``timestamp() * 1e6``)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: queries take timezone-aware UTC times")
    delta = moment.astimezone(UTC) - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def rfc3339_us(us: int) -> str:
    """The RFC 3339 form (``...000000Z``) of microseconds since the epoch: histogram bucket keys."""
    return clock.rfc3339(EPOCH + timedelta(microseconds=us))
