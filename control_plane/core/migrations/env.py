"""Alembic environment: runs against the engine refsys hands over (see ``control_plane.core.schema``)."""

from __future__ import annotations

from alembic import context

from control_plane.core.db import Base

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
