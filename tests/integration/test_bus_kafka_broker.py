"""The Kafka bus against a real broker, opt-in: ``REFSYS_TEST_KAFKA=host:port``.

No Kafka broker can be installed on the machines this suite normally runs on, so this test skips without
the variable, even when ``REFSYS_REQUIRE_SERVICES=1``; ``tests/unit/test_bus_kafka.py`` covers the client
boundary everywhere.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest

from control_plane.core.bus import Record, topics
from control_plane.core.bus.kafka import KafkaBus, KafkaBusConsumer

BROKER = os.environ.get("REFSYS_TEST_KAFKA", "")
DEADLINE_S = (
    120.0  # joining a group takes a few seconds on a fresh broker; this is a deadline, not a duration
)


@pytest.fixture
def bus() -> Iterator[KafkaBus]:
    if not BROKER:
        pytest.skip(
            "REFSYS_TEST_KAFKA is not set: no Kafka broker can be installed here (set it to host:port)"
        )
    from kafka.admin import KafkaAdminClient, NewTopic

    prefix = f"refsys-test-{uuid.uuid4().hex[:8]}."
    admin = KafkaAdminClient(bootstrap_servers=[BROKER])
    admin.create_topics([NewTopic(prefix + topics.TELEMETRY, num_partitions=3, replication_factor=1)])
    bus = KafkaBus(bootstrap_servers=[BROKER], topic_prefix=prefix)
    yield bus
    bus.close()
    admin.delete_topics([prefix + topics.TELEMETRY])
    admin.close()


def consume(consumer: KafkaBusConsumer, count: int) -> list[Record]:
    records: list[Record] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(records) < count:
        assert time.monotonic() < deadline, f"got {len(records)} of {count} records"
        records += consumer.poll(timeout_s=1.0)
    return records


def test_publish_then_consume_and_commit_with_a_group(bus: KafkaBus) -> None:
    for host in ("a", "b", "c"):
        bus.publish(topics.TELEMETRY, f"host-{host}", [{"host": host, "seq": i} for i in range(5)])
    with bus.consumer(topics.TELEMETRY, "indexer") as consumer:
        records = consume(consumer, 15)
        consumer.commit(records)
    for host in ("a", "b", "c"):
        mine = [r for r in records if r.value["host"] == host]
        assert len({r.partition for r in mine}) == 1  # a key stays on one partition, in order
        assert [r.value["seq"] for r in mine] == list(range(5))

    bus.publish(topics.TELEMETRY, "host-a", [{"host": "a", "seq": 5}])
    with bus.consumer(topics.TELEMETRY, "indexer") as consumer:  # resumes after the committed offsets
        assert [r.value for r in consume(consumer, 1)] == [{"host": "a", "seq": 5}]
