"""Where the real services the tests use live, and what to do when one is absent.

Locally a test that needs an absent service skips and says why; with ``REFSYS_REQUIRE_SERVICES=1`` (CI) it
fails instead, so that CI can never pass by skipping the real thing.
"""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa

POSTGRES_URL = os.environ.get("REFSYS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def services_required() -> bool:
    return os.environ.get("REFSYS_REQUIRE_SERVICES", "") not in ("", "0", "false")


def unavailable(reason: str) -> None:
    """Skip (locally) or fail (CI) a test whose service is missing."""
    if services_required():
        pytest.fail(f"required service unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def postgres_reachable() -> str | None:
    """None when PostgreSQL answers, otherwise the reason it does not."""
    engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        return None
    except Exception as exc:  # any failure means "not usable here"; the reason is reported
        return f"PostgreSQL at {POSTGRES_URL} unreachable: {exc.__class__.__name__}"
    finally:
        engine.dispose()
