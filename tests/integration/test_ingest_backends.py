"""`refsys ingest` end to end on both event-store back-ends: SQLite and OpenSearch's API as served by
osmem-server (an OpenSearch-compatible server from PyPI; a real OpenSearch cannot run here). The same file
ingested twice is stored once; genuinely repeated lines stay distinct."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from control_plane.cli import main
from security.store import EventQuery, open_store
from tests.services import unavailable
from tests.shared_data import shared_file

ALL_TIME = {"start": datetime(2000, 1, 1, tzinfo=UTC), "end": datetime(2100, 1, 1, tzinfo=UTC)}


@pytest.fixture(scope="module")
def osmem() -> Iterator[Any]:
    try:
        from osmem_server import OsmemServer

        server = OsmemServer.start(japanese=False)
    except Exception as exc:  # not installed, or it did not start: say so (CI fails instead)
        unavailable(f"osmem-server could not start: {exc!r}")
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "opensearch"])
def store_settings(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    if request.param == "sqlite":
        yield {"backend": "sqlite"}
        return
    with request.getfixturevalue("osmem").clone() as clone:
        yield {"backend": "opensearch", "opensearch": {"hosts": [clone.url]}}


def _ingest(tmp_path: Path, store: dict[str, Any], source: str, path: Path) -> dict[str, Any]:
    config = tmp_path / "refsys.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "var"), "store": store}))
    result = CliRunner().invoke(main, ["ingest", "--config", str(config), "--source", source, str(path)])
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.output.strip().splitlines()[-1])
    return summary


def _stored(tmp_path: Path, store: dict[str, Any], dataset: str, expected: int) -> int:
    """How many events of ``dataset`` the store holds, polled until ``expected`` (OpenSearch refreshes later)."""
    if store["backend"] == "sqlite":
        events = open_store("sqlite", path=tmp_path / "var" / "events.db")
    else:
        events = open_store("opensearch", hosts=store["opensearch"]["hosts"])
    try:
        deadline = time.monotonic() + 30
        while True:
            total = events.search(EventQuery(**ALL_TIME, datasets=[dataset], size=0)).total
            if total >= expected or time.monotonic() > deadline:
                return total
            time.sleep(0.2)
    finally:
        events.close()


def test_the_same_file_twice_is_stored_once(tmp_path: Path, store_settings: dict[str, Any]) -> None:
    sample = shared_file("suricata-stamus-analytics/jupyter/Notebooks/training/data/02/eve.json")
    first = _ingest(tmp_path, store_settings, "suricata", sample)
    second = _ingest(tmp_path, store_settings, "suricata", sample)
    assert first["accepted"] == second["accepted"] == 290
    assert (first["stored"], second["stored"]) == (290, 0)
    assert _stored(tmp_path, store_settings, "suricata.eve", 290) == 290


def test_repeated_lines_stay_two_events(tmp_path: Path, store_settings: dict[str, Any]) -> None:
    line = "Nov 25 10:00:00 bastion sshd[811]: Failed password for root from 203.0.113.7 port 5022 ssh2\n"
    log = tmp_path / "auth.log"
    log.write_text(line * 2)
    assert _ingest(tmp_path, store_settings, "syslog", log)["stored"] == 2
    assert _ingest(tmp_path, store_settings, "syslog", log)["stored"] == 0
    assert _stored(tmp_path, store_settings, "syslog.messages", 2) == 2
