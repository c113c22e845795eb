"""alert hooks: dead-lettered notifications

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hook_dead_letters",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("delivery_id", sa.String(length=36), nullable=False),
        sa.Column("hook", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("alert_id", sa.String(length=128), nullable=False),
        sa.Column("alert", sa.JSON(), nullable=False),
        sa.Column("reason", sa.String(length=1024), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("dead_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("redelivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("redelivered_by", sa.String(length=256), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("delivery_id"),
    )
    with op.batch_alter_table("hook_dead_letters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hook_dead_letters_hook"), ["hook"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("hook_dead_letters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hook_dead_letters_hook"))
    op.drop_table("hook_dead_letters")
