"""Run a source adapter over a sample file framed the way the intake frames it, and collect what came out.

The intake decodes each non-blank line of an NDJSON body and rejects a line that is not JSON ("invalid JSON")
before any adapter sees it; ``run_sample`` does the same, so a sample's counts here are the counts an
ingestion of that file reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from security.sources.base import Adapter, Line, Parsed, Rejection


@dataclass
class SampleRun:
    docs: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def counts(self) -> tuple[int, int]:
        """(documents accepted, lines or list items rejected)."""
        return len(self.docs), len(self.rejections)


def json_line(value: Any, number: int = 1) -> Line:
    """A line as the intake hands it to a JSON adapter: the value and its bytes."""
    return Line(number, orjson.dumps(value), value)


def frame_json_lines(data: bytes, *, unwrap: str | None = None) -> Iterator[Line | Rejection]:
    """Each non-blank line decoded, numbered by its line in ``data``; a line that is not JSON is rejected.

    ``unwrap`` names the field that holds the record in derived sample files (``EXTRACTED_*.jsonl`` keep each
    record in a field, next to where it was found); the line is then that record, re-encoded.
    """
    for number, chunk in enumerate(data.split(b"\n"), start=1):
        raw = chunk.rstrip(b"\r")
        if not raw.strip():
            continue
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            yield Rejection(Line(number, raw), "invalid JSON")
            continue
        if unwrap is not None:
            value = value[unwrap]
            raw = orjson.dumps(value)
        yield Line(number, raw, value)


def run_sample(adapter: Adapter, path: Path, *, unwrap: str | None = None) -> SampleRun:
    """Frame ``path``, run ``adapter`` over its lines, and collect documents and rejections."""
    run = SampleRun()
    lines = []
    for framed in frame_json_lines(path.read_bytes(), unwrap=unwrap):
        if isinstance(framed, Rejection):
            run.rejections.append(framed)
        else:
            lines.append(framed)
    for outcome in adapter.parse(lines):
        if isinstance(outcome, Parsed):
            run.docs.append(outcome.doc)
        else:
            run.rejections.append(outcome)
    return run
