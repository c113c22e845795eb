"""Real receivers for alert-hook tests: a scripted HTTP webhook receiver and a real Alertmanager (Debian's
prometheus-alertmanager) on a free loopback port, each with its own state and data directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.apps import free_port
from tests.integration.production_harness import wait_for
from tests.services import unavailable

ALERTMANAGER_BIN = "/usr/bin/prometheus-alertmanager"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    """A real HTTP server answering each path with its scripted statuses in turn (the last one repeats)."""

    url: str = ""
    script: dict[str, list[int]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            statuses = self.script.get(path, [200])
            status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
            self.received.append(Received(path, headers, body, status))
        return status

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/slow":  # a receiver that hangs: the hook's timeout must cut it off
                state.release.wait(30)
            status = state.answer(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"no" if status >= 300 else b"ok")

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager (Debian package) on a free loopback port, with its own config and data dir."""
    if not Path(ALERTMANAGER_BIN).exists() and shutil.which("prometheus-alertmanager") is None:
        unavailable(f"{ALERTMANAGER_BIN} is not installed (apt-get install prometheus-alertmanager)")
    config = tmp_path / "am.yml"
    config.write_text(yaml.safe_dump({"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}))
    port = free_port()
    process = subprocess.Popen(
        [
            shutil.which("prometheus-alertmanager") or ALERTMANAGER_BIN,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, (
            f"alertmanager exited: {process.stderr.read() if process.stderr else ''}"
        )
        try:
            return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, "Alertmanager ready", deadline_s=30)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
