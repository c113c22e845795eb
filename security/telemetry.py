"""The security domain's running parts, composed from the kernel's services by the app and the CLI.

``Telemetry`` owns the event store, the intake, the store indexer, source health and the shippers of the control
plane's own audit trail and access log, and one upkeep thread that flushes health counters, turns silence into
events and ships the control plane's records.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from control_plane.core import clock
from control_plane.core.bus import Bus, topics
from control_plane.core.config import Settings
from security import ecs
from security.intake.access_shipper import AccessLogShipper
from security.intake.audit_shipper import AuditShipper
from security.intake.dead_letters import DeadLetters
from security.intake.health import SilenceChange, SourceHealthTracker
from security.intake.identity import derived_event_id
from security.intake.indexer import StoreIndexer
from security.intake.service import Intake
from security.sources.wazuh_api import AgentInventory, WazuhApiClient, WazuhApiSettings
from security.store import EventStore, open_store

UPKEEP_INTERVAL_S = 5.0
HEALTH_DATASET = "refsys.health"
log = logging.getLogger(__name__)


class Telemetry:
    def __init__(self, *, settings: Settings, engine: Engine, bus: Bus, registry: CollectorRegistry) -> None:
        self.bus = bus
        self.store: EventStore = open_event_store(settings)
        self.dead_letters = DeadLetters(engine)
        self.health = SourceHealthTracker(engine, declared=settings.telemetry.heartbeats, registry=registry)
        self.intake = Intake(
            bus=bus, dead_letters=self.dead_letters, health=self.health, settings=settings.telemetry,
            registry=registry, enrichers=enrichers(settings),
        )  # fmt: skip
        self.indexer = StoreIndexer(
            bus=bus, store=self.store, registry=registry, on_drain_rate=self._drain_rate
        )
        self.audit_shipper = AuditShipper(engine, bus)
        self.access_shipper = AccessLogShipper(bus, registry)
        self._stop = threading.Event()
        self._upkeep: threading.Thread | None = None

    def start(self) -> None:
        """Index in the background and keep health and the audit feed current."""
        self.access_shipper.attach()
        self.indexer.start()
        self._upkeep = threading.Thread(target=self._run_upkeep, name="refsys-telemetry-upkeep", daemon=True)
        self._upkeep.start()

    def stop(self) -> None:
        self._stop.set()
        if self._upkeep is not None:
            self._upkeep.join(timeout=30)
        self.access_shipper.detach()
        self.upkeep()
        self.indexer.stop()
        self.store.close()

    def upkeep(self) -> None:
        """One round: flush health counters, publish silence changes, ship new audit records and access log."""
        self.health.flush()
        changes = self.health.check_silence()
        if changes:
            self.bus.publish(topics.TELEMETRY, "refsys:health", [silence_event(change) for change in changes])
        self.audit_shipper.ship()
        self.access_shipper.ship()

    def _run_upkeep(self) -> None:
        while not self._stop.wait(UPKEEP_INTERVAL_S):
            try:
                self.upkeep()
            except Exception:  # a database hiccup must not end upkeep; the next round retries
                log.exception("telemetry upkeep failed; retrying")

    def _drain_rate(self, rate_per_s: float) -> None:
        self.intake.drain_rate_per_s = rate_per_s


def enrichers(settings: Settings) -> dict[str, Callable[[dict[str, Any]], Any]]:
    """Per-source enrichment configured in settings: Wazuh alerts get their agent's inventory."""
    wazuh = settings.telemetry.wazuh_api
    if not wazuh.url:
        return {}
    client = WazuhApiClient(
        WazuhApiSettings(
            url=wazuh.url, username=wazuh.username or "", password=wazuh.password or "",
            ca_bundle=wazuh.ca_file, insecure_skip_tls_verify=wazuh.insecure_skip_tls_verify,
        )
    )  # fmt: skip
    return {"wazuh": AgentInventory(client, ttl_s=wazuh.inventory_ttl_s).enrich}


def open_event_store(settings: Settings) -> EventStore:
    """The configured event store: the embedded SQLite file, or an OpenSearch cluster."""
    if settings.store.backend == "opensearch":
        search = settings.store.opensearch
        return open_store(
            "opensearch", hosts=search.hosts, username=search.username, password=search.password,
            ca_file=search.ca_file, verify_certs=search.verify_certs, index_prefix=search.index_prefix,
        )  # fmt: skip
    return open_store("sqlite", path=settings.store_path)


def silence_event(change: SilenceChange) -> dict[str, Any]:
    """A ``source-silent`` (or ``source-resumed``) event, identified by the silence it reports so that a
    replayed upkeep round cannot store it twice."""
    action = "source-silent" if change.silent else "source-resumed"
    last_seen = clock.rfc3339(change.last_seen)
    doc: dict[str, Any] = {"@timestamp": clock.rfc3339(clock.utcnow())}
    for path, value in (
        ("event.id", derived_event_id("refsys", f"{action}|{change.source}|{change.observer}|{last_seen}", 0)),
        ("event.kind", "alert" if change.silent else "event"),
        ("event.category", ["configuration"]),
        ("event.type", ["info"]),
        ("event.action", action),
        ("event.module", "refsys"),
        ("event.dataset", HEALTH_DATASET),
        ("event.severity", 5 if change.silent else 1),
        ("observer.name", change.observer),
        ("observer.product", change.source),
        ("refsys.source.name", change.source),
        ("refsys.source.observer", change.observer),
        ("refsys.source.last_seen", last_seen),
        ("refsys.source.expected_heartbeat_s", change.expected_heartbeat_s),
        ("message", f"telemetry source {change.source} ({change.observer}) "
                    f"{'silent' if change.silent else 'speaking again'}; last seen {last_seen}"),
    ):  # fmt: skip
        ecs.put(doc, path, value)
    return doc
