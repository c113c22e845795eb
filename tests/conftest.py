"""Shared fixtures: a fresh state database on SQLite and on PostgreSQL, so one test function covers both; and
the real receivers of alert hooks (a webhook receiver, an Alertmanager)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from tests.hook_receivers import alertmanager, receiver  # noqa: F401  (fixtures, shared)
from tests.services import POSTGRES_URL, postgres_reachable, unavailable


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL to the real PostgreSQL whose connections all use a fresh, private schema (dropped afterwards)."""
    reason = postgres_reachable()
    if reason:
        unavailable(reason)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{separator}options={quote(f'-csearch_path={schema}')}"
    with admin.begin() as connection:
        connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'refsys.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test, once on an embedded SQLite file and once on the real PostgreSQL server."""
    if request.param == "postgresql":
        request.applymarker(pytest.mark.postgres)
        return request.getfixturevalue("postgres_url")
    return request.getfixturevalue("sqlite_url")
