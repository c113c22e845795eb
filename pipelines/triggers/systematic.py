"""Systematic production: each ``product.available`` event starts (or feeds) the runs of the chains that consume
its product type.

A chain with one input starts one run per product. A chain that needs more (several types, or several products
of a type) gets one run that waits for its inputs: the first product opens it (``waiting-inputs``), later ones
are added to the open run until it is complete or its wait policy runs out (the engine decides which).

Delivery is at-least-once (the consumer commits after acting), so every action is idempotent: a run is opened
with an idempotency key derived from (chain, product), and adding a product a run already holds changes nothing.
Reprocessing outputs start nothing: a campaign reprocesses what it names, and its products must not fan out into
systematic production (nor count twice in duplicate detection).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine as DbEngine

from control_plane.core.audit.trail import Actor
from control_plane.core.bus import Bus, BusError, Consumer, Record, topics
from control_plane.core.clock import parse_rfc3339
from pipelines import tables
from pipelines.engine import Engine, RunRequest
from pipelines.registry import ChainRegistry
from pipelines.spec import ChainSpec

log = logging.getLogger(__name__)

GROUP = "production-triggers"
"""Consumer group of the systematic trigger on ``product.available``."""
ACTOR = Actor(subject="refsys:trigger:systematic")
ERROR_BACKOFF_S = 2.0
MAX_ATTEMPTS = 4
"""Times one event is tried before it goes to the parking lot: a poison message never loops a worker."""
RETRY_BACKOFF_S = 0.1


def needs_one_product(chain: ChainSpec) -> bool:
    return len(chain.inputs) == 1 and chain.inputs[0].count == 1


class SystematicTrigger:
    """Reads ``product.available`` and hands each product to the engine, for every chain that consumes it."""

    def __init__(self, *, bus: Bus, db: DbEngine, registry: ChainRegistry, engine: Engine) -> None:
        self.bus = bus
        self.db = db
        self.registry = registry
        self.engine = engine
        self._consumer: Consumer | None = None
        """Joined on first use: a trigger that is built but never run holds no partitions of the group."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def handle(self, product: Mapping[str, Any]) -> list[str]:
        """Act on one product event; returns the ids of the runs it started or fed."""
        if product.get("reprocessing"):
            return []
        touched: list[str] = []
        for chain in self.registry.consumers_of(str(product.get("product_type"))):
            if not any(spec.accepts(product) for spec in chain.inputs):
                continue
            touched.append(self._feed(chain, product))
        return touched

    def _feed(self, chain: ChainSpec, product: Mapping[str, Any]) -> str:
        product_id = str(product["product_id"])
        if not needs_one_product(chain):
            waiting = self._open_run(chain)
            if waiting is not None:
                self.engine.add_input(waiting, product_id)
                return waiting
        run_id, _created = self.engine.submit(
            RunRequest(
                chain_id=chain.id,
                chain_version=chain.version,
                inputs=[product_id],
                trigger="systematic",
                idempotency_key=f"systematic:{chain.key}:{product_id}",
                t0=_time(product.get("published_at")),
            ),
            ACTOR,
        )
        return run_id

    def _open_run(self, chain: ChainSpec) -> str | None:
        """The oldest run of ``chain`` still waiting for inputs, if any."""
        runs = tables.runs
        with self.db.connect() as connection:
            return connection.execute(
                sa.select(runs.c.id)
                .where(
                    runs.c.chain_id == chain.id,
                    runs.c.chain_version == chain.version,
                    runs.c.state == "waiting-inputs",
                    runs.c.trigger == "systematic",
                )
                .order_by(runs.c.created_at)
                .limit(1)
            ).scalar_one_or_none()

    def run_once(self, timeout_s: float = 0.5) -> int:
        """Handle one polled batch, then commit it; returns how many events it held.

        An event the trigger cannot act on (malformed, or refused by the engine) is tried ``MAX_ATTEMPTS`` times,
        then parked on the ``parking-lot`` topic with the reason, and the trigger moves on: a poison message
        never loops a worker. When the database or the bus fails instead, nothing after the last handled event
        is committed and the consumer rejoins, so those events come again once the outage is over.
        """
        consumer = self._consumer or self._join()
        records = consumer.poll(max_records=100, timeout_s=timeout_s)
        done: list[Record] = []
        try:
            for record in records:
                self._handle_or_park(record)
                done.append(record)
        except (sa.exc.DBAPIError, BusError):
            self._leave()  # the next poll rejoins at the group's committed offsets
            raise
        finally:
            if done and self._consumer is not None:
                self._consumer.commit(done)
        return len(records)

    def _handle_or_park(self, record: Record) -> None:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                if not isinstance(record.value.get("product_id"), str):
                    raise ValueError("product.available event without a product_id")
                self.handle(record.value)
                return
            except (sa.exc.DBAPIError, BusError):
                raise
            except Exception as exc:
                if attempt < MAX_ATTEMPTS:
                    self._stop.wait(RETRY_BACKOFF_S * 2 ** (attempt - 1))
                    continue
                log.error("systematic trigger: parking a product event after %d attempts: %s", attempt, exc)
                self.bus.publish(
                    topics.PARKING_LOT,
                    "systematic-trigger",
                    [{"kind": "product-event", "reason": str(exc)[:1024], "event": dict(record.value)}],
                )

    def _join(self) -> Consumer:
        self._consumer = self.bus.consumer(topics.PRODUCT_AVAILABLE, GROUP)
        return self._consumer

    def _leave(self) -> None:
        """Drop the consumer (it does not rewind by itself); joining again starts at the committed offsets."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="refsys-systematic-trigger", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._leave()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # a database hiccup must not end production triggering
                log.warning("systematic trigger: %s; retrying in %.0f s", exc, ERROR_BACKOFF_S)
                self._stop.wait(ERROR_BACKOFF_S)


def _time(value: Any) -> datetime | None:
    try:
        return parse_rfc3339(value) if isinstance(value, str) else None
    except ValueError:
        return None
