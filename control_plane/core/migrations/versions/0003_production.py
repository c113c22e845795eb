"""production: runs, steps, catalog, lineage

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 19:22:04.023979
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("chain_id", sa.String(length=64), nullable=False),
        sa.Column("chain_version", sa.String(length=32), nullable=False),
        sa.Column("baseline", sa.String(length=32), nullable=False),
        sa.Column("selection", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "download_usage",
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("subject", "day"),
    )
    op.create_table(
        "products",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("product_type", sa.String(length=64), nullable=False),
        sa.Column("mission", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("sensing_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sensing_stop", sa.DateTime(timezone=True), nullable=True),
        sa.Column("t0", sa.DateTime(timezone=True), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("uri", sa.String(length=1024), nullable=False),
        sa.Column("timeliness", sa.String(length=32), nullable=True),
        sa.Column("baseline", sa.String(length=32), nullable=True),
        sa.Column("reprocessing", sa.Boolean(), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=True),
        sa.Column("step", sa.String(length=64), nullable=True),
        sa.Column("chain_id", sa.String(length=64), nullable=True),
        sa.Column("chain_version", sa.String(length=32), nullable=True),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.String(length=1024), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("products", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_products_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_products_mission"), ["mission"], unique=False)
        batch_op.create_index(batch_op.f("ix_products_product_type"), ["product_type"], unique=False)
        batch_op.create_index(batch_op.f("ix_products_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_products_sensing_start"), ["sensing_start"], unique=False)
        batch_op.create_index(batch_op.f("ix_products_state"), ["state"], unique=False)

    op.create_table(
        "runs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("chain_id", sa.String(length=64), nullable=False),
        sa.Column("chain_version", sa.String(length=32), nullable=False),
        sa.Column("mission", sa.String(length=32), nullable=False),
        sa.Column("lane", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.Column("requested_by", sa.String(length=256), nullable=False),
        sa.Column("campaign_id", sa.String(length=36), nullable=True),
        sa.Column("baseline", sa.String(length=32), nullable=True),
        sa.Column("resubmitted_from", sa.String(length=36), nullable=True),
        sa.Column("reason", sa.String(length=1024), nullable=True),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("t0", sa.DateTime(timezone=True), nullable=True),
        sa.Column("wait_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_runs_campaign_id"), ["campaign_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_runs_chain_id"), ["chain_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_runs_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_runs_parked_at"), ["parked_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_runs_state"), ["state"], unique=False)

    op.create_table(
        "step_executions",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("executor", sa.String(length=16), nullable=False),
        sa.Column("executor_ref", sa.String(length=256), nullable=True),
        sa.Column("image", sa.String(length=512), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "step", "attempt"),
    )
    op.create_table(
        "step_log_lines",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("stream", sa.String(length=8), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("step_log_lines", schema=None) as batch_op:
        batch_op.create_index("ix_step_log_lines_run_step", ["run_id", "step", "attempt", "id"], unique=False)

    op.create_table(
        "trace_events",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=True),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=True),
        sa.Column("chain", sa.String(length=64), nullable=False),
        sa.Column("mission", sa.String(length=32), nullable=False),
        sa.Column("product_type", sa.String(length=64), nullable=True),
        sa.Column("timeliness_class", sa.String(length=32), nullable=True),
        sa.Column("emitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("trace_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_trace_events_chain"), ["chain"], unique=False)
        batch_op.create_index(batch_op.f("ix_trace_events_emitted_at"), ["emitted_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_trace_events_run_id"), ["run_id"], unique=False)

    op.create_table(
        "run_steps",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("lane", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=True),
        sa.Column("executor_ref", sa.String(length=256), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=1024), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.PrimaryKeyConstraint("run_id", "name"),
    )
    with op.batch_alter_table("run_steps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_steps_lease_expires"), ["lease_expires"], unique=False)
        batch_op.create_index(batch_op.f("ix_run_steps_state"), ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("run_steps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_steps_state"))
        batch_op.drop_index(batch_op.f("ix_run_steps_lease_expires"))

    op.drop_table("run_steps")
    with op.batch_alter_table("trace_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_trace_events_run_id"))
        batch_op.drop_index(batch_op.f("ix_trace_events_emitted_at"))
        batch_op.drop_index(batch_op.f("ix_trace_events_chain"))

    op.drop_table("trace_events")
    with op.batch_alter_table("step_log_lines", schema=None) as batch_op:
        batch_op.drop_index("ix_step_log_lines_run_step")

    op.drop_table("step_log_lines")
    op.drop_table("step_executions")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_state"))
        batch_op.drop_index(batch_op.f("ix_runs_parked_at"))
        batch_op.drop_index(batch_op.f("ix_runs_created_at"))
        batch_op.drop_index(batch_op.f("ix_runs_chain_id"))
        batch_op.drop_index(batch_op.f("ix_runs_campaign_id"))

    op.drop_table("runs")
    with op.batch_alter_table("products", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_products_state"))
        batch_op.drop_index(batch_op.f("ix_products_sensing_start"))
        batch_op.drop_index(batch_op.f("ix_products_run_id"))
        batch_op.drop_index(batch_op.f("ix_products_product_type"))
        batch_op.drop_index(batch_op.f("ix_products_mission"))
        batch_op.drop_index(batch_op.f("ix_products_created_at"))

    op.drop_table("products")
    op.drop_table("download_usage")
    op.drop_table("campaigns")
