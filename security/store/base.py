"""The event store contract: one interface, two back-ends (embedded SQLite, OpenSearch).

Writes are idempotent by ``event.id`` (delivery is at-least-once everywhere, so the same event may arrive
twice). Queries are the small, documented language of ``POST /api/v1/events/search``: a time range, datasets to
include or exclude, exact-value filters on dotted ECS fields, one free-text expression, sort by ``@timestamp``
with ``search_after`` paging, and terms / date-histogram / count aggregations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Scalar = str | int | float | bool


@dataclass(frozen=True)
class EventQuery:
    start: datetime
    """Inclusive lower bound on ``@timestamp``."""
    end: datetime
    """Exclusive upper bound on ``@timestamp``."""
    datasets: Sequence[str] = ()
    """Only these ``event.dataset`` values (empty: all that are not excluded)."""
    exclude_datasets: Sequence[str] = ()
    """Never these (how the control plane's audit dataset is hidden from roles that may not read it)."""
    filters: Mapping[str, Sequence[Scalar]] = field(default_factory=dict)
    """Dotted field -> accepted values (any of them); several fields must all match."""
    text: str | None = None
    """Free text: every word must occur in the event (case-insensitive, whole words, ``"quoted phrase"``)."""
    sort: Literal["asc", "desc"] = "desc"
    size: int = 100
    search_after: Sequence[Any] | None = None
    """The ``sort`` value of the last hit of the previous page."""


@dataclass(frozen=True)
class Hit:
    doc: dict[str, Any]
    sort: list[Any]
    """Pass as ``search_after`` to continue after this hit."""


@dataclass(frozen=True)
class SearchPage:
    hits: list[Hit]
    total: int
    """Events matching the query (not only this page)."""


@dataclass(frozen=True)
class TermsAgg:
    field: str
    size: int = 10


@dataclass(frozen=True)
class DateHistogramAgg:
    interval_s: int
    field: str = "@timestamp"


Aggregation = TermsAgg | DateHistogramAgg


class EventStore(ABC):
    @abstractmethod
    def write(self, docs: Sequence[Mapping[str, Any]]) -> int:
        """Store ``docs`` (each with ``event.id``, ``event.dataset``, ``@timestamp``); an id already stored is
        not stored again. Returns how many were new. Durable when it returns."""

    @abstractmethod
    def search(self, query: EventQuery) -> SearchPage: ...

    @abstractmethod
    def aggregate(self, query: EventQuery, aggregations: Mapping[str, Aggregation]) -> dict[str, Any]:
        """``{"count": n, name: [{"key": k, "count": c}, ...], ...}``; terms sorted by count desc then key,
        histogram buckets by key (RFC 3339 bucket start) ascending, empty buckets omitted."""

    @abstractmethod
    def drop_before(self, dataset: str, cutoff: datetime) -> int:
        """Retention: forget ``dataset``'s events older than ``cutoff``; returns how many went (or an estimate
        when whole partitions or indices are dropped)."""

    @abstractmethod
    def check(self) -> None:
        """Raise unless the store is usable now (``/readyz``)."""

    @abstractmethod
    def close(self) -> None: ...
