"""Schema migrations (Alembic), driven from code so that no ``alembic.ini`` has to travel with the package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class SchemaBehindError(Exception):
    """The database schema is older than this release expects."""


def _config(engine: Engine | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migration revision in {MIGRATIONS_DIR}")
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    command.upgrade(_config(engine), "head")


def require_current(engine: Engine) -> None:
    """Refuse to run against a schema that is behind: migrating a shared PostgreSQL is an operator's act."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        shown = current or "empty"
        raise SchemaBehindError(
            f"database schema is at revision {shown}, this release needs {head}: run `refsys db upgrade`"
        )
