"""The embedded bus on a SQLite file and on the real PostgreSQL (``db_url`` runs each test on both)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from control_plane.core.bus import (
    BusUnavailableError,
    Record,
    RecordError,
    SqlBus,
    partition_for,
    tables,
    topics,
)
from control_plane.core.bus.sql_consumer import SqlConsumer
from control_plane.core.bus.worker import PollingWorker
from control_plane.core.db import create_db_engine
from tests.integration import bus_worker

REPO_ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0  # generous: a deadline for polling, never a measured duration


def make_bus(url: str, *, member_timeout_s: float = 10.0, own_schema: bool = True) -> SqlBus:
    return SqlBus(
        create_db_engine(url), partitions=4, member_timeout_s=member_timeout_s, own_schema=own_schema
    )


@pytest.fixture
def bus(db_url: str) -> Iterator[SqlBus]:
    with make_bus(db_url) as bus:
        yield bus


def wait_for(condition: Callable[[], bool], what: str, *, deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def drain(consumer: SqlConsumer, count: int, *, max_records: int = 500) -> list[Record]:
    """Poll until ``count`` records came (failing after the deadline), and check no more are pending."""
    records: list[Record] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(records) < count:
        assert time.monotonic() < deadline, f"got {len(records)} of {count} records"
        records += consumer.poll(max_records=max_records, timeout_s=0.5)
    assert consumer.poll(timeout_s=0) == []
    return records


def polled(*consumers: SqlConsumer) -> list[frozenset[int]]:
    """Each consumer's assignment after one more poll (a poll is what heartbeats and rebalances)."""
    for consumer in consumers:
        consumer.poll(timeout_s=0)
    return [consumer.assignment for consumer in consumers]


def test_a_keys_records_stay_in_order_on_one_partition(bus: SqlBus) -> None:
    for i in range(10):
        bus.publish(topics.TELEMETRY, "host-a", [{"seq": 2 * i}, {"seq": 2 * i + 1}])
        bus.publish(topics.TELEMETRY, f"host-{i}", [{"seq": -1}])
    records = drain(bus.consumer(topics.TELEMETRY, "indexer"), 30)
    mine = [r for r in records if r.key == "host-a"]
    assert {r.partition for r in mine} == {partition_for("host-a", 4)}
    assert [r.value["seq"] for r in mine] == list(range(20))
    for partition in {r.partition for r in records}:
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(len(offsets)))  # delivered in offset order, none missing


def test_publish_writes_one_row_per_batch(bus: SqlBus) -> None:
    bus.publish(topics.ALERTS, "k", [{"n": 1}, {"n": 2}, {"n": 3}])
    bus.publish(topics.ALERTS, "k", [{"n": 4}, {"n": 5}])
    bus.publish(topics.ALERTS, "k", [])
    b = tables.batches.c
    with bus.engine.connect() as connection:
        rows = connection.execute(
            sa.select(b.partition, b.base_offset, b.record_count).order_by(b.base_offset)
        ).all()
    partition = partition_for("k", 4)
    assert [tuple(row) for row in rows] == [(partition, 0, 3), (partition, 3, 2)]
    assert bus.end_offsets(topics.ALERTS) == {partition: 5}


def test_backlog_counts_what_a_group_has_not_committed(bus: SqlBus) -> None:
    bus.publish(topics.TELEMETRY, "a", [{"n": n} for n in range(4)])
    bus.publish(topics.TELEMETRY, "b", [{"n": n} for n in range(3)])
    assert bus.backlog(topics.TELEMETRY, "store") == 7
    with bus.consumer(topics.TELEMETRY, "store") as consumer:
        records = consumer.poll(max_records=100, timeout_s=5)
        consumer.commit([record for record in records if record.key == "a"])
    assert bus.backlog(topics.TELEMETRY, "store") == 3
    assert bus.backlog(topics.TELEMETRY, "other") == 7


