"""``refsys collect``: follow a log file across rotation and ship it, resuming where it stopped.

The position (file identity and byte offset) is saved only after the server acknowledged the batch, so a
collector killed at any moment resends at most one batch on restart, and the server's ids (fingerprint and byte
offset) make that resend a no-op. Rotation is followed both ways: live (the old file is read to its end before
the new one is opened) and across a restart (the saved inode is looked for among the file's siblings, such as
``app.log.1``, and finished first). A file truncated in place (copytruncate) starts over at offset 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from control_plane.core import secretfiles
from security.intake.client import IngestClient
from security.intake.identity import FileSlice, fingerprint
from security.sources.base import Adapter

log = logging.getLogger(__name__)


@dataclass
class Position:
    device: int
    inode: int
    fingerprint: str
    offset: int


@dataclass
class _Open:
    path: Path
    handle: BinaryIO
    position: Position


class Collector:
    def __init__(
        self,
        path: Path,
        *,
        source: str,
        batch_end: Callable[[bytes], int] = Adapter.batch_end,
        client: IngestClient,
        state_file: Path,
        batch_bytes: int = 1024 * 1024,
        flush_interval_s: float = 1.0,
        poll_interval_s: float = 0.25,
        heartbeat_s: int | None = None,
        stop: threading.Event | None = None,
        on_sent: Callable[[Path, Position, int], None] | None = None,
    ) -> None:
        """``on_sent(file, position, events_so_far)`` is called after each acknowledged batch (progress)."""
        self.path = path
        self.source = source
        self.client = client
        self.state_file = state_file
        self.batch_bytes = batch_bytes
        self.flush_interval_s = flush_interval_s
        self.poll_interval_s = poll_interval_s
        self.heartbeat_s = heartbeat_s
        self.batch_end = batch_end
        self.hold_s = 2 * flush_interval_s
        self.stop = stop or threading.Event()
        self.sent_events = 0
        self.on_sent = on_sent
        self._held: tuple[int, float] | None = None

    def run(self) -> None:
        """Ship until ``stop`` is set (after the batch in flight)."""
        current = self._resume()
        while not self.stop.is_set():
            if current is None:
                current = self._open_new()
                if current is None:
                    self.stop.wait(self.poll_interval_s)
                    continue
            shipped = self._ship_available(current)
            if shipped:
                continue
            replacement = self._rotated_or_truncated(current)
            if replacement is not None:
                self._finish(current)
                current.handle.close()
                current = replacement
                continue
            self.stop.wait(self.poll_interval_s)
        if current is not None:
            current.handle.close()

    def _ship_available(self, current: _Open) -> bool:
        """Send the complete lines available now, waiting up to the flush interval to fill a batch."""
        started = time.monotonic()
        current.handle.seek(current.position.offset)
        pending = b""
        while not self.stop.is_set():
            block = current.handle.read(self.batch_bytes)
            pending += block
            has_line = b"\n" in pending
            if has_line and (
                len(pending) >= self.batch_bytes or time.monotonic() - started >= self.flush_interval_s
            ):
                break
            if not block:
                if not has_line:
                    return False  # nothing complete yet: a line still being written waits for its end
                self.stop.wait(self.poll_interval_s)
        cut = self._cut(current.position.offset, pending)
        if cut == 0:
            return False
        self._send(current, pending[:cut])
        return True

    def _send(self, current: _Open, chunk: bytes) -> None:
        """Deliver ``chunk`` (the file's bytes at the current offset), then save the new position."""
        if not current.position.fingerprint:
            current.position.fingerprint = _identity(current)
        summary = self.client.send(
            self.source, chunk, FileSlice(current.position.fingerprint, current.position.offset),
            heartbeat_s=self.heartbeat_s,
        )  # fmt: skip
        self.sent_events += int(summary.get("accepted", 0))
        current.position.offset += len(chunk)
        self._save(current.position)
        if self.on_sent is not None:
            self.on_sent(current.path, current.position, self.sent_events)

    def _finish(self, current: _Open) -> None:
        """Ship what is left of a file that was rotated away: its tail is complete now, whatever it looks like."""
        current.handle.seek(current.position.offset)
        rest = current.handle.read()
        if rest.strip():
            self._send(current, rest)

    def _cut(self, offset: int, pending: bytes) -> int:
        """Where this batch ends: where the source allows (auditd: not inside an event), or after every
        complete line once a held-back tail has waited ``hold_s`` (a bounded wait, then it ships as is)."""
        cut = self.batch_end(pending)
        if cut:
            self._held = None
            return cut
        if b"\n" not in pending:
            return 0
        if self._held is None or self._held[0] != offset:
            self._held = (offset, time.monotonic())
            return 0
        if time.monotonic() - self._held[1] < self.hold_s:
            return 0
        self._held = None
        return pending.rfind(b"\n") + 1

    def _rotated_or_truncated(self, current: _Open) -> _Open | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None  # between a rename and the new file's creation
        if (stat.st_dev, stat.st_ino) != (current.position.device, current.position.inode):
            log.info("%s rotated; following the new file", self.path)
            return self._open_new()
        if stat.st_size < current.position.offset:
            log.info("%s truncated; starting over", self.path)
            return self._open_new()
        return None

    def _resume(self) -> _Open | None:
        """Reopen where the saved state says: the same file, or the rotated file that still has that inode."""
        try:
            saved = Position(**json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            return self._open_new()
        for candidate in [self.path, *sorted(self.path.parent.glob(self.path.name + "*"))]:
            try:
                stat = candidate.stat()
            except FileNotFoundError:
                continue
            if (stat.st_dev, stat.st_ino) == (saved.device, saved.inode) and stat.st_size >= saved.offset:
                log.info("resuming %s at byte %d", candidate, saved.offset)
                return _Open(candidate, candidate.open("rb"), saved)
        return self._open_new()

    def _open_new(self) -> _Open | None:
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return None
        stat = os.fstat(handle.fileno())
        # The fingerprint waits for the first data: an empty new file has no identity yet.
        position = Position(stat.st_dev, stat.st_ino, "", 0)
        self._save(position)
        return _Open(self.path, handle, position)

    def _save(self, position: Position) -> None:
        secretfiles.write_secret(self.state_file, json.dumps(asdict(position)).encode(), replace=True)


def _identity(current: _Open) -> str:
    """The file's fingerprint, taken at its first shipment; the inode keeps two rotated files whose first
    bytes happen to match apart."""
    return hashlib.sha256(f"{fingerprint(current.path)}:{current.position.inode}".encode()).hexdigest()[:32]
