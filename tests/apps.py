"""Building a real refsys app on a temporary data directory, for tests that go through HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.core import schema
from control_plane.core.auth.roles import Role
from control_plane.core.config import Settings
from control_plane.core.services import Services, open_engine, open_services


def make_settings(data_dir: Path, database_url: str | None = None, **sections: Any) -> Settings:
    """Settings on ``data_dir`` (and ``database_url``), with section overrides such as ``auth={...}``."""
    database = {"url": database_url} if database_url else {}
    return Settings(data_dir=data_dir, database=database, **sections)


def prepare_database(settings: Settings) -> None:
    engine = open_engine(settings)
    schema.upgrade(engine)
    engine.dispose()


@contextmanager
def running_app(settings: Settings) -> Iterator[tuple[TestClient, Services]]:
    """A migrated database, the app with its lifespan running, and a client; everything closed afterwards."""
    prepare_database(settings)
    services = open_services(settings)
    with TestClient(create_app(settings, services)) as client:
        yield client, services


def bearer(services: Services, *roles: Role, subject: str = "tester", ttl_s: int = 600) -> dict[str, str]:
    """An Authorization header with a token from the app's built-in issuer."""
    assert services.issuer is not None
    token, _claims = services.issuer.mint(subject=subject, roles=frozenset(roles), ttl_s=ttl_s)
    return {"Authorization": f"Bearer {token}"}


REFSYS = str(Path(sys.executable).parent / "refsys")


def run_refsys(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed ``refsys`` command in its own process, with none of the caller's REFSYS_* variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("REFSYS_")}
    return subprocess.run([REFSYS, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def free_port() -> int:
    """A TCP port nobody listens on right now, for servers a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
