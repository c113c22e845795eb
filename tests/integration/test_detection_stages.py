"""Detection's serving stages on the embedded bus (a real SQLite or PostgreSQL database underneath): two
matching workers share the telemetry topic, one correlation stage keeps the windows; a correlation window open
across a restart of the correlation stage fires once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from control_plane.core import clock
from control_plane.core.bus import SqlBus, topics
from control_plane.core.db import create_db_engine
from control_plane.core.schema import upgrade
from security.alerts.model import Alert
from security.detection import ruleset
from security.detection.checkpoints import Checkpoints
from security.detection.stages import (
    CORRELATE_GROUP,
    CorrelationWorker,
    MatchingWorker,
    StageMetrics,
    StaticRules,
)

RULES = """
title: Pod deleted
id: 7d2c6a52-8d1e-4d7e-9d7a-2f0c1c0e0001
name: pod_deleted
logsource: {product: kubernetes, service: audit}
detection:
  selection: {verb: delete, objectRef.resource: pods}
  condition: selection
level: low
tags: [attack.impact, attack.t1485]
---
title: Pods deleted in bulk from one address
id: 7d2c6a52-8d1e-4d7e-9d7a-2f0c1c0e0002
correlation:
  type: event_count
  rules: [pod_deleted]
  group-by: [source.ip]
  timespan: 5m
  condition: {gte: 3}
  generate: true
