"""Step output, line by line: kept in ``step_log_lines`` (the logs API reads it) and sent to telemetry as ECS
log documents carrying the run and step ids.

Executors call ``append`` from their reader threads, once per line; lines are buffered in memory and written
in batches by ``flush`` (one insert and one bus publish per batch), so a chatty step costs no database write per
line. The engine flushes every scheduling round and before it records a step's end.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine as DbEngine

from control_plane.core import clock, ids
from control_plane.core.bus import Bus, topics
from pipelines import tables

LOG_DATASET = "refsys.production.log"
MAX_LINE_CHARS = 8192
FLUSH_AT_LINES = 2000
"""Buffered lines past which ``append`` asks for an early flush."""
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogLine:
    run_id: str
    step: str
    attempt: int
    stream: str
    at: datetime
    line: str


class StepLogs:
    def __init__(self, engine: DbEngine, bus: Bus) -> None:
        self.engine = engine
        self.bus = bus
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: list[LogLine] = []
        self.on_backlog: Callable[[], None] | None = None
        """Called (no arguments) when the buffer passes ``FLUSH_AT_LINES``: the engine wakes and flushes."""

    def append(self, run_id: str, step: str, attempt: int, stream: str, line: str) -> None:
        """The ``LogSink`` executors write to."""
        entry = LogLine(run_id, step, attempt, stream, clock.utcnow(), line.rstrip("\n")[:MAX_LINE_CHARS])
        with self._lock:
            self._pending.append(entry)
            backlog = len(self._pending)
        if backlog >= FLUSH_AT_LINES and self.on_backlog is not None:
            self.on_backlog()

    def flush(self) -> int:
        """Write buffered lines to the database, then publish them to telemetry; returns how many."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                return 0
            with self.engine.begin() as connection:
                connection.execute(
                    tables.step_log_lines.insert(),
                    [
                        {
                            "run_id": e.run_id,
                            "step": e.step,
                            "attempt": e.attempt,
                            "stream": e.stream,
                            "at": e.at,
                            "line": e.line,
                        }
                        for e in batch
                    ],
                )
            try:
                self.bus.publish(topics.TELEMETRY, "refsys:production", [ecs_log(entry) for entry in batch])
            except Exception:  # the lines are stored; telemetry misses this batch, the logs API still has it
                log.exception("could not publish %d step log lines to telemetry", len(batch))
            return len(batch)


def ecs_log(entry: LogLine) -> dict[str, Any]:
    """One step output line as an ECS log document."""
    execution = f"{entry.run_id}/{entry.step}/{entry.attempt}"
    return {
        "@timestamp": clock.rfc3339(entry.at),
        "event": {
            "id": ids.new_id(),
            "kind": "event",
            "category": ["process"],
            "type": ["info"],
            "module": "refsys",
            "dataset": LOG_DATASET,
            "ingested": clock.rfc3339(clock.utcnow()),
        },
        "log": {"level": "error" if entry.stream == "stderr" else "info", "logger": entry.stream},
        "message": entry.line,
        "labels": {"run_id": entry.run_id, "step": entry.step, "attempt": str(entry.attempt)},
        "refsys": {
            "run": {"id": entry.run_id},
            "step": {"name": entry.step, "attempt": entry.attempt},
            "execution": execution,
        },
    }


def read_lines(
    engine: DbEngine, run_id: str, step: str, *, attempt: int, after: int | None, limit: int
) -> list[dict[str, Any]]:
    """One page of a step attempt's output, oldest first, continuing after line id ``after``."""
    lines = tables.step_log_lines
    query = (
        sa.select(lines.c.id, lines.c.at, lines.c.stream, lines.c.line)
        .where(lines.c.run_id == run_id, lines.c.step == step, lines.c.attempt == attempt)
        .order_by(lines.c.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(lines.c.id > after)
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]
