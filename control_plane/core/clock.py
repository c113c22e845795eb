"""UTC time in one place: refsys stores and sends UTC only (RFC 3339 on the wire)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, timezone-aware UTC, truncated to microseconds (what PostgreSQL and SQLite both keep)."""
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """Render a datetime as RFC 3339 UTC with microseconds and a ``Z`` suffix, e.g. ``2026-11-25T10:00:00.000000Z``.

    A fixed width makes the strings sort like the instants they name.
    """
    if moment.tzinfo is None:
        raise ValueError("naive datetime: refsys only handles timezone-aware UTC times")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (``Z`` or an offset) into an aware UTC datetime."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a timezone: {text!r}")
    return moment.astimezone(UTC)


def from_timestamp(seconds: float) -> datetime:
    """A Unix timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def is_canonical(text: str) -> bool:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` with a year from 1000 on: what ``rfc3339`` writes. Hot paths (ingest)
    check this to skip parsing and rendering a time that is already in that form."""
    return (
        len(text) == 27
        and text[4] == text[7] == "-"
        and text[10] == "T"
        and text[13] == text[16] == ":"
        and text[19] == "."
        and text[26] == "Z"
        and text[0] != "0"
        and (text[:4] + text[5:7] + text[8:10]).isdigit()
        and (text[11:13] + text[14:16] + text[17:19] + text[20:26]).isdigit()
    )


def canonical_moment(text: str) -> datetime | None:
    """The instant a canonical time names (None when it is not canonical or not a valid date)."""
    if not is_canonical(text):
        return None
    try:
        return datetime.fromisoformat(text[:26]).replace(tzinfo=UTC)
    except ValueError:
        return None