level: high
"""
DEADLINE_S = 60.0
BASE = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def k8s_event(n: int, ip: str, second: int, verb: str = "delete") -> dict[str, Any]:
    now = clock.rfc3339(clock.utcnow())
    return {
        "@timestamp": clock.rfc3339(BASE + timedelta(seconds=second)),
        "event": {"id": f"audit-{n}", "dataset": "kubernetes.audit", "ingested": now},
        "source": {"ip": ip},
        "kubernetes": {"audit": {"verb": verb, "objectRef": {"resource": "pods", "namespace": "prod"}}},
    }


@pytest.fixture
def bus_and_engine(db_url: str) -> Iterator[tuple[SqlBus, Any]]:
    engine = create_db_engine(db_url)
    upgrade(engine)
    bus = SqlBus(engine, partitions=4, member_timeout_s=10.0, own_schema=True)
    yield bus, engine
    bus.close()
    engine.dispose()


@pytest.fixture
def rules(tmp_path: Path) -> StaticRules:
    (tmp_path / "rules.yml").write_text(RULES)
    loaded = ruleset.load(bundled=False, rule_dirs=[tmp_path])
    assert not loaded.problems
    return StaticRules(loaded)


def correlation_worker(bus: SqlBus, engine: Any, rules: StaticRules) -> CorrelationWorker:
    return CorrelationWorker(
        bus, rules, Checkpoints(engine, CORRELATE_GROUP), StageMetrics(CollectorRegistry()),
        lateness=300.0, max_groups=1000, checkpoint_every_s=3600.0,
    )  # fmt: skip


def read_alerts(bus: SqlBus) -> list[Alert]:
    """Everything on the alerts topic so far, read by a group of its own (so from the start)."""
    consumer = bus.consumer(topics.ALERTS, f"reader-{uuid.uuid4()}")
    alerts: list[Alert] = []
    try:
        while records := consumer.poll(max_records=10_000, timeout_s=0.1):
            alerts += [Alert.from_record(r.value) for r in records]
    finally:
        consumer.close()
    return alerts


def run_until(workers: list[Any], done: Any) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        assert time.monotonic() < deadline, "stages did not get through the records in time"
        for worker in workers:
            worker.run_once(timeout_s=0.05)


def test_two_matching_workers_and_one_correlation_stage(
    bus_and_engine: tuple[SqlBus, Any], rules: StaticRules
) -> None:
    bus, engine = bus_and_engine
    metrics = StageMetrics(CollectorRegistry())
    matchers = [MatchingWorker(bus, rules, metrics, member_id=f"detect-{n}") for n in range(2)]
    for worker in matchers:  # both join the group before any record is dealt
        worker.run_once(timeout_s=0)
    correlate = correlation_worker(bus, engine, rules)
    # 3 deletions from each of 4 addresses, 1 from a fifth, and reads that match nothing; 8 senders' keys.
    events = [k8s_event(n, f"10.0.0.{n % 5}", n) for n in range(13)]
    events += [k8s_event(100 + n, "10.0.0.9", n, verb="get") for n in range(5)]
    for n, event in enumerate(events):
        bus.publish(topics.TELEMETRY, f"sender-{n % 8}", [event])
    handled = [0, 0]

    def all_matched() -> bool:
        for i, worker in enumerate(matchers):
            handled[i] += worker.run_once(timeout_s=0.05)
        return sum(handled) == len(events)

    run_until([], all_matched)
    assert all(h > 0 for h in handled), f"each matching worker takes a share of the partitions: {handled}"
    assert {len(w._consumer.assignment) for w in matchers} == {2}
    run_until([correlate], lambda: len(read_alerts(bus)) >= 13 + 3)
    alerts = read_alerts(bus)
    rule_alerts = [a for a in alerts if a.kind == "rule"]
    correlations = [a for a in alerts if a.kind == "correlation"]
    assert len(rule_alerts) == 13
    assert sorted(a.group["source.ip"] for a in correlations) == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert all(a.rule.level == "high" and a.metric == 3 for a in correlations)
    assert {len(a.events) for a in correlations} == {3}
    for worker in matchers:
        worker.stop()
    correlate.stop()


def _publish_deletions(bus: SqlBus, numbers: range) -> None:
    for n in numbers:
        bus.publish(topics.TELEMETRY, "sender", [k8s_event(n, "192.0.2.7", 10 * n)])


def _correlations(bus: SqlBus) -> list[Alert]:
    return [a for a in read_alerts(bus) if a.kind == "correlation"]


def settle(workers: list[Any]) -> None:
    """Run the stages until a whole round finds nothing more to read."""
    deadline = time.monotonic() + DEADLINE_S
    while sum(worker.run_once(timeout_s=0.05) for worker in workers):
        assert time.monotonic() < deadline, "stages did not settle in time"


def test_a_window_open_across_a_restart_fires_once(
    bus_and_engine: tuple[SqlBus, Any], rules: StaticRules
) -> None:
    bus, engine = bus_and_engine
    matcher = MatchingWorker(bus, rules, StageMetrics(CollectorRegistry()), member_id="detect-0")
    first = correlation_worker(bus, engine, rules)
    _publish_deletions(bus, range(2))
    settle([matcher, first])
    first.checkpoint()
    # A crash: the stage is gone without a word; a later match it processed but never checkpointed...
    _publish_deletions(bus, range(2, 3))
    settle([matcher, first])
    assert len(_correlations(bus)) == 1
    first._consumer.close()
    # ...is replayed into the restored state by the next incarnation: the same alert, not a second one.
    second = correlation_worker(bus, engine, rules)
    settle([second])
    fired = _correlations(bus)
    assert len(fired) == 2, "the replay raised the alert again (at-least-once)"
    assert len({a.id for a in fired}) == 1, "with the id it had: the sinks keep one alert"
    assert fired[0].metric == 3, "the restored window was not counted twice"
    second.checkpoint()
    second._consumer.close()
    # A clean restart between the second and the third match of a new window: it fires, once.
    third = correlation_worker(bus, engine, rules)
    _publish_deletions(bus, range(40, 42))  # 400 s on: a window of its own
    settle([matcher, third])
    third.checkpoint()
    third._consumer.close()
    assert len(_correlations(bus)) == 2
    fourth = correlation_worker(bus, engine, rules)
    _publish_deletions(bus, range(42, 43))
    settle([matcher, fourth])
    later = [a for a in _correlations(bus) if a.id != fired[0].id]
    assert len(later) == 1 and later[0].metric == 3
    matcher.stop()
    fourth.stop()


def test_a_correlation_batch_that_fails_midway_is_replayed_from_the_checkpoint(
    bus_and_engine: tuple[SqlBus, Any], rules: StaticRules, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus, engine = bus_and_engine
    matcher = MatchingWorker(bus, rules, StageMetrics(CollectorRegistry()), member_id="detect-0")
    _publish_deletions(bus, range(3))
    settle([matcher])
    publish = bus.publish
    failed: list[str] = []

    def flaky(topic: str, key: str | None, records: Any) -> None:
        if topic == topics.ALERTS and not failed:
            failed.append(key or "")
            raise RuntimeError("the bus hiccuped")  # after the window counted the third deletion
        publish(topic, key, records)

    monkeypatch.setattr(bus, "publish", flaky)
    worker = correlation_worker(bus, engine, rules)
    worker.backoff_s = 0.01
    worker.start()
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not _correlations(bus):
            assert time.monotonic() < deadline, "the correlation alert never came after the failure"
            time.sleep(0.05)
    finally:
        worker.stop()
    (alert,) = _correlations(bus)
    assert failed and alert.metric == 3, "replayed from the checkpoint, not counted on top of the failed try"
