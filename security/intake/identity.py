"""Event identity when the source has none of its own (DESIGN.md section 4).

Re-ingesting the same input must store nothing new, while two genuinely repeated lines must stay two events.
So the id is derived from *where* a line came from: a file's fingerprint and the line's byte offset in it (a
collector or ``refsys ingest``), or the sender's ``Idempotency-Key`` and the line's number in that request.
Byte offsets make the id independent of how a file was cut into batches, so a collector that resends a batch
cut differently after a crash still produces the same ids. Without either, a fresh UUIDv7 is all there is.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from control_plane.core import ids

FINGERPRINT_BYTES = 1024
"""A file is known by its first KiB: stable while a log grows, different after rotation (as Filebeat does)."""
_NAMESPACE = uuid.UUID("5f1b7a0e-6f51-4d0b-9a59-2f4c4b6b8e11")
_SLICE_HEADER = re.compile(r"^(?P<fingerprint>[0-9a-f]{16,64})@(?P<offset>\d{1,18})$")


@dataclass(frozen=True)
class FileSlice:
    """The body is a verbatim slice of the file ``fingerprint``, starting at byte ``offset``."""

    fingerprint: str
    offset: int

    def header(self) -> str:
        return f"{self.fingerprint}@{self.offset}"

    @classmethod
    def parse(cls, value: str) -> FileSlice:
        match = _SLICE_HEADER.match(value.strip())
        if match is None:
            raise ValueError("expected FINGERPRINT@OFFSET (hex fingerprint, decimal byte offset)")
        return cls(match["fingerprint"], int(match["offset"]))


@dataclass(frozen=True)
class RequestKey:
    """The sender's ``Idempotency-Key``: a retried request carries the same key."""

    key: str


Origin = FileSlice | RequestKey | None


def line_basis(origin: Origin, *, number: int, offset: int | None) -> str | None:
    """What identifies one line across retries, or None when nothing does."""
    if isinstance(origin, FileSlice) and offset is not None:
        return f"file:{origin.fingerprint}@{origin.offset + offset}"
    if isinstance(origin, FileSlice):
        return f"file:{origin.fingerprint}@{origin.offset}#{number}"
    if isinstance(origin, RequestKey):
        return f"key:{origin.key}#{number}"
    return None


def derived_event_id(source: str, basis: str | None, index: int) -> str:
    """A stable id for the ``index``-th event of a line (a line may yield several), or a fresh UUIDv7."""
    if basis is None:
        return ids.new_id()
    return str(uuid.uuid5(_NAMESPACE, f"{source}|{basis}|{index}"))


def fingerprint(path: Path) -> str:
    """The identity of a file: SHA-256 of its first KiB (of the whole file when shorter), in hex."""
    with path.open("rb") as handle:
        head = handle.read(FINGERPRINT_BYTES)
    return hashlib.sha256(head).hexdigest()[:32]
