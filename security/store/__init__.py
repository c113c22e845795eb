"""The event store: embedded SQLite (FTS5) or OpenSearch, behind ``base.EventStore``.

``open_store(backend, **options)`` builds the configured one: ``open_store("sqlite", path=...)`` or
``open_store("opensearch", hosts=[...], username=..., password=..., ca_file=..., index_prefix=...)``.
"""

from collections.abc import Callable
from typing import Any

from security.store.base import (
    Aggregation,
    DateHistogramAgg,
    EventQuery,
    EventStore,
    Hit,
    SearchPage,
    TermsAgg,
)
from security.store.opensearch_store import BulkWriteError, OpenSearchEventStore, StoreError
from security.store.query import InvalidDocument
from security.store.sqlite_store import SqliteEventStore

BACKENDS: dict[str, Callable[..., EventStore]] = {
    "sqlite": SqliteEventStore,
    "opensearch": OpenSearchEventStore,
}


def open_store(backend: str, **options: Any) -> EventStore:
    """The event store named by ``store.backend``, built with that backend's settings as keyword arguments."""
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise ValueError(
            f"Event store backend '{backend}' is unknown (known: {', '.join(BACKENDS)})"
        ) from None
    return factory(**options)


__all__ = [
    "BACKENDS",
    "Aggregation",
    "BulkWriteError",
    "DateHistogramAgg",
    "EventQuery",
    "EventStore",
    "Hit",
    "InvalidDocument",
    "OpenSearchEventStore",
    "SearchPage",
    "SqliteEventStore",
    "StoreError",
    "TermsAgg",
    "open_store",
]
