"""Framing: a request body or a file slice into ``Line`` objects, JSON decoded for JSON sources.

A JSON source accepts one JSON object, a JSON array of objects, or NDJSON (one value per line); a text source
takes plain lines. A line that is not valid JSON becomes a rejection here, before any adapter sees it, so one
broken line never costs the rest of its batch. Each line remembers its byte offset in the body, which is what
makes event ids independent of how a file was cut into batches.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import orjson

from security.sources.base import Line, Rejection

MAX_DECOMPRESSED_FACTOR = 20
"""A gzip body may expand to at most this many times the body limit (a zip bomb stops there)."""


class FramingError(ValueError):
    """The body as a whole cannot be read (bad gzip, too large once decompressed)."""


@dataclass(frozen=True)
class FramedLine:
    line: Line
    offset: int | None
    """Byte offset of the line in the body; None for elements of a JSON array (they have no own bytes)."""


def decompress(body: bytes, encoding: str | None, *, limit: int) -> bytes:
    """The body with its ``Content-Encoding`` undone; refuses to expand past ``limit`` bytes."""
    if not encoding or encoding.lower() == "identity":
        return body
    if encoding.lower() not in ("gzip", "x-gzip"):
        raise FramingError(f"unsupported Content-Encoding {encoding!r} (use gzip)")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise FramingError(f"body is not valid gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise FramingError(f"body expands beyond {limit} bytes once decompressed")
    return out


def frame(body: bytes, framing: Literal["json", "text"]) -> Iterator[FramedLine | Rejection]:
    """Lines of ``body`` in order: decoded values for JSON framing, raw text lines otherwise."""
    if framing == "text":
        yield from _text_lines(body)
        return
    stripped = body.lstrip()
    if stripped[:1] in (b"[", b"{"):
        try:
            whole = orjson.loads(body)
        except orjson.JSONDecodeError:
            whole = None  # not one JSON document: NDJSON (or a broken document, reported line by line)
        if isinstance(whole, list):
            for index, value in enumerate(whole, start=1):
                yield FramedLine(Line(index, orjson.dumps(value), value), None)
            return
        if isinstance(whole, dict):
            yield FramedLine(Line(1, body.strip(), whole), len(body) - len(stripped))
            return
    for number, offset, raw in _split(body):
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            yield Rejection(Line(number, raw), f"invalid JSON: {exc}")
            continue
        yield FramedLine(Line(number, raw, value), offset)


@dataclass
class Framed:
    """A body framed: its lines, each line's byte offset (event ids derive from it), and what did not frame."""

    lines: list[Line]
    offsets: dict[int, int | None]
    rejections: list[Rejection]


def frame_all(body: bytes, framing: Literal["json", "text"]) -> Framed:
    """``frame`` collected: what the intake and ``refsys rules test`` hand to an adapter."""
    framed = Framed([], {}, [])
    for item in frame(body, framing):
        if isinstance(item, FramedLine):
            framed.lines.append(item.line)
            framed.offsets[item.line.number] = item.offset
        else:
            framed.rejections.append(item)
    return framed


def _text_lines(body: bytes) -> Iterator[FramedLine]:
    for number, offset, raw in _split(body):
        yield FramedLine(Line(number, raw), offset)


def _split(body: bytes) -> Iterator[tuple[int, int, bytes]]:
    """Non-blank lines as (1-based line number, byte offset, bytes without the line ending)."""
    offset = 0
    for number, chunk in enumerate(body.split(b"\n"), start=1):
        raw = chunk.rstrip(b"\r")
        if raw.strip():
            yield number, offset, raw
        offset += len(chunk) + 1


def gzip_bytes(data: bytes) -> bytes:
    """Compress a body the way clients send it (used by the CLI's uploads)."""
    return gzip.compress(data, compresslevel=5, mtime=0)
