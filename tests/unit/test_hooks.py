"""Alert hooks without services: the signature scheme, deterministic delivery ids, backoff, the retry decision
per HTTP answer, routing by level and tags, Alertmanager labels, and the settings' refusals."""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import uuid
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from control_plane.core import clock
from control_plane.core.config import Settings
from security.alerts.model import Alert, AlertEvent, AlertRule
from security.hooks import payloads, signature
from security.hooks.delivery import (
    AttemptError,
    Backoff,
    Interrupted,
    check_response,
    deliver,
    retry_after_s,
    routes,
)
from security.hooks.duplicates import DuplicateFilter

FIRST = "2026-11-25T10:00:00.250000Z"


def _alert(alert_id: str = "a-1", *, level: str = "high", tags: tuple[str, ...] = ()) -> Alert:
    return Alert(
        id=alert_id,
        kind="correlation",
        rule=AlertRule(id="r-1", title="Brute force", level=level, tags=tags),
        first=FIRST,
        last=FIRST,
        detected_at=FIRST,
        events=(AlertEvent(id="e-1", timestamp=FIRST, dataset="keycloak.event"),),
        group={"source.ip": "10.0.0.9"},
        entities={"host": ["kc-1"], "source_ip": ["10.0.0.9"]},
        metric=12.0,
    )


class _Hook:
    """A hook whose attempts fail as scripted, then succeed."""

    kind = "webhook"
    tags: frozenset[str] = frozenset()

    def __init__(
        self, failures: list[AttemptError], *, min_level: str = "low", max_attempts: int = 3
    ) -> None:
        self.name = "fake"
        self.min_level = min_level
        self.max_attempts = max_attempts
        self.failures = failures
        self.calls: list[str] = []

    def send(self, alert: Alert, delivery: str) -> None:
        self.calls.append(delivery)
        if self.failures:
            raise self.failures.pop(0)


class TestSignature:
    def test_a_signature_verifies_within_the_tolerance_only(self) -> None:
        body = b'{"delivery_id": "x"}'
        signed = signature.sign(b"key", 1_700_000_000, body)
        assert signed.startswith("sha256=") and len(signed) == len("sha256=") + 64
        assert signature.verify(b"key", "1700000000", body, signed, now=1_700_000_100)
        assert not signature.verify(b"key", "1700000000", body, signed, now=1_700_000_301)  # a replay
        assert not signature.verify(b"key", "1700000000", body, signed, now=1_699_999_699)  # from the future
        assert signature.verify(b"key", "1700000000", body, signed, 10, now=1_700_000_010)

    @pytest.mark.parametrize(
        "secret, timestamp, body, sig",
        [
            (b"other", "1700000000", b"{}", None),  # wrong key
            (b"key", "1700000001", b"{}", None),  # timestamp changed after signing
            (b"key", "1700000000", b"{} ", None),  # body changed
            (b"key", "not a number", b"{}", None),
            (b"key", "1700000000", b"{}", "sha1=00"),
        ],
    )
    def test_anything_changed_fails(
        self, secret: bytes, timestamp: str, body: bytes, sig: str | None
    ) -> None:
        good = signature.sign(b"key", 1_700_000_000, b"{}")
        assert not signature.verify(secret, timestamp, body, sig or good, now=1_700_000_000)

    def test_the_message_is_timestamp_dot_body(self) -> None:
        expected = hmac.new(b"k", b"42.hello", hashlib.sha256).hexdigest()
        assert signature.sign(b"k", 42, b"hello") == f"sha256={expected}"


class TestDeliveryId:
    def test_stable_per_alert_and_hook_and_a_uuid7_of_the_first_event_time(self) -> None:
        first = payloads.delivery_id(_alert(), "soc")
        assert first == payloads.delivery_id(_alert(), "soc")
        assert first != payloads.delivery_id(_alert(), "other")
        assert first != payloads.delivery_id(_alert("a-2"), "soc")
        parsed = uuid.UUID(first)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        millis = parsed.int >> 80
        assert millis == int(clock.parse_rfc3339(FIRST).timestamp() * 1000)


