"""The Kafka bus at the client boundary: fake kafka-python classes record every call, no broker needed."""

from __future__ import annotations

import os
from collections import namedtuple
from typing import Any

import orjson
import pytest
from kafka.errors import CommitFailedError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata, TopicPartition

from control_plane.core.bus import (
    BusUnavailableError,
    CommitError,
    PublishError,
    Record,
    RecordError,
    create_bus,
    topics,
)
from control_plane.core.bus.kafka import KafkaBus
from control_plane.core.config import BusSettings, KafkaSettings, Settings

Message = namedtuple("Message", "topic partition offset key value")


class FakeFuture:
    def __init__(self, calls: list[tuple[Any, ...]], error: Exception | None) -> None:
        self._calls, self._error = calls, error

    def get(self, timeout: float | None = None) -> object:
        self._calls.append(("get",))
        if self._error is not None:
            raise self._error
        return object()


class FakeProducer:
    def __init__(self, **config: Any) -> None:
        self.config = config
        self.calls: list[tuple[Any, ...]] = []
        self.fail_on: set[int] = set()  # indexes of sends whose future fails
        self.partitions: dict[str, set[int]] = {}

    def send(self, topic: str, value: Any = None, key: Any = None) -> FakeFuture:
        index = sum(1 for call in self.calls if call[0] == "send")
        self.calls.append(("send", topic, self.config["key_serializer"](key), value))
        return FakeFuture(self.calls, KafkaTimeoutError("no ack") if index in self.fail_on else None)

    def flush(self, timeout: float | None = None) -> None:
        self.calls.append(("flush",))

    def partitions_for(self, topic: str) -> set[int]:
        return self.partitions.get(topic, set())

    def close(self, timeout: float | None = None) -> None:
        self.calls.append(("close",))


class FakeConsumer:
    def __init__(self, **config: Any) -> None:
        self.config = config
        self.subscribed: list[str] = []
        self.pending: list[dict[TopicPartition, list[Message]]] = []
        self.commits: list[dict[TopicPartition, OffsetAndMetadata]] = []
        self.commit_error: Exception | None = None
        self.closed_with: dict[str, Any] | None = None

    def subscribe(self, topics: list[str]) -> None:
        self.subscribed = topics

    def poll(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Message]]:
        return self.pending.pop(0) if self.pending else {}

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if self.commit_error is not None:
            raise self.commit_error
        self.commits.append(offsets)

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("refsys.telemetry", 0), TopicPartition("refsys.telemetry", 2)}

    def close(self, **kwargs: Any) -> None:
        self.closed_with = kwargs


class Recorder:
    """Factories that keep the instances they made."""

    def __init__(self) -> None:
        self.producers: list[FakeProducer] = []
        self.consumers: list[FakeConsumer] = []

    def producer(self, **config: Any) -> FakeProducer:
        self.producers.append(FakeProducer(**config))
        return self.producers[-1]

    def consumer(self, **config: Any) -> FakeConsumer:
        self.consumers.append(FakeConsumer(**config))
        return self.consumers[-1]


@pytest.fixture
def clients() -> Recorder:
    return Recorder()


@pytest.fixture
def bus(clients: Recorder) -> KafkaBus:
    return KafkaBus(
        bootstrap_servers=["kafka-0:9092"],
        client_id="refsys-test",
        producer_factory=clients.producer,
        consumer_factory=clients.consumer,
    )


def test_no_client_is_made_before_it_is_needed(bus: KafkaBus, clients: Recorder) -> None:
    assert clients.producers == [] and clients.consumers == []


def test_the_producer_waits_for_all_replicas(bus: KafkaBus, clients: Recorder) -> None:
    bus.publish(topics.ALERTS, "k", [{"a": 1}])
    config = clients.producers[0].config
    assert config["acks"] == "all"
    assert config["enable_idempotence"] is True
    assert config["bootstrap_servers"] == ["kafka-0:9092"] and config["client_id"] == "refsys-test"


def test_publish_sends_each_record_with_the_key_then_flushes_before_returning(
    bus: KafkaBus, clients: Recorder
) -> None:
    bus.publish(topics.MATCHES, "rule-1/host-a", [{"n": 1}, {"n": 2}])
    calls = clients.producers[0].calls
    assert calls[:3] == [
        ("send", "refsys.matches", b"rule-1/host-a", orjson.dumps({"n": 1})),
        ("send", "refsys.matches", b"rule-1/host-a", orjson.dumps({"n": 2})),
        ("flush",),
    ]
    assert calls[3:] == [("get",), ("get",)]  # every send's outcome is checked after the flush


def test_a_none_key_is_sent_as_none(bus: KafkaBus, clients: Recorder) -> None:
    bus.publish(topics.TELEMETRY, None, [{"n": 1}])
    assert clients.producers[0].calls[0] == ("send", "refsys.telemetry", None, b'{"n":1}')


def test_a_failed_send_makes_publish_raise(bus: KafkaBus, clients: Recorder) -> None:
    bus.publish(topics.AUDIT, "k", [{"n": 0}])  # makes the producer
    clients.producers[0].fail_on = {2}
    with pytest.raises(PublishError, match=r"refsys\.audit.*KafkaTimeoutError"):
        bus.publish(topics.AUDIT, "k", [{"n": 1}, {"n": 2}])


