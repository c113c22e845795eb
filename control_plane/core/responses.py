"""Fast JSON responses for hot, read-heavy routes.

A route that returns many rows it built itself (already the documented shape) skips FastAPI's per-field
re-validation and serialises once with orjson; it still declares ``response_model`` so the OpenAPI document
shows the shape.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response


def json_response(content: Any, status_code: int = 200) -> Response:
    """``content`` as JSON; datetimes as RFC 3339 with ``Z``."""
    return Response(
        orjson.dumps(content, option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC),
        status_code=status_code,
        media_type="application/json",
    )
