"""Structured JSON logs on stderr: one object per line, ready for the telemetry pipeline.

Nothing here ever formats a request header or body, so a token or secret cannot reach a log by this path;
callers pass explicit, already-safe fields.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

from control_plane.core import clock

ACCESS_LOGGER = "refsys.access"
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": clock.rfc3339(clock.utcnow()),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: value for key, value in record.__dict__.items() if key not in _STANDARD_ATTRS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str) -> None:
    """Route every logger (uvicorn's too) through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # refsys writes its own access log with route templates and identities; uvicorn's would duplicate it.
    logging.getLogger("uvicorn.access").disabled = True
