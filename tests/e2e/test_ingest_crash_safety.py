"""Crash safety of the intake, with real processes: a server SIGKILLed during a large ingest while its client
retries, and a collector SIGKILLed and restarted across a log rotation. Afterwards the store holds every line
exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.apps import REFSYS
from tests.e2e.servers import ServerProcess

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path)
    server.start()
    yield server
    server.stop()


def _lines(start: int, count: int) -> list[str]:
    return [
        f"Nov 25 10:{n // 60 % 60:02d}:{n % 60:02d} node-{n % 7} app[{n}]: unique line {n}"
        for n in range(start, start + count)
    ]


def _append(path: Path, lines: list[str]) -> None:
    with path.open("a") as handle:
        handle.write("".join(line + "\n" for line in lines))


def _accepted(server: ServerProcess, officer: str) -> int:
    try:
        items = httpx.get(
            f"{server.url}/api/v1/ingest/sources", headers={"Authorization": f"Bearer {officer}"}
        ).json()
    except httpx.TransportError:
        return 0
    return sum(item["accepted"] for item in items.get("items", []))


def _wait(condition: object, what: str, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _assert_once_each(events: list[dict], lines: list[str]) -> None:
    stored = Counter(event["event"]["original"] for event in events)
    assert sorted(stored) == sorted(lines), "lost or foreign lines"
    assert max(stored.values()) == 1, "a line was stored twice"


def test_server_killed_during_a_large_ingest_keeps_every_event_once(
    server: ServerProcess, tmp_path: Path
) -> None:
    key = server.credential("key", "create", "--role", "ingest", "--name", "bulk")
    officer = server.credential("token", "create", "--role", "security-officer")
    lines = _lines(0, 30_000)
    big = tmp_path / "big.log"
    _append(big, lines)
    env = {**server.env, "REFSYS_TOKEN": key}
    client = subprocess.Popen(
        [REFSYS, "ingest", "--source", "syslog", "--url", server.url, "--batch-bytes", "65536", str(big)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    server.credential("token", "create", "--role", "admin")  # the CLI works beside a running server
    _wait(lambda: _accepted(server, officer) > 0, "the first acknowledged batches")
    server.kill()
    assert client.poll() is None, "the ingest finished before the crash: make the file larger"
    server.start()  # same port and data directory; the client is retrying meanwhile
    _out, err = client.communicate(timeout=300)
    assert client.returncode == 0, err
    events = server.search_all(officer, "syslog.messages", expected=len(lines))
    _assert_once_each(events, lines)


def test_collector_killed_and_restarted_across_rotation_loses_and_duplicates_nothing(
    server: ServerProcess, tmp_path: Path
) -> None:
    key = server.credential("key", "create", "--role", "ingest", "--name", "collector")
    officer = server.credential("token", "create", "--role", "security-officer")
    log = tmp_path / "app.log"
    state = tmp_path / "collect-state.json"
    env = {**server.env, "REFSYS_TOKEN": key}
    command = [
        REFSYS,
        "collect",
        "--source",
        "syslog",
        "--follow",
        str(log),
        "--url",
        server.url,
        "--state",
        str(state),
    ]

    def start_collector() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "collect.log", "ab"),
        )

    written = _lines(0, 3000)
    _append(log, written)
    collector = start_collector()
    _wait(lambda: _accepted(server, officer) >= 1000, "the collector to ship part of the file")
    os.kill(collector.pid, signal.SIGKILL)
    collector.wait(timeout=30)
    more = _lines(3000, 500)  # written while the collector is down, then the file is rotated
    _append(log, more)
    log.rename(tmp_path / "app.log.1")
    fresh = _lines(3500, 1000)
    _append(log, fresh)
    collector = start_collector()
    live = _lines(4500, 500)  # and written while it runs again
    _append(log, live)
    every = written + more + fresh + live
    events = server.search_all(officer, "syslog.messages", expected=len(every), deadline_s=180)
    collector.send_signal(signal.SIGTERM)
    assert collector.wait(timeout=60) == 0, (tmp_path / "collect.log").read_text()[-2000:]
    _assert_once_each(events, every)