def test_a_record_that_cannot_be_encoded_sends_nothing(bus: KafkaBus, clients: Recorder) -> None:
    with pytest.raises(RecordError):
        bus.publish(topics.AUDIT, "k", [{"n": 1}, {"n": object()}])
    assert all(call[0] != "send" for producer in clients.producers for call in producer.calls)


def test_topics_get_the_configured_prefix(clients: Recorder) -> None:
    bus = KafkaBus(bootstrap_servers=["k:9092"], topic_prefix="site-a.", producer_factory=clients.producer)
    bus.publish(topics.PRODUCT_AVAILABLE, "S2B", [{"id": 1}])
    assert clients.producers[0].calls[0][1] == "site-a.product.available"
    assert bus.topic_name(topics.PARKING_LOT) == "site-a.parking-lot"
    with pytest.raises(ValueError, match="invalid topic name"):
        bus.topic_name("bad topic")


def test_consumers_commit_by_hand_and_start_from_the_earliest(bus: KafkaBus, clients: Recorder) -> None:
    consumer = bus.consumer(topics.TELEMETRY, "indexer", member_id="pod-1")
    client = clients.consumers[0]
    assert client.config["group_id"] == "indexer"
    assert client.config["enable_auto_commit"] is False
    assert client.config["auto_offset_reset"] == "earliest"
    assert client.config["client_id"] == "refsys-test-pod-1"
    assert client.config["key_deserializer"](b"k") == "k"
    assert client.config["value_deserializer"](b'{"a":1}') == {"a": 1}
    assert client.subscribed == ["refsys.telemetry"]
    assert consumer.assignment == {0, 2}


def test_poll_hands_out_records_with_refsys_topic_names(bus: KafkaBus, clients: Recorder) -> None:
    consumer = bus.consumer(topics.TELEMETRY, "indexer")
    clients.consumers[0].pending.append(
        {
            TopicPartition("refsys.telemetry", 2): [Message("refsys.telemetry", 2, 7, "k", {"n": 1})],
            TopicPartition("refsys.telemetry", 0): [Message("refsys.telemetry", 0, 3, None, {"n": 2})],
        }
    )
    assert consumer.poll(timeout_s=0.5) == [
        Record(topics.TELEMETRY, 0, 3, None, {"n": 2}),
        Record(topics.TELEMETRY, 2, 7, "k", {"n": 1}),
    ]


def test_commit_sends_the_offset_after_the_last_processed_record(bus: KafkaBus, clients: Recorder) -> None:
    consumer = bus.consumer(topics.TELEMETRY, "indexer")
    client = clients.consumers[0]
    processed = [Record(topics.TELEMETRY, 0, offset, None, {}) for offset in (3, 4, 5)]
    processed.append(Record(topics.TELEMETRY, 1, 9, None, {}))
    consumer.commit(processed)
    assert client.commits == [
        {
            TopicPartition("refsys.telemetry", 0): OffsetAndMetadata(6, "", -1),
            TopicPartition("refsys.telemetry", 1): OffsetAndMetadata(10, "", -1),
        }
    ]
    consumer.commit(processed[:2])  # never backwards: nothing to send
    consumer.commit([])
    assert len(client.commits) == 1


def test_a_refused_commit_raises(bus: KafkaBus, clients: Recorder) -> None:
    consumer = bus.consumer(topics.TELEMETRY, "indexer")
    clients.consumers[0].commit_error = CommitFailedError("rebalanced")
    with pytest.raises(CommitError, match="CommitFailedError"):
        consumer.commit([Record(topics.TELEMETRY, 0, 1, None, {})])


def test_closing_a_consumer_does_not_commit(bus: KafkaBus, clients: Recorder) -> None:
    bus.consumer(topics.TELEMETRY, "indexer").close()
    assert clients.consumers[0].closed_with == {"autocommit": False}


def test_check_requires_every_topic(bus: KafkaBus, clients: Recorder) -> None:
    bus.publish(topics.AUDIT, "k", [{}])
    producer = clients.producers[0]
    producer.partitions = {
        bus.topic_name(topic): {0} for topic in topics.ALL_TOPICS if topic != topics.TRACES
    }
    with pytest.raises(BusUnavailableError, match=r"refsys\.traces"):
        bus.check()
    producer.partitions[bus.topic_name(topics.TRACES)] = {0, 1}
    bus.check()
    bus.close()
    assert producer.calls[-1] == ("close",)


def test_create_bus_picks_kafka_from_the_settings(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("REFSYS_BUS__")]:
        monkeypatch.delenv(name)
    settings = Settings(
        data_dir=tmp_path, bus=BusSettings(backend="kafka", kafka=KafkaSettings(topic_prefix="eo."))
    )
    bus = create_bus(settings)
    assert isinstance(bus, KafkaBus)
    assert bus.topic_name(topics.ALERTS) == "eo.alerts"


def test_unreachable_brokers_fail_check_and_publish() -> None:
    def no_brokers(**config: Any) -> FakeProducer:
        raise KafkaTimeoutError("bootstrap timed out")

    bus = KafkaBus(bootstrap_servers=["nowhere:9092"], producer_factory=no_brokers)
    with pytest.raises(BusUnavailableError, match="KafkaTimeoutError"):
        bus.check()
    with pytest.raises(PublishError):
        bus.publish(topics.ALERTS, "k", [{"n": 1}])
