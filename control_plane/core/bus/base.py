"""The event bus contract that every backend (embedded SQL, Kafka) implements.

Delivery is at-least-once: ``publish`` returns only once the records are durable, and a consumer commits
"processed up to and including" after it has processed them, so a crash between processing and committing
redelivers, never skips. Sinks must therefore be idempotent; nothing here promises exactly-once.
"""

from __future__ import annotations

import re
import secrets
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import orjson

# Kafka's own rule for topic names, applied to every backend so that a topic that works embedded also works
# on a cluster (with its prefix, which counts towards the 249 characters there).
_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,200}")


class BusError(Exception):
    """Root of the bus's errors; callers that only need "the bus failed" catch this one."""


class PublishError(BusError):
    """The records may not be durable: the caller must retry (duplicates are fine, losses are not)."""


class RecordError(BusError, ValueError):
    """The records cannot be published as given (not mappings, not JSON-serialisable); retrying won't help."""


class CommitError(BusError):
    """The commit did not happen; the records will be delivered again."""


class BusUnavailableError(BusError):
    """The bus cannot be used (database or broker unreachable, tables missing); ``/readyz`` reports it."""


@dataclass(frozen=True)
class Record:
    """One record as a consumer sees it; ``offset`` is its position in ``(topic, partition)``."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: dict[str, Any]


class _Closeable(ABC):
    """``with`` support for anything that holds connections and has a ``close``."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Consumer(_Closeable):
    """A member of a consumer group reading one topic. Not thread-safe: one consumer per thread."""

    @abstractmethod
    def poll(self, *, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        """Up to ``max_records`` records from the partitions assigned to this member, in offset order per
        partition; waits up to ``timeout_s`` for the first one and returns ``[]`` if none came."""

    @abstractmethod
    def commit(self, records: Iterable[Record]) -> None:
        """Mark ``records`` processed: per partition, the group resumes after the highest offset given.

        Call it only after processing them; records of a partition below the committed offset are never
        delivered to the group again, the others are.
        """

    @abstractmethod
    def rewind(self) -> None:
        """Go back to the group's committed offsets on the partitions this member owns, so that what was
        polled and not committed comes again (a batch whose handling failed)."""

    @property
    @abstractmethod
    def assignment(self) -> frozenset[int]:
        """The partitions this member reads, as of its last poll (empty before the first)."""

    @abstractmethod
    def close(self) -> None:
        """Leave the group so that the other members take over this member's partitions at once."""


class Bus(_Closeable):
    """Topics split into partitions, written by ``publish`` and read by consumer groups."""

    @abstractmethod
    def publish(self, topic: str, key: str | None, records: Sequence[Mapping[str, Any]]) -> None:
        """Append ``records`` (JSON-serialisable mappings) to ``topic``; durable when this returns.

        All records share ``key``: records with the same key land on the same partition, in order. A ``None``
        key lets the bus choose any partition. Raises ``RecordError`` for records it cannot encode (nothing
        is written) and ``PublishError`` when durability is not certain (retry: duplicates are fine).
        """

    @abstractmethod
    def consumer(self, topic: str, group: str, *, member_id: str | None = None) -> Consumer:
        """A new member of ``group`` on ``topic``; a group resumes from its committed offsets, or from the
        earliest retained record if it has none."""

    @abstractmethod
    def check(self) -> None:
        """Raise ``BusUnavailableError`` unless the bus is usable right now (used by ``/readyz``)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; close this bus's consumers first."""

    def backlog(self, topic: str, group: str) -> int | None:
        """Records of ``topic`` that ``group`` has not committed yet, or None when the backend cannot tell.

        Producers use it for backpressure: a full spool answers 429 instead of growing without bound.
        """
        check_topic(topic)
        return None

    def compact(self, topic: str) -> int:
        """Drop what every consumer group has committed; returns how many stored batches went.

        A no-op for backends that enforce their own retention (Kafka).
        """
        check_topic(topic)
        return 0


def partition_for(key: str | None, partitions: int) -> int:
    """The partition of ``key``: stable across processes and restarts (CRC-32 of its UTF-8 bytes), so that a
    key's records stay in order; a ``None`` key has no order to keep and gets a random partition."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    if key is None:
        return secrets.randbelow(partitions)
    return zlib.crc32(key.encode("utf-8")) % partitions


def check_topic(topic: str) -> str:
    """Refuse a topic name Kafka would refuse: the embedded bus must not accept what production won't."""
    if not isinstance(topic, str) or not _TOPIC_RE.fullmatch(topic):
        raise ValueError(f"invalid topic name {topic!r}: use 1-200 characters among A-Z a-z 0-9 . _ -")
    return topic


def resume_points(topic: str, records: Iterable[Record]) -> dict[int, int]:
    """What committing ``records`` means: per partition, the offset after the highest one processed."""
    resume_at: dict[int, int] = {}
    for record in records:
        if record.topic != topic:
            raise ValueError(f"cannot commit a record of {record.topic!r} on a consumer of {topic!r}")
        resume_at[record.partition] = max(resume_at.get(record.partition, 0), record.offset + 1)
    return resume_at


def check_records(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The records as plain dicts, refusing anything that is not a mapping (a bare string or list would
    otherwise be stored and break every consumer later)."""
    if isinstance(records, Mapping | str | bytes):
        raise RecordError("records must be a sequence of mappings, not a single value")
    values = []
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise RecordError(f"record {index} is a {type(record).__name__}, not a mapping")
        values.append(dict(record))
    return values


def encode_json(value: Any) -> bytes:
    """orjson bytes; raises ``RecordError`` naming the problem (nothing is written in that case)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise RecordError(f"record is not JSON-serialisable: {exc}") from exc
