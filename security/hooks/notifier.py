"""The notifier: alerts from the ``alerts`` topic to every hook that routes them.

At-least-once: a polled batch is committed only once each of its notifications is delivered or dead-lettered;
a crash before that redelivers the batch, and the receivers deduplicate on the delivery id, which is stable
per (alert, hook). Deliveries of a batch run in parallel on ``hooks.workers`` threads, each bounded by its
hook's timeout and attempts, so a slow receiver delays the others by at most that much.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.engine import Engine

import control_plane
from control_plane.core.audit.trail import Actor, AuditTrail
from control_plane.core.bus import Bus, Consumer, topics
from control_plane.core.config import Settings
from security.alerts.model import Alert, decode
from security.hooks.dead_letters import HookDeadLetters
from security.hooks.delivery import AttemptError, Backoff, Hook, Interrupted, Outcome, deliver, routes
from security.hooks.duplicates import DuplicateFilter
from security.hooks.targets import WebhookHook, build_hooks, read_secret

log = logging.getLogger(__name__)

NOTIFIER_GROUP = "notifier"
POLL_RECORDS = 100
"""Alerts per batch: small, because the batch is committed only when its slowest delivery has ended."""
POLL_TIMEOUT_S = 0.5
ERROR_BACKOFF_S = 2.0
SYSTEM = Actor(subject="refsys")


class Notifier:
    def __init__(
        self, *, settings: Settings, engine: Engine, bus: Bus, audit: AuditTrail, registry: CollectorRegistry
    ) -> None:
        hooks = settings.hooks
        self.bus = bus
        self.audit = audit
        self.dead_letters = HookDeadLetters(engine)
        self.backoff = Backoff(initial_s=hooks.backoff_initial_s, max_s=hooks.backoff_max_s)
        self.duplicates = DuplicateFilter(default_window_s=settings.alerts.suppression_window_s)
        public_url = hooks.public_url or f"http://{settings.server.host}:{settings.server.port}"
        self._client = httpx.Client(
            follow_redirects=False,  # a redirected webhook is a configuration error to see, not to follow
            headers={"User-Agent": f"refsys/{control_plane.__version__}"},
        )
        self.hooks: dict[str, Hook] = build_hooks(hooks, client=self._client, bus=bus, public_url=public_url)
        self._pool = ThreadPoolExecutor(max_workers=hooks.workers, thread_name_prefix="refsys-hook")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._delivered = Counter(
            "refsys_hook_delivered", "Notifications delivered, per hook.", ["hook"], registry=registry
        )
        self._failed = Counter(
            "refsys_hook_failed", "Notifications that failed all their attempts, per hook.", ["hook"],
            registry=registry,
        )  # fmt: skip
        self._dead_lettered = Counter(
            "refsys_hook_dead_lettered", "Notifications stored as dead letters, per hook.", ["hook"],
            registry=registry,
        )  # fmt: skip
        self._suppressed = Counter(
            "refsys_hook_duplicates_suppressed",
            "Alerts not notified because they repeat one already notified (same rule and group key within its "
            "suppression window).",
            registry=registry,
        )
        for name in self.hooks:
            for counter in (self._delivered, self._failed, self._dead_lettered):
                counter.labels(hook=name)  # export zeros, so a rate() query works before the first alert

    def notify(self, alerts: Sequence[Alert]) -> list[Outcome]:
        """Deliver ``alerts`` to the hooks that route them, in parallel; dead-letter what fails. Returns when
        every notification is decided. Duplicates of alerts already notified are skipped. Raises ``Interrupted``
        when stopped meanwhile."""
        fresh = [alert for alert in alerts if not self.duplicates.is_duplicate(alert)]
        self._suppressed.inc(len(alerts) - len(fresh))
        futures = [
            self._pool.submit(deliver, hook, alert, backoff=self.backoff, stop=self._stop)
            for alert in fresh
            for hook in self.hooks.values()
            if routes(hook, alert)
        ]
        outcomes = [future.result() for future in futures]
        for outcome in outcomes:
            self._settle(outcome)
        return outcomes

    def redeliver(self, dead_letter_id: str, actor: Actor) -> Outcome | None:
        """One attempt at a dead-lettered notification, for an operator; None if the dead letter is unknown.
        Raises ``KeyError`` when its hook is no longer configured."""
        stored = self.dead_letters.get(dead_letter_id)
        if stored is None:
            return None
        hook = self.hooks.get(stored["hook"])
        if hook is None:
            raise KeyError(stored["hook"])
        alert = Alert.from_record(stored["alert"])
        outcome = deliver(hook, alert, backoff=self.backoff, stop=self._stop, max_attempts=1)
        if outcome.delivered:
            self._delivered.labels(hook=hook.name).inc()
            self.dead_letters.redelivered(dead_letter_id, by=actor.subject)
        else:
            self.dead_letters.failed_again(dead_letter_id, outcome)
        self.audit.append(
            actor=actor,
            action="hook.dead_letter.retry",
            outcome="success" if outcome.delivered else "failure",
            target=f"hook:{hook.name}",
            details={"dead_letter_id": dead_letter_id, "delivery_id": outcome.delivery_id, "alert_id": alert.id,
                     "reason": outcome.reason},
        )  # fmt: skip
        return outcome

    def run_once(self, timeout_s: float = POLL_TIMEOUT_S) -> int:
        """Notify one polled batch and commit it; returns how many records it held."""
        assert self._consumer is not None, "start() first"
        records = self._consumer.poll(max_records=POLL_RECORDS, timeout_s=timeout_s)
        if not records:
            return 0
        alerts = decode(records, "notifier")
        # Retry the same batch here rather than poll on: an uncommitted batch is redelivered only after a
        # restart or a rebalance, and skipping it meanwhile would lose notifications until then.
        while True:
            try:
                self.notify(alerts)
                break
            except Interrupted:
                return 0
            except Exception as exc:
                log.warning("notifier: %s; retrying the batch in %.0f s", exc, ERROR_BACKOFF_S)
                if self._stop.wait(ERROR_BACKOFF_S):
                    return 0
        self._consumer.commit(records)
        return len(records)

    def start(self) -> None:
        """Consume the ``alerts`` topic in the background; without hooks there is nothing to do (and no group
        holding the topic's retention back)."""
        if not self.hooks:
            return
        for hook in self.hooks.values():
            if isinstance(hook, WebhookHook):
                # Said at start-up rather than first at the first alert; its deliveries would be dead-lettered.
                try:
                    read_secret(hook.secret_file)
                except AttemptError as exc:
                    log.warning("hook %s: %s; its notifications will be dead-lettered", hook.name, exc.reason)
        self._consumer = self.bus.consumer(topics.ALERTS, NOTIFIER_GROUP)
        self._thread = threading.Thread(target=self._run, name="refsys-notifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop waiting between attempts, leave the group, release the workers. Notifications left undecided
        come again with their uncommitted alerts after the restart."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self._consumer is not None:
            self._consumer.close()
        self._pool.shutdown(wait=True)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # a bus hiccup must not end notifying: back off, then retry
                log.warning("notifier: %s; retrying in %.0f s", exc, ERROR_BACKOFF_S)
                self._stop.wait(ERROR_BACKOFF_S)

    def _settle(self, outcome: Outcome) -> None:
        if outcome.delivered:
            self._delivered.labels(hook=outcome.hook).inc()
            return
        self._failed.labels(hook=outcome.hook).inc()
        dead_letter_id = self.dead_letters.add(outcome)
        self._dead_lettered.labels(hook=outcome.hook).inc()
        self.audit.append(
            actor=SYSTEM,
            action="hook.dead_letter",
            outcome="failure",
            target=f"hook:{outcome.hook}",
            details={"dead_letter_id": dead_letter_id, "delivery_id": outcome.delivery_id,
                     "alert_id": outcome.alert.id, "attempts": outcome.attempts, "reason": outcome.reason},
        )  # fmt: skip
