"""The catalog: registers products (run outputs and external arrivals), scans them, and announces them.

Registering a file: copy it into storage while hashing it (SHA-256 and size measured on the way), scan the copy
with clamd when a scanner is configured, move it into its area (``products/``, ``quarantine/`` or ``held/``),
insert the ``products`` row, then announce it: ``product.available`` for a clean product, a security event for
an infected one.

Idempotence: a product's id is derived from its identity (run, step and file for a run output; mission, type
and name for an external product), and so is every storage key it uses. Registering the same output again finds
the row; a control plane that crashed between the copy and the row insert copies again onto the same keys and
inserts then, leaving no orphan; two registrations racing each other collide on the primary key and the loser
returns the winner's row. A registration that finds its product already published announces it again
(at-least-once: the crash may have come before the announcement), so consumers of ``product.available`` must be
idempotent, as every sink on the bus is.

Infected products (state ``quarantined``) stay in the storage's ``quarantine/`` area for forensics, are never
listed as downloadable, never announced on ``product.available``, and raise an ECS alert (dataset
``refsys.scanner``) on the telemetry topic plus an audit record.

When clamd cannot be reached (or times out, or answers an error), the product is held as ``unscanned`` in
``held/``, is not distributed nor announced, and an error is logged and audited (``product.hold``). What an
operator does then: make clamd answer again (``clamdscan --ping 1`` or a ``PING`` on the configured
``production.scanner.clamd_socket``; check the socket path, the daemon, its database), then
``POST /api/v1/products/rescan`` (role operator), which calls ``Catalog.rescan_held``: every held product is
scanned again and the clean ones are published and announced, so downstream chains start late rather than never.
Re-publishing the same step's outputs rescans them too.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError
from sqlalchemy.engine import Engine

from control_plane.core import clock
from control_plane.core.audit.trail import Actor, AuditTrail
from control_plane.core.bus import Bus, topics
from control_plane.core.config import Settings
from pipelines.catalog import events
from pipelines.catalog.quotas import DownloadQuota
from pipelines.catalog.retention import Retention
from pipelines.catalog.scanner import ClamdScanner, Scanner, ScannerError, Verdict
from pipelines.catalog.search import ProductFilter, ProductPage, search_products
from pipelines.catalog.storage import LocalStorage, Storage
from pipelines.spec import OutputSpec
from pipelines.tables import products

log = logging.getLogger(__name__)

PUBLISHED, QUARANTINED, UNSCANNED, EVICTED = "published", "quarantined", "unscanned", "evicted"
STATES = (PUBLISHED, QUARANTINED, UNSCANNED, EVICTED)
AREAS = {PUBLISHED: "products", QUARANTINED: "quarantine", UNSCANNED: "held"}
"""Storage area of each state's files; ``incoming/`` holds copies not yet scanned."""
MANIFEST = "manifest.json"
CATALOG_ACTOR = Actor(subject="refsys:catalog")
_ID_NAMESPACE = uuid.UUID("6f1d3c52-8a0e-4d55-9b1e-2a7c4e9f0b31")


class CatalogError(Exception):
    """Root of the catalog's errors."""


class OutputError(CatalogError):
    """A step's outputs cannot be registered as given (bad manifest, a file outside the output directory)."""


class UnknownProduct(CatalogError, KeyError):
    """No product has this id."""

    def __str__(self) -> str:
        return f"no product {self.args[0]}"


class ProductUnavailable(CatalogError):
    """The product exists but its bytes are not distributed (quarantined, held unscanned, evicted)."""

    def __init__(self, product_id: str, state: str, reason: str | None) -> None:
        self.product_id, self.state, self.reason = product_id, state, reason
        super().__init__(f"product {product_id} is {state}" + (f": {reason}" if reason else ""))


@dataclass(frozen=True)
class OutputContext:
    """The run whose step produced the outputs: their lineage and their place in KPIs."""

    run_id: str
    chain_id: str
    chain_version: str
    mission: str
    baseline: str | None = None
    reprocessing: bool = False
    inputs: list[str] = field(default_factory=list)
    """Catalog ids of the run's input products."""
    t0: datetime | None = None