def test_records_that_cannot_be_encoded_are_refused_whole(bus: SqlBus) -> None:
    with pytest.raises(RecordError, match="not JSON-serialisable"):
        bus.publish(topics.AUDIT, "k", [{"fine": 1}, {"bad": object()}])
    with pytest.raises(RecordError, match="not a mapping"):
        bus.publish(topics.AUDIT, "k", [{"fine": 1}, "text"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="invalid topic name"):
        bus.publish("no spaces", "k", [{"fine": 1}])
    assert bus.end_offsets(topics.AUDIT) == {}


def test_group_members_split_the_partitions_and_rebalance(db_url: str) -> None:
    with make_bus(db_url, member_timeout_s=1.0) as bus:
        m1, m2, m3 = (bus.consumer(topics.MATCHES, "correlation", member_id=f"m{i}") for i in (1, 2, 3))
        polled(m1, m2)
        assert polled(m1, m2) == [{0, 2}, {1, 3}]  # dealt round-robin over the sorted member ids
        polled(m3)
        assert polled(m1, m2, m3) == [{0, 3}, {1}, {2}]
        m3.close()  # leaving hands the partitions back at once
        assert polled(m1, m2) == [{0, 2}, {1, 3}]
        # m2 falls silent without leaving: after the member timeout, m1 takes over its partitions.
        wait_for(lambda: polled(m1) == [{0, 1, 2, 3}], "m1 to take over the partitions of a silent member")
        assert polled(m2, m1) == [{1, 3}, {0, 2}]  # and m2 gets them back when it returns
        m1.close()
        m2.close()


def test_a_new_member_takes_over_a_partition_from_the_committed_offset(bus: SqlBus) -> None:
    for i in range(6):
        bus.publish(topics.TRACES, "run-1", [{"i": i}])
    first = bus.consumer(topics.TRACES, "lineage", member_id="a")
    records = drain(first, 6)
    first.commit(records[:4])
    first.close()
    second = bus.consumer(topics.TRACES, "lineage", member_id="b")
    assert [r.value["i"] for r in drain(second, 2)] == [4, 5]
    assert [r.value["i"] for r in drain(bus.consumer(topics.TRACES, "kpi"), 6)] == list(range(6))


def test_commits_never_move_an_offset_backwards(bus: SqlBus) -> None:
    for i in range(10):
        bus.publish(topics.TRACES, "run-1", [{"i": i}])
    partition = partition_for("run-1", 4)
    owner = bus.consumer(topics.TRACES, "lineage")
    records = drain(owner, 10)
    owner.commit(records)
    owner.commit(records[:3])
    stale = bus.consumer(topics.TRACES, "lineage")  # e.g. a former owner committing late
    stale.commit(records[:5])
    assert bus.committed(topics.TRACES, "lineage") == {partition: 10}


def test_poll_stops_at_max_records_and_resumes_inside_a_batch(bus: SqlBus) -> None:
    bus.publish(topics.PRODUCT_AVAILABLE, "S2A", [{"i": i} for i in range(5)])
    consumer = bus.consumer(topics.PRODUCT_AVAILABLE, "triggers")
    first = consumer.poll(max_records=2, timeout_s=DEADLINE_S)
    assert [r.offset for r in first] == [0, 1]
    consumer.commit(first)
    consumer.close()
    again = bus.consumer(topics.PRODUCT_AVAILABLE, "triggers")
    assert [r.offset for r in again.poll(max_records=2, timeout_s=DEADLINE_S)] == [2, 3]
    assert [r.offset for r in again.poll(max_records=2, timeout_s=DEADLINE_S)] == [4]


def test_poll_waits_for_a_record_published_meanwhile(bus: SqlBus) -> None:
    consumer = bus.consumer(topics.ALERTS, "notifier")
    assert consumer.poll(timeout_s=0.1) == []
    publisher = threading.Thread(target=bus.publish, args=(topics.ALERTS, "a", [{"late": True}]))
    publisher.start()
    records = consumer.poll(timeout_s=DEADLINE_S)
    publisher.join()
    assert [r.value for r in records] == [{"late": True}]


def test_retention_deletes_only_below_the_lowest_committed_offset(bus: SqlBus) -> None:
    for i in range(5):
        bus.publish(topics.TELEMETRY, "host-a", [{"i": 2 * i}, {"i": 2 * i + 1}])  # batches at 0, 2, 4, 6, 8
    bus.publish(topics.AUDIT, "x", [{"unread": True}])
    fast, slow = bus.consumer(topics.TELEMETRY, "indexer"), bus.consumer(topics.TELEMETRY, "matcher")
    fast.commit(drain(fast, 10))
    slow.commit(drain(slow, 10)[:5])  # resumes at 5, inside the batch at 4
    assert bus.compact(topics.TELEMETRY) == 2
    assert stored_batches(bus, topics.TELEMETRY) == [4, 6, 8]
    assert bus.compact(topics.AUDIT) == 0  # no group ever read it: everything stays
    slow.close()
    resumed = bus.consumer(topics.TELEMETRY, "matcher")
    resumed_records = drain(resumed, 5)
    assert [r.offset for r in resumed_records] == [5, 6, 7, 8, 9]

    late = bus.consumer(topics.TELEMETRY, "archiver")  # a new group starts at the earliest retained record
    late_records = drain(late, 6)
    assert [r.offset for r in late_records] == [4, 5, 6, 7, 8, 9]
    resumed.commit(resumed_records)
    assert bus.compact(topics.TELEMETRY) == 0  # the archiver is known and has committed nothing
    late.commit(late_records)
    assert bus.compact(topics.TELEMETRY) == 3
    assert stored_batches(bus, topics.TELEMETRY) == []


def stored_batches(bus: SqlBus, topic: str) -> list[int]:
    b = tables.batches.c
    with bus.engine.connect() as connection:
        return list(
            connection.scalars(sa.select(b.base_offset).where(b.topic == topic).order_by(b.base_offset))
        )


def test_check_reports_missing_tables(db_url: str) -> None:
    with make_bus(db_url, own_schema=False) as bus, pytest.raises(BusUnavailableError, match="unusable"):
        bus.check()
    with make_bus(db_url) as bus:
        bus.check()


# The acceptance scenario: concurrent publisher processes, a consumer group of two processes, one of them
# killed between processing and committing, then restarted.

PUBLISHERS, BATCHES, BATCH_SIZE = 8, 25, 5


def start_worker(*args: str, stderr: Path) -> subprocess.Popen[bytes]:
    with stderr.open("ab") as errors:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.integration.bus_worker", *args], cwd=REPO_ROOT, stderr=errors
        )


