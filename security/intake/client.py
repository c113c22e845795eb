"""The sending side of the intake, for ``refsys ingest --url`` and ``refsys collect``: polite, persistent.

A batch is retried until the server acknowledges it: after a refused connection or a 5xx with exponential
backoff and jitter, after a 429 exactly as long as ``Retry-After`` says. Retrying is safe because every batch
carries its file slice, from which the server derives the same event ids again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import httpx

from security.intake.framing import gzip_bytes
from security.intake.identity import FileSlice

log = logging.getLogger(__name__)

BACKOFFS_S = (0.5, 1, 2, 4, 8, 15, 30)
"""Waits between attempts after a failure; the last one repeats."""
REQUEST_TIMEOUT_S = 60.0


class IngestRefused(Exception):
    """The server refused the batch for good (4xx other than 429): retrying would not help."""


class IngestClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        max_attempts: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``max_attempts`` None retries for ever (a collector); a number bounds it (``refsys ingest``)."""
        self.base = url.rstrip("/")
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.http = httpx.Client(
            timeout=REQUEST_TIMEOUT_S, transport=transport, headers={"Authorization": f"Bearer {token}"}
        )

    def send(
        self, source: str, data: bytes, origin: FileSlice, *, heartbeat_s: int | None = None
    ) -> dict[str, Any]:
        """Deliver one batch and return the server's summary; raises ``IngestRefused`` or, once
        ``max_attempts`` are spent, the last transport error."""
        headers = {
            "Content-Encoding": "gzip",
            "Refsys-File-Slice": origin.header(),
            "Content-Type": "application/x-ndjson",
        }
        if heartbeat_s:
            headers["Refsys-Heartbeat"] = str(heartbeat_s)
        body = gzip_bytes(data)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.http.post(
                    f"{self.base}/api/v1/ingest/{source}", content=body, headers=headers
                )
            except httpx.TransportError as exc:
                self._wait_or_raise(attempt, exc, f"cannot reach {self.base}: {exc.__class__.__name__}")
                continue
            if response.status_code == 202:
                summary: dict[str, Any] = response.json()
                return summary
            if response.status_code == 429:
                delay = _retry_after(response)
                log.info("server busy; retrying batch at %s in %.0f s", origin.header(), delay)
                self.sleep(delay)
                continue
            if response.status_code >= 500:
                self._wait_or_raise(attempt, None, f"server error {response.status_code}")
                continue
            raise IngestRefused(f"{response.status_code}: {_detail(response)}")

    def _wait_or_raise(self, attempt: int, error: Exception | None, what: str) -> None:
        if self.max_attempts is not None and attempt >= self.max_attempts:
            if error is not None:
                raise error
            raise IngestRefused(f"{what} after {attempt} attempts")
        delay = BACKOFFS_S[min(attempt - 1, len(BACKOFFS_S) - 1)] * random.uniform(0.8, 1.2)  # noqa: S311 - jitter
        log.warning("attempt #%d failed (%s); will retry in %.1f s", attempt, what, delay)
        self.sleep(delay)

    def close(self) -> None:
        self.http.close()


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.5, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text[:200]
