"""Trace events: validated when emitted (a bad one writes nothing), then in the lineage table, on the
``traces`` topic and, as an ECS document, on the ``telemetry`` topic."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from control_plane.core import schema
from control_plane.core.bus import Bus, create_bus, topics
from control_plane.core.config import Settings
from control_plane.core.db import create_db_engine
from pipelines import tables
from pipelines.traces import TRACE_VERSION, TraceEvent, TraceWriter

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
RUN = {"chain": "s2-l2a", "chain_version": "1.0", "run_id": "0190-run", "mission": "S2", "inputs": ["p-1"]}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'refsys.db'}")
    schema.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bus]:
    for name in [n for n in os.environ if n.startswith(("REFSYS_DATABASE__", "REFSYS_BUS__"))]:
        monkeypatch.delenv(name)  # the embedded bus in its own file, whatever the environment configures
    with create_bus(Settings(data_dir=tmp_path / "data")) as bus:
        yield bus


def _drain(bus: Bus, topic: str) -> list[dict[str, Any]]:
    with bus.consumer(topic, "test") as consumer:
        return [record.value for record in consumer.poll(max_records=100, timeout_s=0.2)]


def _rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(sa.select(tables.trace_events))]


def test_an_end_event_goes_to_the_table_the_traces_topic_and_telemetry(engine: Engine, bus: Bus) -> None:
    event = TraceEvent(
        **RUN, step="l2a", event="END", status="NOK", duration_s=12.5, t0=T0, missing_outputs={"S2MSI2A": 1}
    )
    TraceWriter(engine, bus).emit(event)

    [row] = _rows(engine)
    assert (row["id"], row["run_id"], row["step"], row["event"], row["status"]) == (
        event.id, "0190-run", "l2a", "END", "NOK",
    )  # fmt: skip
    body = row["body"]
    assert body["trace"] == {"version": TRACE_VERSION} and body["t0"] == "2026-11-25T10:00:00Z"
    assert body["missing_outputs"] == {"S2MSI2A": 1} and body["inputs"] == ["p-1"]
    assert _drain(bus, topics.TRACES) == [body]
    [doc] = _drain(bus, topics.TELEMETRY)
    assert doc["event"]["id"] == event.id and doc["event"]["dataset"] == "refsys.production"
    assert (doc["event"]["action"], doc["event"]["outcome"], doc["event"]["duration"]) == (
        "step-end", "failure", 12_500_000_000,
    )  # fmt: skip
    assert doc["labels"] == {"chain": "s2-l2a", "chain_version": "1.0", "run_id": "0190-run", "step": "l2a"}
    assert doc["refsys"]["run"] == {"id": "0190-run", "chain": "s2-l2a", "step": "l2a"}
    assert doc["refsys"]["trace"] == body
    assert "ended NOK after 12.5 s" in doc["message"]


def test_emitting_the_same_event_again_stores_it_once(engine: Engine, bus: Bus) -> None:
    writer = TraceWriter(engine, bus)
    event = TraceEvent(**RUN, step="l2a", event="BEGIN")
    writer.emit(event)
    writer.emit(event)  # at-least-once: a retried emission
    assert len(_rows(engine)) == 1
    assert writer.events("0190-run") == [event.document()]


def test_a_published_event_carries_type_class_and_times(engine: Engine, bus: Bus) -> None:
    published = datetime(2026, 11, 25, 12, 30, tzinfo=UTC)
    event = TraceEvent(
        **RUN, step="l2a", event="PUBLISHED", status="OK", outputs=["S2A_MSIL2A_X.SAFE.zip"],
        product_type="S2MSI2A", timeliness_class="FAST24", t0=T0, published_at=published,
    )  # fmt: skip
    TraceWriter(engine, bus).emit(event)
    [row] = _rows(engine)
    assert (row["product_type"], row["timeliness_class"]) == ("S2MSI2A", "FAST24")
    assert row["body"]["published_at"] == "2026-11-25T12:30:00Z"
    [doc] = _drain(bus, topics.TELEMETRY)
    assert doc["event"]["action"] == "product-published" and doc["event"]["outcome"] == "success"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"event": "END", "step": "l2a", "duration_s": 1.0}, "field status: is required on END events"),
        ({"event": "END", "step": "l2a", "status": "OK"}, "field duration_s: is required on END events"),
        ({"event": "BEGIN", "step": "l2a", "status": "OK"}, "field status: is not set on BEGIN events"),
        ({"event": "BEGIN"}, "field step: is required on BEGIN events"),
        ({"event": "PUBLISHED", "outputs": ["x"], "published_at": T0}, "field product_type: is required"),
        (
            {"event": "PUBLISHED", "product_type": "S2MSI2A", "published_at": T0},
            "field outputs: a PUBLISHED event names exactly the one product",
        ),
        ({"event": "BEGIN", "step": "l2a", "status": "MAYBE"}, "field status: Input should be 'OK'"),
        ({"event": "STARTED", "step": "l2a"}, "field event: Input should be 'BEGIN', 'END' or 'PUBLISHED'"),
        (
            {"event": "BEGIN", "step": "l2a", "t0": datetime(2026, 11, 25)},
            "field t0: Input should have timezone",
        ),
        (
            {
                "event": "END",
                "step": "l2a",
                "status": "NOK",
                "duration_s": 1,
                "missing_outputs": {"S2MSI2A": 0},
            },
            "field missing_outputs.S2MSI2A: estimated count must be >= 1 (got 0)",
        ),
    ],
)
def test_a_bad_event_is_refused_naming_the_field_and_nothing_is_written(
    engine: Engine, bus: Bus, fields: dict[str, Any], message: str
) -> None:
    # Built without validation, as a caller's bug would build it: emit is where the contract is enforced.
    event = TraceEvent.model_construct(**{**RUN, **fields})
    with pytest.raises(ValueError, match="^trace event " + message.replace("(", r"\(").replace(")", r"\)")):
        TraceWriter(engine, bus).emit(event)
    assert _rows(engine) == []
    assert _drain(bus, topics.TRACES) == [] and _drain(bus, topics.TELEMETRY) == []


def test_building_a_bad_event_fails_at_once() -> None:
    with pytest.raises(ValueError, match="duration_s"):
        TraceEvent(**RUN, step="l2a", event="END", status="OK", duration_s=-1)