class TestRetries:
    def test_backoff_doubles_with_jitter_honours_retry_after_and_is_capped(self) -> None:
        backoff = Backoff(initial_s=1.0, max_s=10.0)
        for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)]:
            delay = backoff.delay_s(attempt)
            assert base / 2 <= delay <= base
        assert backoff.delay_s(1, retry_after_s=7) == 7
        assert backoff.delay_s(1, retry_after_s=3600) == 10

    @pytest.mark.parametrize(
        "status, retryable",
        [(500, True), (503, True), (429, True), (400, False), (401, False), (404, False), (410, False),
         (302, False)],
    )  # fmt: skip
    def test_which_answers_are_retried(self, status: int, retryable: bool) -> None:
        with pytest.raises(AttemptError) as failure:
            check_response(httpx.Response(status, text="nope", headers={"Retry-After": "3"}))
        assert failure.value.retryable is retryable
        assert failure.value.status == status
        assert failure.value.reason == f"HTTP {status}: nope"
        assert failure.value.retry_after_s == (3.0 if retryable else None)
        check_response(httpx.Response(204))

    def test_retry_after_as_seconds_or_http_date(self) -> None:
        assert retry_after_s("120") == 120
        later = clock.utcnow().replace(microsecond=0) + timedelta(seconds=60)
        assert 50 <= (retry_after_s(format_datetime(later, usegmt=True)) or 0) <= 60
        assert retry_after_s("soon") is None
        assert retry_after_s(None) is None

    def test_retried_until_delivered_with_one_delivery_id(self, caplog: pytest.LogCaptureFixture) -> None:
        hook = _Hook([AttemptError("HTTP 500", retryable=True), AttemptError("HTTP 503", retryable=True)])
        with caplog.at_level(logging.INFO, logger="security.hooks.delivery"):
            outcome = deliver(hook, _alert(), backoff=Backoff(0.001, 0.002), stop=threading.Event())
        assert (outcome.delivered, outcome.attempts) == (True, 3)
        assert len(set(hook.calls)) == 1 and outcome.delivery_id == hook.calls[0]
        assert "attempt #1/3 for alert a-1 failed; will retry" in caplog.text
        assert "attempt #2/3 for alert a-1 failed; will retry" in caplog.text

    def test_out_of_attempts_or_refused_is_a_failure(self, caplog: pytest.LogCaptureFixture) -> None:
        always = _Hook([AttemptError("HTTP 500", retryable=True, status=500)] * 5, max_attempts=2)
        outcome = deliver(always, _alert(), backoff=Backoff(0.001, 0.002), stop=threading.Event())
        assert (outcome.delivered, outcome.attempts, outcome.status, outcome.reason) == (
            False,
            2,
            500,
            "HTTP 500",
        )
        assert "attempt #2/2 for alert a-1 failed; escalating" in caplog.text
        refused = _Hook([AttemptError("HTTP 400", retryable=False, status=400)])
        outcome = deliver(refused, _alert(), backoff=Backoff(0.001, 0.002), stop=threading.Event())
        assert (outcome.delivered, outcome.attempts) == (False, 1)
        assert "not retryable" in caplog.text

    def test_a_stop_interrupts_the_backoff_and_decides_nothing(self) -> None:
        stop = threading.Event()
        stop.set()
        hook = _Hook([AttemptError("HTTP 500", retryable=True)])
        with pytest.raises(Interrupted):
            deliver(hook, _alert(), backoff=Backoff(60, 60), stop=stop)


class TestRouting:
    @pytest.mark.parametrize(
        "level, min_level, hook_tags, rule_tags, routed",
        [
            ("high", "high", (), (), True),  # at the minimum
            ("medium", "high", (), (), False),  # below it
            ("critical", "informational", (), (), True),
            ("bogus", "low", (), (), False),  # an unknown level counts as informational
            ("high", "low", ("attack.t1110",), ("attack.T1110", "attack.credential-access"), True),  # any-of
            ("high", "low", ("attack.t1110",), ("attack.t1059",), False),
            ("high", "low", ("attack.t1110",), (), False),
        ],
    )
    def test_level_then_tags(
        self, level: str, min_level: str, hook_tags: tuple[str, ...], rule_tags: tuple[str, ...], routed: bool
    ) -> None:
        hook = _Hook([], min_level=min_level)
        hook.tags = frozenset(hook_tags)
        assert routes(hook, _alert(level=level, tags=rule_tags)) is routed