@dataclass(frozen=True)
class PublishedProduct:
    """A registered product, whatever its state (``published_at`` is set only once it is published)."""

    id: str
    name: str
    product_type: str
    state: str
    size: int
    sha256: str
    t0: datetime | None
    published_at: datetime | None
    timeliness: str | None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> PublishedProduct:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


class _ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")
    file: str
    sensing_start: AwareDatetime | None = None
    sensing_stop: AwareDatetime | None = None


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    products: list[_ManifestEntry] = []


def product_id(*identity: str) -> str:
    """The id of the product with this identity: the same every time it is registered."""
    return str(uuid.uuid5(_ID_NAMESPACE, "|".join(identity)))


class Catalog:
    """Products: registration with lineage, scanning, distribution state, quotas and retention."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        bus: Bus,
        audit: AuditTrail,
        *,
        storage: Storage | None = None,
        scanner: Scanner | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.bus = bus
        self.audit = audit
        self.storage = storage or LocalStorage(settings.products_dir)
        socket_path = settings.production.scanner.clamd_socket
        if scanner is None and socket_path is not None:
            scanner = ClamdScanner(socket_path, timeout_s=settings.production.scanner.timeout_s)
        self.scanner = scanner
        self.quota = DownloadQuota(engine, settings.production.catalog.download_quota_bytes_per_day)
        self.retention = Retention(
            engine=engine, storage=self.storage, audit=audit, days=settings.production.catalog.retention_days
        )

    # Registration

    def publish_outputs(
        self, *, run: OutputContext, step: str, output_dir: Path, outputs: list[OutputSpec]
    ) -> list[PublishedProduct]:
        """Register every file the ``outputs`` of ``step`` match in ``output_dir`` (see the module docstring)."""
        matched = [(spec, path) for spec in outputs if spec.step == step for path in _glob(output_dir, spec)]
        sensing = _read_manifest(output_dir) if matched else {}
        registered = []
        for spec, path in matched:
            relative = path.relative_to(output_dir).as_posix()
            start, stop = sensing.get(relative, sensing.get(path.name, (None, None)))
            row: dict[str, Any] = {
                "id": product_id("run", run.run_id, step, relative),
                "name": path.name,
                "product_type": spec.product_type,
                "mission": run.mission,
                "sensing_start": start,
                "sensing_stop": stop,
                "t0": run.t0,
                "timeliness": spec.timeliness,
                "baseline": run.baseline,
                "reprocessing": run.reprocessing,
                "run_id": run.run_id,
                "step": step,
                "chain_id": run.chain_id,
                "chain_version": run.chain_version,
                "inputs": list(run.inputs),
            }
            registered.append(self._register(path, row, CATALOG_ACTOR))
        return registered

    def register_external(
        self,
        path: Path,
        *,
        product_type: str,
        mission: str,
        t0: datetime | None = None,
        sensing_start: datetime | None = None,
        sensing_stop: datetime | None = None,
        actor: Actor,
    ) -> PublishedProduct:
        """Register a product arriving from outside (an L1C from a ground station): the same copy, checks and
        announcement as a run output. ``t0`` defaults to now, when it became available here. The same name of
        the same type and mission delivered again is the same product."""
        if not path.is_file():
            raise OutputError(f"{path}: not a file")
        row: dict[str, Any] = {
            "id": product_id("external", mission, product_type, path.name),
            "name": path.name,
            "product_type": product_type,
            "mission": mission,
            "sensing_start": sensing_start,
            "sensing_stop": sensing_stop,
            "t0": t0 or clock.utcnow(),
            "timeliness": None,
            "baseline": None,
            "reprocessing": False,
            "run_id": None,
            "step": None,
            "chain_id": None,
            "chain_version": None,
            "inputs": [],
        }
        return self._register(path, row, actor)

    def rescan_held(self, *, actor: Actor) -> list[PublishedProduct]:
        """Scan every product held as ``unscanned`` again (once clamd answers); returns their new state.
        Held products are only ever released by a scan: without a scanner configured this is an error."""
        if self.scanner is None:
            raise CatalogError(
                "no scanner is configured (production.scanner.clamd_socket): nothing can be rescanned"
            )
        with self.engine.connect() as connection:
            held = [
                dict(r._mapping)
                for r in connection.execute(sa.select(products).where(products.c.state == UNSCANNED))
            ]
        return [self._rescan(row, actor) for row in held]

    # Reading

    def get(self, product_id: str) -> dict[str, Any]:
        """The product's row; ``UnknownProduct`` when there is none."""
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(products).where(products.c.id == product_id)).first()
        if row is None:
            raise UnknownProduct(product_id)
        return dict(row._mapping)

    def search(self, criteria: ProductFilter, *, cursor: str | None = None, limit: int = 100) -> ProductPage:
        """One page of products matching ``criteria``, newest registration first, continuing after ``cursor``
        (``CursorError`` when it is not one this method gave)."""
        return search_products(self.engine, criteria, cursor=cursor, limit=limit)

    def key_of(self, row: Mapping[str, Any]) -> str:
        """The storage key of a product's file."""
        return self.storage.key(row["uri"])

    def path_of(self, product_id: str) -> Path:
        """The local file of a published product (for executors feeding inputs to a step);
        ``ProductUnavailable`` for one that is quarantined, held or evicted."""
        row = self.get(product_id)
        if row["state"] != PUBLISHED:
            raise ProductUnavailable(product_id, row["state"], row["reason"])
        return self.storage.local_path(self.key_of(row))

    def evict_expired(self, now: datetime) -> int:
        """Delete the files of published products past their type's retention, mark them evicted and audit
        each eviction; returns how many were evicted. Call it periodically (hourly is plenty)."""
        return self.retention.evict_expired(now)

    # Internals

    def _register(self, source: Path, fields: dict[str, Any], actor: Actor) -> PublishedProduct:
        pid, name = fields["id"], fields["name"]
        existing = self._find(pid)
        if existing is not None:
            return self._resume(existing, actor)
        staged = self.storage.put(source, f"incoming/{pid}/{name}")
        verdict, failure = self._scan(staged.key)
        state = UNSCANNED if failure else QUARANTINED if verdict and verdict.infected else PUBLISHED
        key = f"{AREAS[state]}/{pid}/{name}"
        try:
            self.storage.move(staged.key, key)
        except FileNotFoundError:  # a concurrent registration of the same product moved the staged copy
            existing = self._find(pid)
            if existing is None:
                raise CatalogError(
                    f"product {pid} ({name}) is being registered concurrently; retry"
                ) from None
            return self._resume(existing, actor)
        now = clock.utcnow()
        row: dict[str, Any] = {
            **fields,
            "state": state,
            "size": staged.size,
            "sha256": staged.sha256,
            "uri": self.storage.uri(key),
            "created_at": now,
            "published_at": now if state == PUBLISHED else None,
            "reason": _reason(verdict, failure),
        }
        try:
            with self.engine.begin() as connection:
                connection.execute(products.insert().values(**row))
        except sa.exc.IntegrityError:  # a concurrent registration of the same product won the insert
            return self._resume(self.get(pid), actor)
        self._announce(row, verdict, actor)
        return PublishedProduct.of(row)

    def _resume(self, row: dict[str, Any], actor: Actor) -> PublishedProduct:
        """A product registered before: announce it again if published, retry its scan if held."""
        if row["state"] == PUBLISHED:
            self.bus.publish(topics.PRODUCT_AVAILABLE, row["product_type"], [events.product_available(row)])
        elif row["state"] == UNSCANNED:
            return self._rescan(row, actor)
        return PublishedProduct.of(row)

    def _rescan(self, row: dict[str, Any], actor: Actor) -> PublishedProduct:
        key = self.key_of(row)
        verdict, failure = self._scan(key)
        if failure:
            return PublishedProduct.of(row)
        assert verdict is not None
        state = QUARANTINED if verdict.infected else PUBLISHED
        new_key = f"{AREAS[state]}/{row['id']}/{row['name']}"
        self.storage.move(key, new_key)
        now = clock.utcnow()
        changes = {
            "state": state,
            "uri": self.storage.uri(new_key),
            "published_at": now if state == PUBLISHED else None,
            "reason": _reason(verdict, None),
        }
        with self.engine.begin() as connection:
            claimed = connection.execute(
                products.update()
                .where((products.c.id == row["id"]) & (products.c.state == UNSCANNED))
                .values(**changes)
            ).rowcount
        if not claimed:  # another rescan got there first; its outcome stands
            return PublishedProduct.of(self.get(row["id"]))
        row = {**row, **changes}
        self._announce(row, verdict, actor)
        return PublishedProduct.of(row)

    def _scan(self, key: str) -> tuple[Verdict | None, str | None]:
        """The verdict on a stored object, or why there is none. No scanner configured: clean by policy."""
        if self.scanner is None:
            return None, None
        try:
            with self.storage.open(key) as stream:
                return self.scanner.scan(stream), None
        except ScannerError as exc:
            return None, str(exc)

    def _announce(self, row: Mapping[str, Any], verdict: Verdict | None, actor: Actor) -> None:
        details = events.audit_details(row, verdict)
        if row["state"] == PUBLISHED:
            self.bus.publish(topics.PRODUCT_AVAILABLE, row["product_type"], [events.product_available(row)])
            self.audit.append(
                actor=actor, action="product.publish", outcome="success", target=row["id"], details=details
            )
        elif row["state"] == QUARANTINED:
            assert verdict is not None and verdict.signature is not None
            scanner_version = self._scanner_version()
            self.bus.publish(
                topics.TELEMETRY,
                "refsys:scanner",
                [events.malware_alert(row, verdict.signature, scanner_version)],
            )
            self.audit.append(
                actor=actor, action="product.quarantine", outcome="success", target=row["id"], details=details
            )
            log.warning(
                "product quarantined: %s matches %s",
                row["name"],
                verdict.signature,
                extra={"product_id": row["id"], "run_id": row["run_id"], "signature": verdict.signature},
            )
        else:
            self.audit.append(
                actor=actor, action="product.hold", outcome="failure", target=row["id"], details=details
            )
            log.error(
                "product held unscanned: %s: %s; fix clamd, then Catalog.rescan_held",
                row["name"],
                row["reason"],
                extra={"product_id": row["id"], "run_id": row["run_id"]},
            )

    def _scanner_version(self) -> str | None:
        if self.scanner is None:
            return None
        try:
            return self.scanner.version()
        except ScannerError:
            return None

    def _find(self, pid: str) -> dict[str, Any] | None:
        try:
            return self.get(pid)
        except UnknownProduct:
            return None


