"""State tables of production, in the state database: runs, steps and their executions, step logs, the
catalog, download usage, lineage traces and reprocessing campaigns.

Every run's state lives here, never in the executor: Kubernetes (or a local process) only runs a step. A step
is claimed by a conditional update (``pending`` -> ``running`` with a lease), so two engines can never start the
same step; a lease that runs out lets a restarted engine adopt the execution or requeue it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.core.db import Base, UtcDateTime


class Run(Base):
    """One execution of one chain version, whatever started it."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    chain_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    chain_version: Mapped[str] = mapped_column(sa.String(32))
    mission: Mapped[str] = mapped_column(sa.String(32))
    lane: Mapped[str] = mapped_column(sa.String(32))
    state: Mapped[str] = mapped_column(sa.String(16), index=True)
    """pending, waiting-inputs, queued, running, succeeded, failed, cancelled, timed-out."""
    trigger: Mapped[str] = mapped_column(sa.String(16))
    """manual, systematic, cron, reprocessing, resubmit."""
    parameters: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    inputs: Mapped[list[str]] = mapped_column(sa.JSON)
    """Catalog ids of the input products."""
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(128), unique=True)
    requested_by: Mapped[str] = mapped_column(sa.String(256))
    campaign_id: Mapped[str | None] = mapped_column(sa.String(36), index=True)
    baseline: Mapped[str | None] = mapped_column(sa.String(32))
    """Processing baseline of its outputs (a reprocessing campaign sets a new one)."""
    resubmitted_from: Mapped[str | None] = mapped_column(sa.String(36))
    reason: Mapped[str | None] = mapped_column(sa.String(1024))
    """Why the run ended as it did (or waits), for people."""
    parked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
    """Set when the run failed for good and waits in the parking lot for an operator."""
    t0: Mapped[datetime | None] = mapped_column(UtcDateTime())
    """When its last input became available (timeliness reference)."""
    wait_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class RunStep(Base):
    """One step of one run, with its current attempt and, while running, its lease."""

    __tablename__ = "run_steps"

    run_id: Mapped[str] = mapped_column(sa.String(36), sa.ForeignKey("runs.id"), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    state: Mapped[str] = mapped_column(sa.String(16), index=True)
    """pending, queued, running, succeeded, failed, cancelled, timed-out (queued: ready, waiting for a slot)."""
    lane: Mapped[str] = mapped_column(sa.String(32))
    attempt: Mapped[int] = mapped_column(sa.Integer)
    """Attempts started so far (0 before the first)."""
    max_attempts: Mapped[int] = mapped_column(sa.Integer)
    not_before: Mapped[datetime | None] = mapped_column(UtcDateTime())
    """Backoff: not started again before this time."""
    ready_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    """When it became ready to start (trigger-to-start latency is measured from here)."""
    lease_owner: Mapped[str | None] = mapped_column(sa.String(64))
    lease_expires: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
    executor_ref: Mapped[str | None] = mapped_column(sa.String(256))
    """What the executor knows the execution by (a process group, a Job name)."""
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    exit_code: Mapped[int | None] = mapped_column(sa.Integer)
    reason: Mapped[str | None] = mapped_column(sa.String(1024))


class StepExecution(Base):
    """Every attempt of every step, kept: the history a run's timeline and the logs API show."""

    __tablename__ = "step_executions"

    run_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    step: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    attempt: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    executor: Mapped[str] = mapped_column(sa.String(16))
    executor_ref: Mapped[str | None] = mapped_column(sa.String(256))
    image: Mapped[str | None] = mapped_column(sa.String(512))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    exit_code: Mapped[int | None] = mapped_column(sa.Integer)
    outcome: Mapped[str | None] = mapped_column(sa.String(16))
    """succeeded, failed, timed-out, cancelled, lost."""


class StepLogLine(Base):
    """A step's stdout/stderr, line by line (also sent to telemetry with run and step ids)."""

    __tablename__ = "step_log_lines"

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    run_id: Mapped[str] = mapped_column(sa.String(36))
    step: Mapped[str] = mapped_column(sa.String(64))
    attempt: Mapped[int] = mapped_column(sa.Integer)
    stream: Mapped[str] = mapped_column(sa.String(8))
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    line: Mapped[str] = mapped_column(sa.Text)

    __table_args__ = (sa.Index("ix_step_log_lines_run_step", "run_id", "step", "attempt", "id"),)


class Product(Base):
    """A product in the catalog, with its lineage."""

    __tablename__ = "products"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(256))
    product_type: Mapped[str] = mapped_column(sa.String(64), index=True)
    mission: Mapped[str] = mapped_column(sa.String(32), index=True)
    state: Mapped[str] = mapped_column(sa.String(16), index=True)
    """published, quarantined, evicted, unscanned."""
    sensing_start: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
    sensing_stop: Mapped[datetime | None] = mapped_column(UtcDateTime())
    t0: Mapped[datetime | None] = mapped_column(UtcDateTime())
    size: Mapped[int] = mapped_column(sa.BigInteger)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    uri: Mapped[str] = mapped_column(sa.String(1024))
    timeliness: Mapped[str | None] = mapped_column(sa.String(32))
    baseline: Mapped[str | None] = mapped_column(sa.String(32))
    reprocessing: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    """Output of a reprocessing campaign: kept out of timeliness KPIs and duplicate detection."""
    run_id: Mapped[str | None] = mapped_column(sa.String(36), index=True)
    step: Mapped[str | None] = mapped_column(sa.String(64))
    chain_id: Mapped[str | None] = mapped_column(sa.String(64))
    chain_version: Mapped[str | None] = mapped_column(sa.String(32))
    inputs: Mapped[list[str]] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    reason: Mapped[str | None] = mapped_column(sa.String(1024))
    """Why it is quarantined or evicted."""


