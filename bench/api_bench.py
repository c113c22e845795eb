"""API latency under a steady load: 500 requests/s for 30 s on loopback, half to ``/healthz`` and half to an
authenticated ``GET /api/v1/audit`` (one page of 100 records), against ``refsys serve`` on embedded defaults.

Target (issue: control-plane foundation): p99 under 50 ms with zero errors on 2 cores.

The load is open-loop: request i is due at start + i / rate whatever happened before, and its latency is counted
from that due time, so a stalled server shows up in the figures instead of silently slowing the client down
(coordinated omission). The client speaks raw HTTP/1.1 over keep-alive connections to stay light on the shared
cores.

    python bench/api_bench.py [--rate 500] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import report
from control_plane.core.audit.trail import Actor
from control_plane.core.config import load_settings
from control_plane.core.services import open_audit, open_engine

REFSYS = str(Path(sys.executable).parent / "refsys")
CONNECTIONS = 32
PREFILLED_RECORDS = 500


@dataclass
class Endpoint:
    name: str
    request: bytes
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0


class Connection:
    """One keep-alive HTTP/1.1 connection that sends a prepared request and reads one response."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def exchange(self, request: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    def reset(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def drive(host: str, port: int, endpoints: list[Endpoint], rate: float, seconds: float) -> float:
    """Send rate * seconds requests on schedule, round-robin over ``endpoints``; returns the wall time taken."""
    loop = asyncio.get_running_loop()
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        pool.put_nowait(Connection(host, port))
    total = int(rate * seconds)
    start = loop.time() + 0.2

    async def one(index: int) -> None:
        due = start + index / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        endpoint = endpoints[index % len(endpoints)]
        connection = await pool.get()
        try:
            status = await connection.exchange(endpoint.request)
            if status != 200:
                endpoint.errors += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            endpoint.errors += 1
            connection.reset()
        finally:
            pool.put_nowait(connection)
        endpoint.latencies_s.append(loop.time() - due)

    await asyncio.gather(*(one(index) for index in range(total)))
    return loop.time() - start


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summarise(endpoint: Endpoint) -> dict[str, Any]:
    ms = [value * 1000 for value in endpoint.latencies_s]
    return {
        "requests": len(ms),
        "errors": endpoint.errors,
        "p50_ms": round(statistics.median(ms), 2),
        "p90_ms": round(percentile(ms, 0.90), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prepare(workdir: Path) -> str:
    """An auditor token and a trail with enough records for a full page."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("REFSYS_")}
    token = subprocess.run(
        [REFSYS, "token", "create", "--role", "auditor", "--sub", "bench", "--ttl", "2h"],
        cwd=workdir, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    settings = load_settings()
    engine = open_engine(settings)
    trail = open_audit(settings, engine)
    for number in range(PREFILLED_RECORDS):
        trail.append(
            actor=Actor(subject="ops"), action="run.submit", outcome="success", target=f"run-{number}"
        )
    engine.dispose()
    return token


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        os.chdir(workdir)
        token = prepare(workdir)
        port = free_port()
        env = {key: value for key, value in os.environ.items() if not key.startswith("REFSYS_")}
        env["REFSYS_LOGGING__ACCESS_LOG"] = "false"  # measure the API, not a terminal scrolling 15k lines
        server = subprocess.Popen(
            [REFSYS, "serve", "--port", str(port)], cwd=workdir, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            host = f"Host: 127.0.0.1:{port}\r\n"
            endpoints = [
                Endpoint("healthz", f"GET /healthz HTTP/1.1\r\n{host}\r\n".encode()),
                Endpoint(
                    "audit_list",
                    f"GET /api/v1/audit HTTP/1.1\r\n{host}Authorization: Bearer {token}\r\n\r\n".encode(),
                ),
            ]
            cpu_before = cpu_seconds(server.pid)
            wall_s = asyncio.run(drive("127.0.0.1", port, endpoints, args.rate, args.seconds))
            server_cpu_s = cpu_seconds(server.pid) - cpu_before
        finally:
            server.terminate()
            server.wait(timeout=30)
    figures: dict[str, Any] = {
        "rate_per_s": args.rate,
        "seconds": args.seconds,
        "achieved_rate_per_s": round(sum(len(e.latencies_s) for e in endpoints) / wall_s, 1),
        "server_cpu_cores": round(server_cpu_s / wall_s, 2),
        "endpoints": {endpoint.name: summarise(endpoint) for endpoint in endpoints},
    }
    worst_p99 = max(item["p99_ms"] for item in figures["endpoints"].values())
    errors = sum(item["errors"] for item in figures["endpoints"].values())
    figures["target"] = "p99 < 50 ms, 0 errors"
    figures["met"] = worst_p99 < 50 and errors == 0
    report("api", figures)


if __name__ == "__main__":
    main()
