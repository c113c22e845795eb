"""The clamd client against a scripted stand-in for clamd on a Unix socket: command framing, the INSTREAM chunk
protocol, every kind of reply, and the failures that must leave a product held rather than published."""

from __future__ import annotations

import io
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipelines.catalog.scanner import CHUNK_BYTES, ClamdScanner, ScannerError, parse_scan_reply

Handler = Callable[[socket.socket, bytes], None]


def _read_command(connection: socket.socket) -> bytes:
    command = b""
    while not command.endswith(b"\0"):
        command += connection.recv(1)
    return command


def _read_stream(connection: socket.socket) -> list[bytes]:
    """The INSTREAM chunks as sent: each prefixed with its 4-byte big-endian length, a zero length ends."""
    chunks = []
    while True:
        header = b""
        while len(header) < 4:
            header += connection.recv(4 - len(header))
        (length,) = struct.unpack(">I", header)
        if length == 0:
            return chunks
        chunk = b""
        while len(chunk) < length:
            chunk += connection.recv(length - len(chunk))
        chunks.append(chunk)


@pytest.fixture
def fake_clamd(tmp_path: Path) -> Iterator[Callable[[Handler], Path]]:
    """Start a one-thread server on a Unix socket that hands each connection to ``handler``."""
    servers: list[socket.socket] = []

    def start(handler: Handler) -> Path:
        path = tmp_path / f"clamd-{len(servers)}.sock"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen()
        servers.append(server)

        def serve() -> None:
            while True:
                try:
                    connection, _ = server.accept()
                except OSError:
                    return
                with connection:
                    handler(connection, _read_command(connection))

        threading.Thread(target=serve, daemon=True).start()
        return path

    yield start
    for server in servers:
        server.close()


def test_ping_version_and_instream_framing(fake_clamd: Callable[[Handler], Path]) -> None:
    received: list[list[bytes]] = []

    def clamd(connection: socket.socket, command: bytes) -> None:
        if command == b"zPING\0":
            connection.sendall(b"PONG\0")
        elif command == b"zVERSION\0":
            connection.sendall(b"ClamAV 1.4.6/27000/Tue Nov 24 2026\0")
        elif command == b"zINSTREAM\0":
            chunks = _read_stream(connection)
            received.append(chunks)
            found = b"MARKER" in b"".join(chunks)
            connection.sendall(b"stream: Test.Marker.UNOFFICIAL FOUND\0" if found else b"stream: OK\0")

    scanner = ClamdScanner(fake_clamd(clamd), timeout_s=10)

    scanner.ping()
    assert scanner.version().startswith("ClamAV 1.4.6")
    payload = b"a" * (CHUNK_BYTES * 2 + 10)
    clean = scanner.scan(io.BytesIO(payload))
    infected = scanner.scan(io.BytesIO(b"xx MARKER yy"))

    assert (clean.infected, clean.signature) == (False, None)
    assert (infected.infected, infected.signature) == (True, "Test.Marker.UNOFFICIAL")
    assert [len(chunk) for chunk in received[0]] == [CHUNK_BYTES, CHUNK_BYTES, 10]
    assert b"".join(received[0]) == payload


def test_a_refused_stream_is_a_scanner_error_with_clamd_s_reason(
    fake_clamd: Callable[[Handler], Path],
) -> None:
    def clamd(connection: socket.socket, command: bytes) -> None:
        connection.recv(8)  # reads a little, then refuses like clamd past StreamMaxLength
        connection.sendall(b"INSTREAM size limit exceeded. ERROR\0")
        connection.shutdown(socket.SHUT_RDWR)

    scanner = ClamdScanner(fake_clamd(clamd), timeout_s=10)
    with pytest.raises(ScannerError, match="size limit exceeded"):
        scanner.scan(io.BytesIO(b"x" * (8 * CHUNK_BYTES)))


def test_unreachable_silent_or_wrong_clamd_is_a_scanner_error(
    fake_clamd: Callable[[Handler], Path], tmp_path: Path
) -> None:
    with pytest.raises(ScannerError, match="unreachable"):
        ClamdScanner(tmp_path / "absent.sock", timeout_s=1).ping()

    silent = ClamdScanner(fake_clamd(lambda connection, command: None), timeout_s=1)
    with pytest.raises(ScannerError, match="without a reply"):
        silent.ping()

    gone = threading.Event()

    def stalls(connection: socket.socket, command: bytes) -> None:
        gone.wait(30)  # holds the connection open without answering: the client's timeout must end it

    stalled = ClamdScanner(fake_clamd(stalls), timeout_s=0.2)
    with pytest.raises(ScannerError, match="no reply"):
        stalled.version()
    gone.set()

    wrong = ClamdScanner(
        fake_clamd(lambda connection, command: connection.sendall(b"UNKNOWN COMMAND\0")), timeout_s=1
    )
    with pytest.raises(ScannerError, match="answered PING"):
        wrong.ping()


@pytest.mark.parametrize(
    "reply, infected, signature",
    [
        ("stream: OK", False, None),
        ("stream: Eicar-Signature FOUND", True, "Eicar-Signature"),
        ("stream: Win.Test.EICAR_HDB-1 FOUND", True, "Win.Test.EICAR_HDB-1"),
    ],
)
def test_scan_replies(reply: str, infected: bool, signature: str | None) -> None:
    verdict = parse_scan_reply(reply)
    assert (verdict.infected, verdict.signature) == (infected, signature)


@pytest.mark.parametrize(
    "reply, error",
    [
        ("stream: lstat() failed. ERROR", "could not scan"),
        ("COMMAND READ TIMED OUT", "could not scan"),
        ("", "could not scan"),
        # AlertExceedsMax: clamd skipped bytes past a limit; neither clean nor infected
        ("stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND", "did not scan the whole stream"),
    ],
)
def test_other_replies_are_errors(reply: str, error: str) -> None:
    with pytest.raises(ScannerError, match=error):
        parse_scan_reply(reply)