class DownloadUsage(Base):
    """Bytes a user downloaded in one UTC day: the download quota's counter."""

    __tablename__ = "download_usage"

    subject: Mapped[str] = mapped_column(sa.String(256), primary_key=True)
    day: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    bytes: Mapped[int] = mapped_column(sa.BigInteger)


class TraceEvent(Base):
    """A production trace event (DESIGN.md section 4): the lineage the KPI engine reads."""

    __tablename__ = "trace_events"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    run_id: Mapped[str] = mapped_column(sa.String(36), index=True)
    step: Mapped[str | None] = mapped_column(sa.String(64))
    event: Mapped[str] = mapped_column(sa.String(16))
    """BEGIN, END, PUBLISHED."""
    status: Mapped[str | None] = mapped_column(sa.String(8))
    chain: Mapped[str] = mapped_column(sa.String(64), index=True)
    mission: Mapped[str] = mapped_column(sa.String(32))
    product_type: Mapped[str | None] = mapped_column(sa.String(64))
    timeliness_class: Mapped[str | None] = mapped_column(sa.String(32))
    emitted_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    body: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    """The whole trace event, as validated at emit time."""


class Campaign(Base):
    """A reprocessing campaign: one chain version over a date range or a product list."""

    __tablename__ = "campaigns"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    chain_id: Mapped[str] = mapped_column(sa.String(64))
    chain_version: Mapped[str] = mapped_column(sa.String(32))
    baseline: Mapped[str] = mapped_column(sa.String(32))
    selection: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    state: Mapped[str] = mapped_column(sa.String(16))
    requested_by: Mapped[str] = mapped_column(sa.String(256))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


runs = cast(sa.Table, Run.__table__)
run_steps = cast(sa.Table, RunStep.__table__)
step_executions = cast(sa.Table, StepExecution.__table__)
step_log_lines = cast(sa.Table, StepLogLine.__table__)
products = cast(sa.Table, Product.__table__)
download_usage = cast(sa.Table, DownloadUsage.__table__)
trace_events = cast(sa.Table, TraceEvent.__table__)
campaigns = cast(sa.Table, Campaign.__table__)
