"""The production event store: OpenSearch, one index per dataset and UTC day, written with the bulk API.

Daily indices rather than rollover aliases: an event lands in the index of its own day (a late or replayed event
too), so a time-range query names only the indices it needs, ``drop_before`` deletes whole indices by name, and
the same ``(index, _id = event.id)`` comes out of every retry, which is what makes bulk ``create`` idempotent
(409 means "already stored"). Rollover would put an event in whatever index is current, so a replay a day later
would store it again.

Idempotency is therefore per (dataset, day): it holds as long as an event's ``@timestamp`` is stable, which
DESIGN.md's id rules give (ids derive from the source's identity, timestamps included). The SQLite store
additionally catches the same id re-sent with another day's timestamp; doing that here would cost a search over
every index per bulk.

Bulk requests are retried with backoff on 429 and 503 (whole request or single items) and on connection errors;
other item errors are reported together after the rest of the batch is stored.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from opensearchpy import OpenSearch
from opensearchpy.exceptions import ConnectionError as TransportConnectionError
from opensearchpy.exceptions import TransportError

from control_plane.core import clock
from security.store import opensearch_query as dsl
from security.store.base import Aggregation, EventQuery, EventStore, Hit, SearchPage
from security.store.opensearch_mapping import index_template, ism_policy
from security.store.query import InvalidDocument, check_dataset, epoch_us, identity

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 503})
DEFAULT_BACKOFFS_S = (0.5, 1.0, 2.0, 4.0, 8.0)


class StoreError(RuntimeError):
    """The event store refused or could not take a request."""


class BulkWriteError(StoreError):
    """Some documents of a batch were not stored (the others were); ``failures`` is ``[(event.id, reason)]``."""

    def __init__(self, failures: list[tuple[str, str]], stored: int) -> None:
        self.failures = failures
        self.stored = stored
        first = "; ".join(f"{event_id}: {reason}" for event_id, reason in failures[:3])
        super().__init__(f"{len(failures)} events not stored ({stored} new ones were): {first}")


class OpenSearchEventStore(EventStore):
    """``EventStore`` on OpenSearch (2.7+ for ``flat_object``). ``refresh=True`` makes every write visible to
    search at once (tests); production leaves it to the refresh interval."""

    def __init__(
        self,
        hosts: Sequence[str],
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | Path | None = None,
        verify_certs: bool = True,
        index_prefix: str = "refsys-events",
        retention_days: int | None = None,
        refresh: bool = False,
        backoffs_s: Sequence[float] = DEFAULT_BACKOFFS_S,
        timeout_s: float = 30.0,
        client: OpenSearch | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.prefix = index_prefix
        self._retention_days = retention_days
        self._refresh = refresh
        self._backoffs_s = tuple(backoffs_s)
        self._sleep = sleep
        self._ready = False
        self._client = client or OpenSearch(
            hosts=list(hosts),
            http_auth=(username, password or "") if username else None,
            ca_certs=str(ca_file) if ca_file else None,
            verify_certs=verify_certs,
            timeout=timeout_s,
            max_retries=0,  # retries are ours, with backoff
            http_compress=True,
        )

    # -- set-up ------------------------------------------------------------------------------------------------

    def ensure_setup(self) -> None:
        """Install the index template (idempotent) and, where the ISM plugin exists, the retention policy."""
        if self._ready:
            return
        self._client.indices.put_index_template(name=self.prefix, body=index_template(self.prefix))
        self._install_ism_policy()
        self._ready = True

    def _install_ism_policy(self) -> None:
        """Best effort: clusters without the ISM plugin (osmem-server, some managed offerings) keep the indices
        until ``drop_before`` removes them. An existing policy is updated (ISM wants its sequence number)."""
        path = f"/_plugins/_ism/policies/{self.prefix}-retention"
        policy = ism_policy(self.prefix, self._retention_days)
        try:
            self._client.transport.perform_request("PUT", path, body=policy)
        except TransportError as exc:
            if exc.status_code != 409:
                logger.warning("ISM policy not installed (no ISM plugin?): %s %s", exc.status_code, exc.error)
                return
            current = self._client.transport.perform_request("GET", path)
            params = {"if_seq_no": current["_seq_no"], "if_primary_term": current["_primary_term"]}
            self._client.transport.perform_request("PUT", path, body=policy, params=params)

    # -- writing -----------------------------------------------------------------------------------------------

    def write(self, docs: Sequence[Mapping[str, Any]]) -> int:
        self.ensure_setup()
        actions: dict[str, tuple[dict[str, Any], Mapping[str, Any]]] = {}
        for doc in docs:
            event_id, dataset, timestamp = identity(doc)
            if event_id not in actions:  # the first of an id wins, as in SQLite
                index = dsl.index_name(self.prefix, dataset, epoch_us(_parse(event_id, timestamp)))
                actions[event_id] = ({"create": {"_index": index, "_id": event_id}}, doc)
        return self._bulk(list(actions.values())) if actions else 0

    def _bulk(self, pending: list[tuple[dict[str, Any], Mapping[str, Any]]]) -> int:
        """Send ``create`` actions until none is left to retry; returns how many were created."""
        created = 0
        failures: list[tuple[str, str]] = []
        attempts = len(self._backoffs_s) + 1
        for attempt, backoff in enumerate(itertools.chain(self._backoffs_s, itertools.repeat(None)), start=1):
            body = "".join(orjson.dumps(part).decode() + "\n" for action in pending for part in action)
            try:
                response = self._client.bulk(body=body, refresh="true" if self._refresh else "false")
            except TransportError as exc:
                if not _retryable(exc):
                    raise StoreError(f"bulk request refused: {exc}") from exc
                reason = f"request failed with {exc.status_code}"
                retry = pending
            else:
                retry = []
                for item, action in zip(response["items"], pending, strict=True):
                    outcome = item["create"]
                    status = outcome.get("status", 0)
                    if status in (200, 201):
                        created += 1
                    elif status == 409:  # the same (index, id) exists: stored by an earlier delivery
                        pass
                    elif status in RETRYABLE_STATUS:
                        retry.append(action)
                    else:
                        failures.append((action[0]["create"]["_id"], str(outcome.get("error"))))
                reason = f"{len(retry)} items refused with 429/503"
            if not retry:
                break
            if backoff is None:
                logger.error("bulk attempt #%d/%d failed; escalating: %s", attempt, attempts, reason)
                failures += [(action[0]["create"]["_id"], reason) for action in retry]
                break
            logger.warning(
                "bulk attempt #%d/%d failed; will retry in %.1f s: %s", attempt, attempts, backoff, reason
            )
            self._sleep(backoff)
            pending = retry
        if failures:
            raise BulkWriteError(failures, created)
        return created

    # -- reading -----------------------------------------------------------------------------------------------

    def _search(self, query: EventQuery, body: dict[str, Any]) -> dict[str, Any]:
        response: dict[str, Any] = self._client.search(
            index=dsl.indices(self.prefix, query),
            body=body,
            ignore_unavailable=True,
            allow_no_indices=True,
        )
        return response

    def search(self, query: EventQuery) -> SearchPage:
        response = self._search(query, dsl.search_body(query))
        hits = []
        for hit in response["hits"]["hits"]:
            doc = hit["_source"]
            hits.append(Hit(doc=doc, sort=[doc["@timestamp"], doc["event"]["id"]]))
        return SearchPage(hits=hits, total=response["hits"]["total"]["value"])

    def aggregate(self, query: EventQuery, aggregations: Mapping[str, Aggregation]) -> dict[str, Any]:
        body = {
            "query": dsl.query_dsl(query),
            "size": 0,
            "track_total_hits": True,
            "aggs": dsl.aggregations_dsl(aggregations),
        }
        return dsl.aggregation_result(self._search(query, body), aggregations)

    # -- retention and life cycle ----------------------------------------------------------------------------

    def drop_before(self, dataset: str, cutoff: datetime) -> int:
        """Delete ``dataset``'s daily indices that ended by ``cutoff``, and the earlier events of the index of the
        day that contains it. Exact: counts are read before deleting."""
        check_dataset(dataset)
        found = self._client.indices.get(
            index=f"{self.prefix}-{dataset}-*", ignore_unavailable=True, allow_no_indices=True
        )
        gone = 0
        for index in sorted(found):
            day = dsl.index_day(self.prefix, dataset, index)
            if day is None or day >= cutoff:
                continue
            if day + timedelta(days=1) <= cutoff:
                gone += self._client.count(index=index)["count"]
                self._client.indices.delete(index=index)
            else:
                response = self._client.delete_by_query(
                    index=index,
                    body={"query": {"range": {"@timestamp": {"lt": clock.rfc3339(cutoff)}}}},
                    refresh=True,
                    conflicts="proceed",
                )
                gone += response["deleted"]
        return gone

    def check(self) -> None:
        try:
            health = self._client.cluster.health()
        except TransportError as exc:
            raise StoreError(f"OpenSearch unreachable: {exc}") from exc
        if health.get("status") == "red":
            raise StoreError("OpenSearch cluster health is red")

    def close(self) -> None:
        self._client.close()


def _retryable(exc: TransportError) -> bool:
    return isinstance(exc, TransportConnectionError) or exc.status_code in RETRYABLE_STATUS


def _parse(event_id: str, timestamp: str) -> datetime:
    try:
        return clock.parse_rfc3339(timestamp)
    except ValueError as exc:
        raise InvalidDocument(f"event {event_id}: invalid @timestamp {timestamp!r}") from exc
