"""Production's running parts, composed from the kernel's services by the app and the CLI.

``Production`` builds the chain registry, the trace writer, the catalog, the configured executor (local
subprocesses or Kubernetes Jobs) and the run engine from settings; ``start``/``stop`` run the engine's scheduling
thread. Like ``security.telemetry.Telemetry``, it holds no state of its own: everything is in the database.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.engine import Engine as DbEngine

from control_plane.core import clock
from control_plane.core.audit.trail import Actor, AuditTrail
from control_plane.core.bus import Bus
from control_plane.core.config import Settings
from pipelines.catalog import Catalog, PublishedProduct
from pipelines.engine import Engine, RunNotFound, StepLogs, tracing
from pipelines.engine.runs import load_run
from pipelines.executors.base import Executor, LogSink
from pipelines.executors.kubernetes import (
    KubernetesExecutor,
    KubernetesExecutorError,
    check_cluster_configuration,
)
from pipelines.executors.local import LocalExecutor
from pipelines.registry import ChainRegistry, ChainSpecError
from pipelines.traces import TraceWriter
from pipelines.triggers.cron import CronTriggers
from pipelines.triggers.reprocessing import Campaigns
from pipelines.triggers.systematic import SystematicTrigger
from pipelines.upkeep import ACTOR as UPKEEP_ACTOR
from pipelines.upkeep import Upkeep, remove_old_work_dirs

log = logging.getLogger(__name__)

EXECUTORS: dict[str, type[LocalExecutor] | type[KubernetesExecutor]] = {
    "local": LocalExecutor,
    "kubernetes": KubernetesExecutor,
}


class ProductionConfigError(Exception):
    """Production cannot start with this configuration; ``str()`` is the one line shown to the operator."""


def check_configuration(settings: Settings) -> None:
    """What ``refsys serve`` checks before it touches any state: the chain files validate against the
    configuration, and the configured executor can reach what it needs (for Kubernetes, its cluster config)."""
    try:
        ChainRegistry.load(settings)
        if settings.production.executor == "kubernetes":
            check_cluster_configuration(settings.production.kubernetes)
    except ChainSpecError as exc:
        more = f" (and {len(exc.problems) - 1} more: refsys pipelines list)" if len(exc.problems) > 1 else ""
        raise ProductionConfigError(f"config error: chain files: {exc.problems[0]}{more}") from None
    except KubernetesExecutorError as exc:
        raise ProductionConfigError(f"config error: {exc}") from None


def open_executor(settings: Settings, on_log: LogSink) -> Executor:
    """The executor ``production.executor`` names."""
    kind = settings.production.executor
    try:
        executor_class = EXECUTORS[kind]
    except KeyError:
        raise ValueError(f"production.executor: executor {kind!r} is unknown") from None
    return executor_class(settings, on_log)


class Production:
    def __init__(
        self,
        settings: Settings,
        engine: DbEngine,
        bus: Bus,
        audit: AuditTrail,
        *,
        executor: Executor | None = None,
        demo: bool = False,
    ) -> None:
        """``demo``: the bundled chains' cron triggers run too (``refsys serve --demo``)."""
        self.settings = settings
        self.registry = ChainRegistry.load(settings)
        self.traces = TraceWriter(engine, bus)
        self.catalog = Catalog(settings, engine, bus, audit)
        self.logs = StepLogs(engine, bus)
        self.executor = executor or open_executor(settings, self.logs.append)
        self.engine = Engine(
            settings,
            engine,
            bus,
            audit,
            self.registry,
            self.catalog,
            self.traces,
            self.executor,
            logs=self.logs,
        )
        self.systematic = SystematicTrigger(bus=bus, db=engine, registry=self.registry, engine=self.engine)
        self.cron = CronTriggers(registry=self.registry, engine=self.engine, include_bundled=demo)
        self.campaigns = Campaigns(
            settings=settings, db=engine, registry=self.registry, engine=self.engine, audit=audit
        )
        self.upkeep = Upkeep(
            {
                "retention": lambda: self.catalog.evict_expired(clock.utcnow()),
                "rescan of held products": self._rescan_if_scanning,
                "old execution directories": self._remove_old_work_dirs,
            }
        )

    def _remove_old_work_dirs(self) -> int:
        """Both executors lay executions out as ``RUN_ID/STEP/ATTEMPT``: locally under ``work_dir``, on
        Kubernetes on the shared work volume the control plane mounts at ``work_mount``."""
        keep = timedelta(days=self.settings.production.local.keep_work_days)
        roots = [self.settings.work_dir, self.settings.production.kubernetes.work_mount]
        return sum(
            remove_old_work_dirs(self.engine.db, root, keep=keep) for root in roots if root is not None
        )

    def _rescan_if_scanning(self) -> list[PublishedProduct]:
        return self.rescan_held(UPKEEP_ACTOR) if self.catalog.scanner is not None else []

    def rescan_held(self, actor: Actor) -> list[PublishedProduct]:
        """Scan the products held while clamd was away again; a run output released now gets the PUBLISHED
        trace its run could not emit then (the KPI engine counts its timeliness from it)."""
        outcomes = self.catalog.rescan_held(actor=actor)
        for product in outcomes:
            if product.published_at is None:
                continue
            row = self.catalog.get(product.id)
            if row["run_id"] is None:  # delivered from outside: no run, no trace
                continue
            try:
                with self.engine.db.connect() as connection:
                    run = load_run(connection, row["run_id"])
            except RunNotFound:  # registered by hand for a run that is not in this database
                log.warning("product %s released: its run %s is unknown, no trace", product.id, row["run_id"])
                continue
            tracing.published(
                self.traces,
                run,
                row["step"],
                product_name=product.name,
                product_type=product.product_type,
                timeliness_class=product.timeliness,
                t0=product.t0,
                published_at=product.published_at,
            )
        return outcomes

    def start(self, *, triggers: bool = True) -> None:
        """Schedule runs in the background (first adopting or requeueing what a previous process left); with
        ``triggers``, also start runs from product events, cron (when ``production.cron``) and run catalog
        upkeep, as a server does (``refsys run`` drives the systematic trigger itself)."""
        self.engine.start()
        if triggers:
            self.systematic.start()
            if self.settings.production.cron:
                self.cron.start()
            self.upkeep.start()

    def stop(self) -> None:
        """Stop scheduling and triggering; running steps go on and the next start adopts them."""
        self.cron.stop()
        self.upkeep.stop()
        self.systematic.stop()
        self.engine.stop()
