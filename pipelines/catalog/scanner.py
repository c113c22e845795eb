"""A clamd client over its Unix socket, speaking the daemon's own protocol (no third-party package).

clamd's commands are NUL-delimited when prefixed with ``z`` (``zPING\\0``), and so are its replies. ``INSTREAM``
sends the bytes as chunks, each preceded by its length as a 4-byte big-endian integer, ended by a zero length;
the reply is ``stream: OK``, ``stream: <signature> FOUND`` or ``... ERROR``. Sending the bytes (rather than a
path with ``SCAN``) means clamd needs no access to the product storage and scans exactly what is distributed.

Limits: clamd refuses streams longer than its ``StreamMaxLength`` (25 MiB by default) with ``INSTREAM size
limit exceeded``, and by default *silently skips* what lies beyond ``MaxFileSize``/``MaxScanSize`` and still
answers OK. Configure clamd with ``AlertExceedsMax yes`` and those three limits above the largest product: a
product past a limit is then reported as ``Heuristics.Limits.Exceeded.*``, which this client treats as "not
scanned" (the product is held), never as clean and never as infected.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK_BYTES = 64 * 1024
REPLY_MAX_BYTES = 64 * 1024
LIMITS_EXCEEDED = "Heuristics.Limits.Exceeded"
"""Prefix of what clamd reports, with ``AlertExceedsMax yes``, for bytes it did not scan: not a verdict."""


class ScannerError(Exception):
    """The scan did not happen (clamd unreachable, timed out, or answered an error): the verdict is unknown."""


@dataclass(frozen=True)
class Verdict:
    """What clamd said about one stream: clean, or infected with ``signature``."""

    infected: bool
    signature: str | None = None


class Scanner(Protocol):
    """What the catalog needs of a malware scanner (clamd here; a test double in unit tests)."""

    def scan(self, stream: BinaryIO) -> Verdict:
        """The verdict on ``stream``'s bytes; ``ScannerError`` when there is none."""

    def version(self) -> str: ...


class ClamdScanner:
    """One connection per command, as clamd expects for ``INSTREAM``; safe to share between threads."""

    def __init__(self, socket_path: Path, *, timeout_s: float) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    def ping(self) -> None:
        """Return when clamd answers ``PONG``; ``ScannerError`` otherwise."""
        reply = self._command(b"zPING\0")
        if reply != "PONG":
            raise ScannerError(f"clamd at {self.socket_path} answered PING with {reply!r}")

    def version(self) -> str:
        """clamd's version line, e.g. ``ClamAV 1.4.6/27000/...`` (engine and database versions)."""
        return self._command(b"zVERSION\0")

    def scan(self, stream: BinaryIO) -> Verdict:
        """Send ``stream`` to clamd with ``INSTREAM`` and return its verdict."""
        with self._connect() as connection:
            try:
                connection.sendall(b"zINSTREAM\0")
                while chunk := stream.read(CHUNK_BYTES):
                    connection.sendall(struct.pack(">I", len(chunk)) + chunk)
                connection.sendall(struct.pack(">I", 0))
            except (BrokenPipeError, ConnectionResetError):
                # clamd closes early when it refuses the stream (size limit); its reply says why.
                pass
            except OSError as exc:
                raise ScannerError(f"clamd at {self.socket_path}: sending the stream failed: {exc}") from exc
            reply = self._reply(connection)
        return parse_scan_reply(reply)

    def _command(self, command: bytes) -> str:
        with self._connect() as connection:
            try:
                connection.sendall(command)
            except OSError as exc:
                raise ScannerError(f"clamd at {self.socket_path}: {exc}") from exc
            return self._reply(connection)

    def _connect(self) -> socket.socket:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(self.timeout_s)
        try:
            connection.connect(str(self.socket_path))
        except OSError as exc:
            connection.close()
            raise ScannerError(f"clamd at {self.socket_path} unreachable: {exc}") from exc
        return connection

    def _reply(self, connection: socket.socket) -> str:
        """Read up to clamd's NUL terminator (or the close)."""
        received = b""
        try:
            while b"\0" not in received and len(received) < REPLY_MAX_BYTES:
                part = connection.recv(4096)
                if not part:
                    break
                received += part
        except OSError as exc:  # timeouts included
            raise ScannerError(f"clamd at {self.socket_path}: no reply: {exc}") from exc
        if not received:
            raise ScannerError(f"clamd at {self.socket_path} closed the connection without a reply")
        return received.split(b"\0", 1)[0].decode("utf-8", "replace").strip()


def parse_scan_reply(reply: str) -> Verdict:
    """Turn an ``INSTREAM`` reply into a verdict; anything but OK or FOUND is a ``ScannerError``."""
    _, _, result = reply.partition(": ")
    if result == "OK":
        return Verdict(infected=False)
    if result.endswith(" FOUND"):
        signature = result.removesuffix(" FOUND")
        if signature.startswith(LIMITS_EXCEEDED):
            raise ScannerError(f"clamd did not scan the whole stream ({signature}): raise its limits")
        return Verdict(infected=True, signature=signature)
    raise ScannerError(f"clamd could not scan the stream: {reply[:256]!r}")
