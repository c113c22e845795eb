"""The three kinds of hook, built from ``hooks`` settings: signed webhooks, Alertmanager, a bus topic."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import orjson

from control_plane.core.bus import Bus, PublishError, RecordError
from control_plane.core.config import AlertmanagerHookSettings, HookSettings, WebhookSettings
from security.alerts.model import Alert
from security.hooks import payloads, signature
from security.hooks.delivery import AttemptError, Hook, post_json

ALERTMANAGER = "alertmanager"
TOPIC = "topic"


class WebhookHook:
    """POSTs the notification as JSON, signed with the webhook's secret (``security.hooks.signature``)."""

    kind = "webhook"

    def __init__(self, settings: WebhookSettings, *, client: httpx.Client, public_url: str) -> None:
        self.name = settings.name
        self.url = settings.url
        self.secret_file = settings.secret_file
        self.min_level: str = settings.min_level
        self.tags = frozenset(tag.lower() for tag in settings.tags)
        self.max_attempts = settings.max_attempts
        self.timeout_s = settings.timeout_s
        self._client = client
        self._public_url = public_url

    def send(self, alert: Alert, delivery: str) -> None:
        body = orjson.dumps(payloads.notification(alert, delivery=delivery, public_url=self._public_url))
        # Signed per attempt: a retry carries a fresh timestamp, so it is not refused as a replay.
        timestamp = int(time.time())
        headers = {
            "X-Refsys-Delivery": delivery,
            "X-Refsys-Timestamp": str(timestamp),
            "X-Refsys-Signature": signature.sign(read_secret(self.secret_file), timestamp, body),
        }
        post_json(self._client, self.url, body, headers, self.timeout_s)


class AlertmanagerHook:
    """POSTs the alert to Alertmanager's v2 API; Alertmanager deduplicates on the label set itself."""

    kind = "alertmanager"
    name = ALERTMANAGER

    def __init__(self, settings: AlertmanagerHookSettings, *, client: httpx.Client, public_url: str) -> None:
        assert settings.url is not None
        self.url = settings.url.rstrip("/") + "/api/v2/alerts"
        self.min_level: str = settings.min_level
        self.tags = frozenset(tag.lower() for tag in settings.tags)
        self.max_attempts = settings.max_attempts
        self.timeout_s = settings.timeout_s
        self.labels: Mapping[str, str] = settings.labels
        self._client = client
        self._public_url = public_url

    def send(self, alert: Alert, delivery: str) -> None:
        body = [payloads.alertmanager_alert(alert, public_url=self._public_url, extra_labels=self.labels)]
        post_json(self._client, self.url, orjson.dumps(body), {"X-Refsys-Delivery": delivery}, self.timeout_s)


class TopicHook:
    """Re-publishes the notification on a bus topic (a Kafka topic in production), keyed by alert id."""

    kind = "topic"
    name = TOPIC
    tags: frozenset[str] = frozenset()
    max_attempts = 5
    """A publish fails only while the bus is unreachable; past this the notification is dead-lettered."""

    def __init__(self, bus: Bus, topic: str, *, min_level: str, public_url: str) -> None:
        self.bus = bus
        self.topic = topic
        self.min_level = min_level
        self._public_url = public_url

    def send(self, alert: Alert, delivery: str) -> None:
        record = payloads.notification(alert, delivery=delivery, public_url=self._public_url)
        try:
            self.bus.publish(self.topic, alert.id, [record])
        except PublishError as exc:  # durability unknown: publish again (a duplicate is fine)
            raise AttemptError(f"publish to {self.topic} failed: {exc}", retryable=True) from exc
        except RecordError as exc:
            raise AttemptError(f"alert cannot be published: {exc}", retryable=False) from exc


def build_hooks(
    settings: HookSettings, *, client: httpx.Client, bus: Bus, public_url: str
) -> dict[str, Hook]:
    """Every configured hook by name."""
    hooks: dict[str, Hook] = {
        webhook.name: WebhookHook(webhook, client=client, public_url=public_url)
        for webhook in settings.webhooks
    }
    if settings.alertmanager.url:
        hooks[ALERTMANAGER] = AlertmanagerHook(settings.alertmanager, client=client, public_url=public_url)
    if settings.topic:
        hooks[TOPIC] = TopicHook(
            bus, settings.topic, min_level=settings.topic_min_level, public_url=public_url
        )
    return hooks


def read_secret(path: Path) -> bytes:
    """The webhook's key, read at each attempt so a rotated file takes effect without a restart. Errors name
    the file, never its content."""
    try:
        secret = path.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise AttemptError(f"secret file {path} unreadable: {exc.strerror}", retryable=False) from exc
    if not secret:
        raise AttemptError(f"secret file {path} is empty", retryable=False)
    return secret