def read_log(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def processed(lines: list[str]) -> list[tuple[int, int, str]]:
    return [(int(p), int(o), rid) for _kind, p, o, rid in (line.split() for line in lines if line[0] == "P")]


def test_every_record_is_processed_when_a_consumer_is_killed_mid_batch(db_url: str, tmp_path: Path) -> None:
    logs = {name: tmp_path / f"{name}.log" for name in ("killed", "survivor", "restarted")}
    stderr = tmp_path / "workers.err"

    def consumer(name: str, *extra: str) -> subprocess.Popen[bytes]:
        args = ["--url", db_url, "--group", "indexer", "--member-id", name, "--log", str(logs[name]), *extra]
        return start_worker("consume", *args, stderr=stderr)

    def stalled() -> bool:
        return (
            any(line.startswith("STALLED") for line in read_log(logs["killed"])) or killed.poll() is not None
        )

    def all_committed() -> bool:
        ends = bus.end_offsets(bus_worker.TOPIC)
        return sum(ends.values()) == total and bus.committed(bus_worker.TOPIC, "indexer") == ends

    total = PUBLISHERS * BATCHES * BATCH_SIZE
    bus = make_bus(db_url)  # creates the tables the workers use
    processes = [killed := consumer("killed", "--stall-after", "30"), survivor := consumer("survivor")]
    publishers = [
        start_worker(
            "publish", "--url", db_url, "--publisher", str(n), "--batches", str(BATCHES),
            "--batch-size", str(BATCH_SIZE), stderr=stderr,
        )
        for n in range(PUBLISHERS)
    ]  # fmt: skip
    processes += publishers
    try:
        wait_for(stalled, "the first consumer to stall mid-batch")
        assert killed.poll() is None, f"consumer exited early: {stderr.read_text()}"
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        processes.append(restarted := consumer("restarted"))
        for process in publishers:
            assert process.wait(timeout=DEADLINE_S) == 0, stderr.read_text()
        wait_for(all_committed, "the group to commit every record")
        ends = bus.end_offsets(bus_worker.TOPIC)
        for process in (survivor, restarted):
            process.terminate()
            assert process.wait(timeout=DEADLINE_S) == 0, stderr.read_text()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        bus.close()

    # It was killed mid-batch: it had processed records of its last polled batch and not committed them.
    killed_lines = read_log(logs["killed"])
    assert killed_lines[-1].startswith("STALLED")
    done, polled_count = map(int, killed_lines[-1].removeprefix("STALLED ").split("/"))
    last_commit = max((i for i, line in enumerate(killed_lines) if line[0] == "C"), default=-1)
    uncommitted = processed(killed_lines[last_commit + 1 :])
    assert 0 < done < polled_count
    assert len(uncommitted) == done

    expected = {
        bus_worker.record_id(p, b, i)
        for p in range(PUBLISHERS)
        for b in range(BATCHES)
        for i in range(BATCH_SIZE)
    }
    everything = [entry for log in logs.values() for entry in processed(read_log(log))]
    assert {rid for _, _, rid in everything} == expected  # every record at least once, nothing invented
    by_others = {rid for name in ("survivor", "restarted") for _, _, rid in processed(read_log(logs[name]))}
    assert {rid for _, _, rid in uncommitted} <= by_others  # what the killed one had not committed came again
    for partition, end in ends.items():  # and no offset of any partition was skipped
        assert {o for p, o, _ in everything if p == partition} == set(range(end))


class _FlakyWorker(PollingWorker):
    """Fails once in the middle of its first batch, after the poll moved the consumer's position past it."""

    def __init__(self, bus: SqlBus) -> None:
        super().__init__("flaky", bus.consumer("telemetry", "flaky"), poll_timeout_s=0.05, backoff_s=0.01)
        self.handled: list[str] = []
        self.failures = 0

    def run_once(self, timeout_s: float) -> int:
        records = self._consumer.poll(max_records=3, timeout_s=timeout_s)
        for record in records:
            if self.failures == 0:
                self.failures += 1
                raise RuntimeError("the store hiccuped")
            self.handled.append(record.value["id"])
        self._consumer.commit(records)
        return len(records)


def test_a_worker_s_failed_batch_comes_again_instead_of_being_skipped(bus: SqlBus) -> None:
    bus.publish("telemetry", "one-key", [{"id": f"r{n}"} for n in range(7)])
    worker = _FlakyWorker(bus)
    worker.start()
    try:
        wait_for(lambda: len(worker.handled) >= 7, "every record handled")
    finally:
        worker.stop()
    assert worker.failures == 1
    assert worker.handled == [f"r{n}" for n in range(7)], "nothing skipped, nothing twice"
