"""One notification to one hook: attempts, exponential backoff with jitter, and the verdict.

Network errors, 5xx and 429 are worth retrying (the receiver may come back; a 429's ``Retry-After`` is
honoured up to ``backoff_max_s``); any other 4xx means the receiver refuses this notification and retrying
would only repeat the refusal, so it is dead-lettered at once. Waits use the notifier's stop event, so a
shutdown never waits out a backoff; the notification is then neither delivered nor dead-lettered and the
alert, not yet committed, comes again after the restart.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import httpx

from security.alerts.model import Alert, level_rank
from security.hooks import payloads

log = logging.getLogger(__name__)

TEXT_ERROR_MAX_SIZE = 256
"""Receiver error text kept in logs and dead letters, at most: enough to diagnose, not a log flood."""


class AttemptError(Exception):
    """One attempt failed; ``retryable`` says whether another attempt could succeed."""

    def __init__(
        self, reason: str, *, retryable: bool, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason[:TEXT_ERROR_MAX_SIZE]
        self.retryable = retryable
        self.status = status
        self.retry_after_s = retry_after_s


class Interrupted(Exception):
    """The notifier is stopping: the notification was left undecided (neither delivered nor dead-lettered)."""


class Hook(Protocol):
    """A destination of notifications (webhook, Alertmanager, bus topic)."""

    name: str
    kind: str
    min_level: str
    tags: frozenset[str]
    max_attempts: int

    def send(self, alert: Alert, delivery: str) -> None:
        """One attempt; raises ``AttemptError`` when it did not succeed."""


def routes(hook: Hook, alert: Alert) -> bool:
    """Whether ``alert`` goes to ``hook``: its level reaches the hook's minimum, and, when the hook names tags,
    its rule carries at least one of them."""
    if level_rank(alert.level) < level_rank(hook.min_level):
        return False
    return not hook.tags or any(tag.lower() in hook.tags for tag in alert.rule.tags)


@dataclass(frozen=True)
class Outcome:
    hook: str
    kind: str
    delivery_id: str
    alert: Alert
    delivered: bool
    attempts: int
    reason: str | None = None
    status: int | None = None


@dataclass(frozen=True)
class Backoff:
    initial_s: float
    max_s: float

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Wait after failed ``attempt`` (1-based): doubling from ``initial_s``, half of it random ("equal
        jitter", so receivers recovering are not hit by every sender at once), at least the receiver's
        ``Retry-After``, never more than ``max_s``."""
        base = min(self.max_s, self.initial_s * 2 ** (attempt - 1))
        jittered = base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter, not a secret
        return min(self.max_s, max(jittered, retry_after_s or 0.0))


def deliver(
    hook: Hook, alert: Alert, *, backoff: Backoff, stop: threading.Event, max_attempts: int | None = None
) -> Outcome:
    """Send ``alert`` to ``hook`` until it succeeds, fails for good, or runs out of attempts."""
    delivery = payloads.delivery_id(alert, hook.name)
    limit = max_attempts or hook.max_attempts
    failure = AttemptError("no attempt made", retryable=False)
    for attempt in range(1, limit + 1):
        try:
            hook.send(alert, delivery)
        except AttemptError as exc:
            failure = exc
        else:
            return Outcome(hook.name, hook.kind, delivery, alert, delivered=True, attempts=attempt)
        if not failure.retryable or attempt == limit:
            verdict = "escalating" if failure.retryable else "not retryable"
            log.warning(
                "hook %s: attempt #%d/%d for alert %s failed; %s: %s",
                hook.name, attempt, limit, alert.id, verdict, failure.reason,
            )  # fmt: skip
            return Outcome(
                hook.name, hook.kind, delivery, alert, delivered=False, attempts=attempt,
                reason=failure.reason, status=failure.status,
            )  # fmt: skip
        delay = backoff.delay_s(attempt, failure.retry_after_s)
        log.info(
            "hook %s: attempt #%d/%d for alert %s failed; will retry in %.1f s: %s",
            hook.name, attempt, limit, alert.id, delay, failure.reason,
        )  # fmt: skip
        if stop.wait(delay):
            raise Interrupted(f"hook {hook.name}: stopped while retrying alert {alert.id}")
    raise AssertionError("unreachable: the last attempt returns")


def check_response(response: httpx.Response) -> None:
    """Raise the ``AttemptError`` an HTTP answer means; 2xx is success."""
    status = response.status_code
    if 200 <= status < 300:
        return
    text = response.text[:TEXT_ERROR_MAX_SIZE].strip()
    reason = f"HTTP {status}" + (f": {text}" if text else "")
    retryable = status == 429 or status >= 500
    retry_after = retry_after_s(response.headers.get("retry-after")) if retryable else None
    raise AttemptError(reason, retryable=retryable, status=status, retry_after_s=retry_after)


def post_json(client: httpx.Client, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> None:
    """POST ``body``; a transport error (refused, reset, timeout) is retryable, the answer is judged by
    ``check_response``."""
    try:
        response = client.post(
            url, content=body, headers={"Content-Type": "application/json", **headers}, timeout=timeout_s
        )
    except httpx.TransportError as exc:
        raise AttemptError(f"{exc.__class__.__name__}: {exc}", retryable=True) from exc
    check_response(response)


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110 section 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())
