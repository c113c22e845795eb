"""Cutting files into batches the intake accepts: line-aligned slices that know where they start.

Every batch is a verbatim slice of its file, sent with the file's fingerprint and the slice's byte offset, so
event ids come from (file, byte offset) whatever the batch size; re-ingesting a file, or resending a batch after
a crash, stores nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from security.intake.identity import FileSlice, fingerprint
from security.sources.base import Adapter

DEFAULT_BATCH_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Batch:
    origin: FileSlice
    data: bytes

    @property
    def end(self) -> int:
        return self.origin.offset + len(self.data)


def file_batches(
    path: Path, adapter: type[Adapter], *, max_bytes: int = DEFAULT_BATCH_BYTES
) -> Iterator[Batch]:
    """Batches of ``path`` for ``adapter``'s source: a whole JSON document (object or array) as one batch, else
    slices cut where the source allows (``Adapter.batch_end``), read as a stream so memory stays flat."""
    identity = fingerprint(path)
    if adapter.framing == "json" and path.stat().st_size <= max_bytes:
        data = path.read_bytes()
        if _is_one_document(data):
            yield Batch(FileSlice(identity, 0), data)
            return
    with path.open("rb") as handle:
        for offset, chunk in line_slices(handle, max_bytes=max_bytes, batch_end=adapter.batch_end):
            yield Batch(FileSlice(identity, offset), chunk)


def line_slices(
    handle: BinaryIO, *, max_bytes: int, batch_end: Callable[[bytes], int] = Adapter.batch_end
) -> Iterator[tuple[int, bytes]]:
    """(offset, slice) pairs read from ``handle``, each ending where ``batch_end`` allows and at most
    ``max_bytes`` long (a longer line or event comes alone, cut at its last line end). What remains at the end
    of the file, complete or not, comes last."""
    offset, carry = 0, b""
    while True:
        room = max_bytes - len(carry)
        block = handle.read(room if room > 0 else max_bytes)
        if not block:
            if carry:
                yield offset, carry
            return
        carry += block
        cut = batch_end(carry) or (carry.rfind(b"\n") + 1 if len(carry) >= max_bytes else 0)
        if cut == 0:
            continue  # no safe end yet: read on
        yield offset, carry[:cut]
        offset += cut
        carry = carry[cut:]


def _is_one_document(data: bytes) -> bool:
    if data.lstrip()[:1] not in (b"[", b"{"):
        return False
    try:
        return isinstance(orjson.loads(data), dict | list)
    except orjson.JSONDecodeError:
        return False  # NDJSON, or broken: cut into lines, and the broken ones are dead-lettered
