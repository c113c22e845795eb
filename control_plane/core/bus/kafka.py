"""The Kafka bus (kafka-python): the production backend behind the same ``Bus`` contract as the embedded one.

Durability comes from ``acks="all"`` and waiting for every send before ``publish`` returns; the idempotent
producer keeps a key's records in order across retries. Consumers never auto-commit: the application commits
after processing, so a crash redelivers. Kafka partitions keys with its own hash (murmur2), so a key's
partition differs from the embedded bus's; each backend is consistent with itself, which is all that ordering
needs. Topics are created by operations (partitions, replication), not here.

The client classes are parameters so that tests can check the calls at the client boundary without a broker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from control_plane.core.bus import topics as topic_names
from control_plane.core.bus.base import (
    Bus,
    BusError,
    BusUnavailableError,
    CommitError,
    Consumer,
    PublishError,
    Record,
    RecordError,
    check_records,
    check_topic,
    encode_json,
    resume_points,
)

NO_LEADER_EPOCH = -1  # "unknown": the broker then skips the epoch check on commit


def _describe(exc: Exception) -> str:
    """``Class: message``, without the class twice (kafka-python's messages often start with it)."""
    name, text = exc.__class__.__name__, str(exc)
    return text if text.startswith(name) else f"{name}: {text}"


def _encode_key(key: str | None) -> bytes | None:
    return None if key is None else key.encode("utf-8")


def _decode_key(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8")


class KafkaBus(Bus):
    """Publishes and consumes refsys topics on a Kafka cluster, each named ``topic_prefix + topic``."""

    def __init__(
        self,
        *,
        bootstrap_servers: Sequence[str],
        client_id: str = "refsys",
        topic_prefix: str = "refsys.",
        send_timeout_s: float = 30.0,
        client_config: Mapping[str, Any] | None = None,
        producer_factory: Callable[..., Any] = KafkaProducer,
        consumer_factory: Callable[..., Any] = KafkaConsumer,
    ) -> None:
        """``client_config`` goes to both clients (TLS, SASL, ...); ``send_timeout_s`` bounds how long a
        publish may block on a full buffer, on metadata, or waiting for acknowledgements."""
        self.topic_prefix = topic_prefix
        self._common = {
            "bootstrap_servers": list(bootstrap_servers),
            "client_id": client_id,
            **(client_config or {}),
        }
        self._send_timeout_s = send_timeout_s
        self._producer_factory = producer_factory
        self._consumer_factory = consumer_factory
        self._producer: Any = None
        self._producer_lock = threading.Lock()

    def topic_name(self, topic: str) -> str:
        """The topic's name on the cluster."""
        return self.topic_prefix + check_topic(topic)

    def publish(self, topic: str, key: str | None, records: Sequence[Mapping[str, Any]]) -> None:
        """Send every record with ``key`` (Kafka's partitioner maps it to a partition), then wait for all of
        them. Not atomic: when this raises, some records may be stored; retrying duplicates them, which
        at-least-once consumers absorb."""
        name = self.topic_name(topic)
        if key is not None and not isinstance(key, str):
            raise RecordError(f"key must be a string or None, not {type(key).__name__}")
        # Encode everything first: a bad record must fail the call before anything is sent.
        values = [encode_json(value) for value in check_records(records)]
        if not values:
            return
        try:
            producer = self._producer_client()
            futures = [producer.send(name, key=key, value=value) for value in values]
            producer.flush(timeout=self._send_timeout_s)
            for future in futures:
                future.get(timeout=self._send_timeout_s)  # raises the send's own error, if any
        except KafkaError as exc:
            raise PublishError(f"publish to {name} failed: {_describe(exc)}") from exc

    def consumer(self, topic: str, group: str, *, member_id: str | None = None) -> KafkaBusConsumer:
        name = self.topic_name(topic)
        client_id = self._common["client_id"] + (f"-{member_id}" if member_id else "")
        try:
            client = self._consumer_factory(
                **{**self._common, "client_id": client_id},
                group_id=group,
                enable_auto_commit=False,  # commit only after processing: at-least-once
                auto_offset_reset="earliest",  # a new group reads what is retained, like the embedded bus
                key_deserializer=_decode_key,
                value_deserializer=orjson.loads,
            )
            client.subscribe([name])
        except KafkaError as exc:
            raise BusUnavailableError(f"cannot join group {group} on {name}: {_describe(exc)}") from exc
        return KafkaBusConsumer(client, topic=topic, name=name)

    def check(self) -> None:
        """Raise unless the cluster answers and knows every refsys topic (a missing one fails publishes)."""
        try:
            producer = self._producer_client()
            missing = [t for t in topic_names.ALL_TOPICS if not producer.partitions_for(self.topic_name(t))]
        except KafkaError as exc:
            raise BusUnavailableError(f"Kafka unusable: {_describe(exc)}") from exc
        if missing:
            raise BusUnavailableError(
                f"Kafka topics missing: {', '.join(self.topic_name(t) for t in missing)}"
            )

    def close(self) -> None:
        with self._producer_lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=self._send_timeout_s)

    def _producer_client(self) -> Any:
        """The producer, made on first use: making one contacts the brokers, which start-up must not need."""
        with self._producer_lock:
            if self._producer is None:
                self._producer = self._producer_factory(
                    **self._common,
                    acks="all",  # durable on every in-sync replica before a send succeeds
                    enable_idempotence=True,  # retries neither duplicate nor reorder a key's records
                    max_block_ms=int(self._send_timeout_s * 1000),
                    key_serializer=_encode_key,
                    # Values arrive already encoded (see publish): bytes pass through unchanged.
                    value_serializer=None,
                )
            return self._producer


class KafkaBusConsumer(Consumer):
    """A Kafka consumer-group member, handing out ``Record``s with refsys's topic names."""

    def __init__(self, client: Any, *, topic: str, name: str) -> None:
        self.topic = topic
        self._name = name
        self._client = client
        # Highest offset committed per partition by this member: Kafka itself would accept a lower one.
        self._committed: dict[int, int] = {}

    @property
    def assignment(self) -> frozenset[int]:
        return frozenset(tp.partition for tp in self._client.assignment() if tp.topic == self._name)

    def poll(self, *, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, got {max_records}")
        try:
            batches = self._client.poll(timeout_ms=int(max(0.0, timeout_s) * 1000), max_records=max_records)
        except KafkaError as exc:
            raise BusError(f"poll of {self._name} failed: {_describe(exc)}") from exc
        return [
            Record(self.topic, message.partition, message.offset, message.key, message.value)
            for tp in sorted(batches, key=lambda tp: tp.partition)
            for message in batches[tp]
        ]

    def commit(self, records: Iterable[Record]) -> None:
        resume_at = resume_points(self.topic, records)
        forward = {p: o for p, o in resume_at.items() if o > self._committed.get(p, -1)}
        if not forward:
            return
        offsets = {
            TopicPartition(self._name, partition): OffsetAndMetadata(offset, "", NO_LEADER_EPOCH)
            for partition, offset in sorted(forward.items())
        }
        try:
            self._client.commit(offsets=offsets)
        except KafkaError as exc:
            # Typically a rebalance took the partitions away: their new owner will redeliver.
            raise CommitError(f"commit on {self._name} failed: {_describe(exc)}") from exc
        self._committed.update(forward)

    def rewind(self) -> None:
        try:
            for tp in self._client.assignment():
                committed = self._client.committed(tp)
                if committed is None:
                    self._client.seek_to_beginning(tp)
                else:
                    self._client.seek(tp, committed)
        except KafkaError as exc:
            raise BusError(f"rewind of {self._name} failed: {_describe(exc)}") from exc

    def close(self) -> None:
        self._client.close(autocommit=False)
