"""The one ASGI middleware every request crosses: request id, body size limit, security headers, metrics and
the access log.

It is plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, which costs a task and a queue per request.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.core import ids
from control_plane.core.logs import ACCESS_LOGGER
from control_plane.core.metrics import ServiceMetrics
from control_plane.core.problems import problem_response

REQUEST_ID_HEADER = "x-request-id"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
UNMATCHED_ROUTE = "<unmatched>"
access_log = logging.getLogger(ACCESS_LOGGER)

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cache-control", b"no-store"),
]
HSTS_HEADER = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` while the route reads the body, so the app's own handlers answer the 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class RequestMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: ServiceMetrics,
        max_body_bytes: int,
        hsts: bool,
        access_log_enabled: bool,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.headers = [*SECURITY_HEADERS, HSTS_HEADER] if hsts else SECURITY_HEADERS
        self.access_log_enabled = access_log_enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Minted here, never taken from the caller: request ids identify access-log events, and a caller who
        # could repeat one could hide its later requests behind an id already stored.
        request_id = ids.new_id()
        client_request_id = _client_request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [header for header in self.headers if header[0] not in present]
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                refusal = BodyTooLarge(self.max_body_bytes)
                response = problem_response(413, refusal.detail, instance=scope["path"])
                await response(scope, receive, send_with_headers)
            else:
                await self.app(scope, self._limited(receive), send_with_headers)
        finally:
            self._observe(scope, status, time.perf_counter() - started, request_id, client_request_id)

    def _limited(self, receive: Receive) -> Receive:
        """Count body bytes as they arrive: a chunked body has no Content-Length to check up front."""
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        return limited_receive

    def _observe(
        self, scope: Scope, status: int, seconds: float, request_id: str, client_request_id: str | None
    ) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or UNMATCHED_ROUTE
        self.metrics.observe_request(method=scope["method"], route=template, status=status, seconds=seconds)
        if not self.access_log_enabled:
            return
        principal: Any = scope.get("state", {}).get("principal")
        client = scope.get("client")
        access_log.info(
            "request",
            extra={
                "request_id": request_id,
                "client_request_id": client_request_id,
                "method": scope["method"],
                "route": template,
                "status": status,
                "latency_ms": round(seconds * 1000, 3),
                "sub": getattr(principal, "subject", None),
                "jti": getattr(principal, "credential_id", None),
                "client": client[0] if client else None,
            },
        )


def _client_request_id(scope: Scope) -> str | None:
    """The caller's own X-Request-ID, for correlating with its logs, when short and plain enough to log."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _SAFE_REQUEST_ID.match(candidate) else None
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
