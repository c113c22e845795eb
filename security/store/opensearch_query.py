"""``EventQuery`` and aggregations as OpenSearch query DSL, and the indices a query has to read.

Same meaning as the SQLite store: filters are exact values (any of them), free-text terms are phrases that must
all occur (each in ``event.original`` or in ``message``), the time range is ``[start, end)`` at microsecond
precision, hits sort by ``@timestamp`` then ``event.id``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from control_plane.core import clock
from security.store.base import Aggregation, DateHistogramAgg, EventQuery, Scalar, TermsAgg
from security.store.opensearch_mapping import IP_FIELDS, LONG_FIELDS, is_native
from security.store.query import (
    check_aggregations,
    check_dataset,
    check_field,
    epoch_us,
    rfc3339_us,
    text_terms,
)

MAX_LISTED_INDICES = 40
"""Past this many (dataset, day) indices, a query names index patterns instead (the URL must stay short)."""
TEXT_FIELDS = ["event.original", "message"]
_MATCH_NONE: dict[str, Any] = {"bool": {"must_not": [{"match_all": {}}]}}


def index_name(prefix: str, dataset: str, timestamp_us: int) -> str:
    day = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=timestamp_us)
    return f"{prefix}-{dataset}-{day:%Y.%m.%d}"


def index_day(prefix: str, dataset: str, index: str) -> datetime | None:
    """The UTC midnight an index of ``dataset`` holds, or None for a name that is not one of its days."""
    stem = f"{prefix}-{dataset}-"
    if not index.startswith(stem):
        return None
    try:
        return datetime.strptime(index[len(stem) :], "%Y.%m.%d").replace(tzinfo=UTC)
    except ValueError:
        return None


def indices(prefix: str, query: EventQuery) -> str:
    """The indices to search, as few as the time range and datasets allow (missing ones are ignored)."""
    datasets = [check_dataset(name) for name in query.datasets] or ["*"]
    first = query.start.astimezone(UTC).date()
    last = (query.end.astimezone(UTC) - timedelta(microseconds=1)).date()
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)] if last >= first else [first]
    if len(days) * len(datasets) <= MAX_LISTED_INDICES:
        return ",".join(f"{prefix}-{name}-{day:%Y.%m.%d}" for name in datasets for day in days)
    return ",".join(f"{prefix}-{name}-*" for name in datasets)


def _filter_values(field: str, values: Sequence[Scalar]) -> list[Scalar]:
    """Values as the field's mapping takes them; values it could never hold are dropped (as they would match
    nothing in SQLite) rather than making OpenSearch reject the whole query."""
    kept: list[Scalar] = []
    for value in values:
        if is_native(field):  # flat_object indexes every leaf as a string
            kept.append(("true" if value else "false") if isinstance(value, bool) else str(value))
        elif field in IP_FIELDS:
            try:
                kept.append(str(ipaddress.ip_address(str(value))))
            except ValueError:
                continue
        elif field in LONG_FIELDS:
            try:
                kept.append(int(str(value)))
            except ValueError:
                continue
        else:
            kept.append(("true" if value else "false") if isinstance(value, bool) else value)
    return kept


def query_dsl(query: EventQuery) -> dict[str, Any]:
    filters: list[dict[str, Any]] = [
        {"range": {"@timestamp": {"gte": clock.rfc3339(query.start), "lt": clock.rfc3339(query.end)}}}
    ]
    if query.datasets:
        filters.append({"terms": {"event.dataset": [check_dataset(name) for name in query.datasets]}})
    for field, values in query.filters.items():
        kept = _filter_values(check_field(field), values)
        filters.append({"terms": {field: kept}} if kept else _MATCH_NONE)
    must = [
        {"multi_match": {"query": term, "fields": TEXT_FIELDS, "type": "phrase"}}
        for term in text_terms(query.text)
    ]
    must_not = [{"terms": {"event.dataset": list(query.exclude_datasets)}}] if query.exclude_datasets else []
    return {"bool": {"filter": filters, "must": must, "must_not": must_not}}


def search_body(query: EventQuery) -> dict[str, Any]:
    order = query.sort
    body: dict[str, Any] = {
        "query": query_dsl(query),
        "size": query.size,
        "sort": [{"@timestamp": {"order": order}}, {"event.id": {"order": order}}],
        "track_total_hits": True,
    }
    if query.search_after:
        if len(query.search_after) != 2:
            raise ValueError("search_after takes the [@timestamp, event.id] of a hit")
        timestamp, event_id = query.search_after
        # A date_nanos field sorts (and resumes) on epoch nanoseconds.
        nanos = epoch_us(clock.parse_rfc3339(str(timestamp))) * 1000
        body["search_after"] = [nanos, str(event_id)]
    return body


def aggregations_dsl(aggregations: Mapping[str, Aggregation]) -> dict[str, Any]:
    check_aggregations(aggregations)
    dsl: dict[str, Any] = {}
    for name, agg in aggregations.items():
        if isinstance(agg, TermsAgg):
            # Daily indices are shards of their own: ask each for more than the top N so the merged top N is
            # exact in practice (terms counts across shards are otherwise approximate).
            dsl[name] = {
                "terms": {
                    "field": agg.field,
                    "size": agg.size,
                    "shard_size": max(100, agg.size * 10),
                    "order": [{"_count": "desc"}, {"_key": "asc"}],
                }
            }
        else:
            interval = f"{int(agg.interval_s)}s"
            dsl[name] = {
                "date_histogram": {"field": agg.field, "fixed_interval": interval, "min_doc_count": 1}
            }
    return dsl


def aggregation_result(
    response: Mapping[str, Any], aggregations: Mapping[str, Aggregation]
) -> dict[str, Any]:
    result: dict[str, Any] = {"count": response["hits"]["total"]["value"]}
    found = response.get("aggregations", {})
    for name, agg in aggregations.items():
        buckets = found.get(name, {}).get("buckets", [])
        if isinstance(agg, DateHistogramAgg):
            result[name] = [{"key": rfc3339_us(b["key"] * 1000), "count": b["doc_count"]} for b in buckets]
        else:
            result[name] = [
                {"key": b.get("key_as_string", b["key"]), "count": b["doc_count"]} for b in buckets
            ]
    return result