def test_alertmanager_alert_labels_and_annotations() -> None:
    alert = _alert(tags=("attack.t1110.001", "attack.t1078"))
    sent = payloads.alertmanager_alert(
        alert, public_url="https://refsys.example/", extra_labels={"cluster": "prod", "alertname": "spoof"}
    )
    assert sent["labels"] == {
        "alertname": "Brute force",
        "rule_id": "r-1",
        "severity": "high",
        "refsys_alert_id": "a-1",
        "kind": "correlation",
        "techniques": "T1110.001,T1078",
        "host": "kc-1",
        "source_ip": "10.0.0.9",
        "group_source_ip": "10.0.0.9",
        "cluster": "prod",
    }
    assert sent["annotations"] == {
        "summary": "Brute force (high): host=kc-1; source_ip=10.0.0.9",
        "description": "Brute force",
        "event_ids": "e-1",
        "metric": "12.0",
    }
    assert sent["startsAt"] == FIRST
    assert sent["generatorURL"] == "https://refsys.example/api/v1/alerts/a-1"
    assert payloads.label_name("9.bad-name") == "_9_bad_name"


def test_notification_body_carries_alert_rule_and_matched_fields() -> None:
    body: dict[str, Any] = payloads.notification(
        _alert(tags=("attack.t1110",)), delivery="d", public_url="http://x"
    )
    assert body["delivery_id"] == "d"
    assert body["alert"]["id"] == "a-1" and body["rule"]["techniques"] == ["T1110"]
    assert body["events"] == [{"id": "e-1", "timestamp": FIRST, "dataset": "keycloak.event", "fields": {}}]


@pytest.mark.parametrize(
    "hooks, message",
    [
        ({"topic": "alerts"}, "one of refsys's own topics"),
        ({"topic": "bad topic"}, "invalid topic name"),
        ({"webhooks": [{"name": "alertmanager", "url": "http://x", "secret_file": "/k"}]}, "reserved"),
        ({"webhooks": [{"name": "a", "url": "http://x", "secret_file": "/k"}] * 2}, "unique"),
        ({"webhooks": [{"name": "a", "url": "ftp://x", "secret_file": "/k"}]}, "pattern"),
        ({"alertmanager": {"url": "http://am", "min_level": "severe"}}, "informational"),
    ],
)
def test_settings_refuse_what_cannot_work(hooks: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(hooks=hooks)


def _repeat(alert_id: str, seconds: float, *, ip: str = "10.0.0.9", window: str | None = None) -> Alert:
    first = clock.rfc3339(clock.parse_rfc3339(FIRST) + timedelta(seconds=seconds))
    rule = AlertRule(id="r-1", title="Brute force", suppression={"window": window} if window else {})
    return Alert(
        id=alert_id, kind="correlation", rule=rule, first=first, last=first, detected_at=first,
        group={"source.ip": ip},
    )  # fmt: skip


def test_duplicates_are_notified_once_per_suppression_window() -> None:
    seen = DuplicateFilter(default_window_s=300)
    assert not seen.is_duplicate(_repeat("d-1", 0))
    assert seen.is_duplicate(_repeat("d-2", 60))  # same rule and group within 5 min
    assert seen.is_duplicate(_repeat("d-3", 300))  # the window's edge is inside
    assert not seen.is_duplicate(_repeat("d-1", 0))  # the series' own alert, replayed: notified again
    assert not seen.is_duplicate(_repeat("d-4", 60, ip="10.0.0.10"))  # another group
    assert not seen.is_duplicate(_repeat("d-5", 301))  # past the window: a new series
    assert seen.is_duplicate(_repeat("d-6", 500))
    ruled = DuplicateFilter(default_window_s=300)
    assert not ruled.is_duplicate(_repeat("w-1", 0, window="10m"))
    assert ruled.is_duplicate(_repeat("w-2", 599, window="10m"))  # the rule's own window wins
    bounded = DuplicateFilter(default_window_s=300, max_series=2)
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        assert not bounded.is_duplicate(_repeat(f"b-{ip}", 0, ip=ip))
    assert not bounded.is_duplicate(_repeat("b-again", 1, ip="10.0.0.1"))  # forgotten: notified, never lost
