"""A real ``refsys serve`` in its own process and data directory, for tests that kill and restart it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.apps import REFSYS, free_port, run_refsys

READY_DEADLINE_S = 60


class ServerProcess:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("REFSYS_")}

    def start(self) -> None:
        log = (self.workdir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [REFSYS, "serve", "--port", str(self.port)],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + READY_DEADLINE_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.workdir / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(
            "server did not become ready:\n" + (self.workdir / "server.log").read_text()[-3000:]
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, as in a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def credential(self, *args: str) -> str:
        result = run_refsys(*args, cwd=self.workdir)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def search_all(self, token: str, dataset: str, *, expected: int, deadline_s: float = 120) -> list[dict]:
        """Every stored event of ``dataset`` once the store holds ``expected`` of them (or the deadline passes)."""
        headers = {"Authorization": f"Bearer {token}"}
        body = {
            "start": "2000-01-01T00:00:00Z",
            "end": "2100-01-01T00:00:00Z",
            "datasets": [dataset],
            "size": 0,
        }
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            total = httpx.post(
                f"{self.url}/api/v1/events/search", json=body, headers=headers, timeout=30
            ).json()["total"]
            if total >= expected:
                break
            time.sleep(0.5)
        events: list[dict] = []
        page = {**body, "size": 1000, "sort": "asc"}
        while True:
            found = httpx.post(
                f"{self.url}/api/v1/events/search", json=page, headers=headers, timeout=30
            ).json()
            events += [hit["event"] for hit in found["hits"]]
            if len(found["hits"]) < 1000:
                return events
            page["search_after"] = found["hits"][-1]["sort"]
