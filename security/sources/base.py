"""The contract of a telemetry source adapter: raw lines in, ECS documents or rejections out.

The intake (HTTP, ``refsys ingest``, ``refsys collect``) frames a body or a file into ``Line`` objects and
decodes JSON for JSON sources; an adapter turns each line into zero or more ECS documents, or rejects it with a
reason that ends up in the dead-letter store next to the raw bytes. Adapters are pure: no I/O, no clock but the
event's own, so they are tested on real samples without a server.

What an adapter sets: ``@timestamp`` (RFC 3339 UTC), ``event.*`` (``kind``, ``category``, ``type``,
``action``, ``outcome``, ``severity``, ``module``, ``original`` = the raw line as text), the ECS fields it can
fill (``source.*``, ``destination.*``, ``user.*``, ``process.*``, ``host.*``, ...), the source's native fields
under its namespace (``suricata.eve.*``, ``falco.*``, ...) and ``event.id`` when the source has an identity of
its own (DESIGN.md section 4). What it never sets: ``event.dataset``, ``event.ingested``, ``observer.*``; the
intake stamps those from the route and the credential, and derives ``event.id`` when the adapter had none.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

RESERVED_DATASET_PREFIX = "refsys."
"""Datasets the control plane writes itself (its audit trail, access log, source health): never a sender's."""


def is_reserved(dataset: str) -> bool:
    return dataset.startswith(RESERVED_DATASET_PREFIX)


@dataclass(frozen=True)
class Line:
    """One unit of input as the sender framed it: a line of NDJSON or text, or one element of a JSON array."""

    number: int
    """1-based position in its batch, reported back with a rejection."""
    raw: bytes
    """The bytes as received: kept in ``event.original`` and, on rejection, in the dead-letter store."""
    value: Any = None
    """The decoded JSON value for JSON sources; ``None`` for text sources (auditd, syslog)."""

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", errors="replace")


class Rejected(Exception):
    """Raised by ``Adapter.normalise`` for a line that cannot be normalised; ``str()`` is the reason."""


@dataclass(frozen=True)
class Parsed:
    line: Line
    doc: dict[str, Any]


@dataclass(frozen=True)
class Rejection:
    line: Line
    reason: str


Outcome = Parsed | Rejection


class Adapter(ABC):
    """One telemetry source. Subclasses set the class variables and implement ``normalise`` (stateless
    sources) or override ``parse`` (sources whose events span several lines, such as auditd)."""

    name: ClassVar[str]
    """Source name in routes and the CLI: ``POST /api/v1/ingest/{name}``, ``refsys ingest --source name``."""
    dataset: ClassVar[str]
    """The ``event.dataset`` the intake stamps, e.g. ``suricata.eve``."""
    framing: ClassVar[Literal["json", "text"]] = "json"
    """``json``: each line is a JSON value (NDJSON, or elements of a JSON array); ``text``: plain lines."""

    def parse(self, lines: Iterable[Line]) -> Iterator[Outcome]:
        """Every line's documents or its rejection, in input order; one bad line never stops the batch."""
        for line in lines:
            try:
                docs = self.normalise(line)
            except Rejected as exc:
                yield Rejection(line, str(exc))
                continue
            for doc in docs:
                yield Parsed(line, doc)

    @classmethod
    def batch_end(cls, data: bytes) -> int:
        """Where a batch cut from a stream of this source's lines may end: past the last complete line by
        default. Sources whose events span lines (auditd) end it before an event that may be incomplete;
        0 means "no safe cut yet"."""
        return data.rfind(b"\n") + 1

    @abstractmethod
    def normalise(self, line: Line) -> list[dict[str, Any]]:
        """ECS documents for one line (usually one; a Kubernetes ``EventList`` gives many); raise ``Rejected``."""