def _reason(verdict: Verdict | None, failure: str | None) -> str | None:
    if failure:
        return f"not scanned: {failure}"[:1024]
    if verdict is not None and verdict.infected:
        return f"malware: {verdict.signature}"[:1024]
    return None


def _glob(output_dir: Path, spec: OutputSpec) -> list[Path]:
    """Files ``spec.pattern`` matches, refusing any that resolves outside ``output_dir`` (a symlink to a
    secret must not become a distributed product)."""
    root = output_dir.resolve()
    found = []
    for path in sorted(output_dir.glob(spec.pattern)):
        if path.name == MANIFEST or not path.is_file():
            continue
        if not path.resolve().is_relative_to(root):
            raise OutputError(f"{path}: output {spec.product_type}: resolves outside the output directory")
        found.append(path)
    return found


def _read_manifest(output_dir: Path) -> dict[str, tuple[datetime | None, datetime | None]]:
    """Sensing times by file (relative path) from ``output_dir/manifest.json``, when the step wrote one."""
    path = output_dir / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = _Manifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "document"
        raise OutputError(f"{path}: {where}: {error['msg']}") from None
    times: dict[str, tuple[datetime | None, datetime | None]] = {}
    for index, entry in enumerate(manifest.products):
        start, stop = entry.sensing_start, entry.sensing_stop
        if start is not None and stop is not None and stop < start:
            raise OutputError(f"{path}: products.{index}.sensing_stop: before sensing_start")
        times[entry.file] = (start.astimezone(UTC) if start else None, stop.astimezone(UTC) if stop else None)
    return times
