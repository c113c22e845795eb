"""Migrations on SQLite and real PostgreSQL: they build the schema the models describe, idempotently, and a
PostgreSQL schema that is behind stops ``refsys serve`` with the command to run."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import control_plane.app  # noqa: F401  - imports every module that defines tables
from control_plane.core import schema
from control_plane.core.audit.tables import GENESIS_HASH
from control_plane.core.db import Base, create_db_engine
from tests.apps import run_refsys


def test_upgrade_builds_exactly_the_schema_the_models_describe(db_url: str) -> None:
    engine = create_db_engine(db_url)
    assert schema.current_revision(engine) is None
    schema.upgrade(engine)
    schema.upgrade(engine)  # idempotent
    assert schema.current_revision(engine) == schema.head_revision()
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        head = connection.execute(sa.text("SELECT seq, hash FROM audit_head WHERE id = 1")).one()
    assert differences == [], "models and migrations disagree: write a migration for the change"
    assert tuple(head) == (0, GENESIS_HASH)
    engine.dispose()


def test_a_schema_behind_is_refused_with_the_command_to_run(db_url: str) -> None:
    engine = create_db_engine(db_url)
    with pytest.raises(schema.SchemaBehindError, match="run `refsys db upgrade`"):
        schema.require_current(engine)
    engine.dispose()


def test_serve_refuses_a_postgres_schema_that_is_behind(postgres_url: str, tmp_path: Path) -> None:
    config = tmp_path / "refsys.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": postgres_url}, "data_dir": str(tmp_path / "var")}))
    refused = run_refsys("serve", "--config", str(config), cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "database schema is at revision empty" in refused.stderr
    assert "run `refsys db upgrade`" in refused.stderr
    upgraded = run_refsys("db", "upgrade", "--config", str(config), cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"schema at {schema.head_revision()}" in upgraded.stdout
