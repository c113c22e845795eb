"""The FastAPI application: the kernel's middleware, problem handlers and routes, plus every domain's router."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import start_http_server

import control_plane
from control_plane.api import audit, system
from control_plane.core.config import Settings
from control_plane.core.maintenance import Maintenance
from control_plane.core.middleware import RequestMiddleware
from control_plane.core.problems import install_problem_handlers
from control_plane.core.services import Services, open_services
from pipelines.api import parking_lot as parking_lot_api
from pipelines.api import pipelines as pipelines_api
from pipelines.api import products as products_api
from pipelines.api import reprocessing as reprocessing_api
from pipelines.api import runs as runs_api
from pipelines.production import Production
from security import search_api
from security.alerts import api as alerts_api
from security.alerts.manager import IncidentManager
from security.demo.runner import DemoRunner
from security.demo.traffic import DemoTraffic
from security.detection import rules_api
from security.detection.catalog import RuleCatalog
from security.detection.service import Detection
from security.hooks import api as hooks_api
from security.hooks.notifier import Notifier
from security.intake import api as intake_api
from security.telemetry import Telemetry


def create_app(settings: Settings, services: Services | None = None, *, demo: bool = False) -> FastAPI:
    """Build the app. ``services`` defaults to opening the configured stores (the schema must be at head);
    ``demo`` feeds a live generator of realistic telemetry, attacks included, into the intake."""
    services = services or open_services(settings)
    telemetry = Telemetry(
        settings=settings, engine=services.engine, bus=services.bus, registry=services.metrics.registry
    )
    production = Production(settings, services.engine, services.bus, services.audit, demo=demo)
    notifier = Notifier(
        settings=settings, engine=services.engine, bus=services.bus, audit=services.audit,
        registry=services.metrics.registry,
    )  # fmt: skip
    incidents = IncidentManager(
        settings=settings, engine=services.engine, bus=services.bus, audit=services.audit,
        registry=services.metrics.registry,
    )  # fmt: skip
    rule_catalog = RuleCatalog(services.engine, settings.detection)
    detection = Detection(
        settings.detection, engine=services.engine, bus=services.bus, rules=rule_catalog,
        registry=services.metrics.registry,
    )  # fmt: skip

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        maintenance = Maintenance(services)
        maintenance.start()
        telemetry.start()
        production.start()
        notifier.start()
        incidents.start()
        detection.start()
        demo_runner = _demo_runner(settings, telemetry) if demo else None
        if demo_runner is not None:
            demo_runner.start()
            production.cron.fire_all()  # the bundled chains then go on with their cron triggers
        metrics_server = None
        if settings.metrics.port is not None:
            # In-cluster scraping without credentials, on a port kept off the public listener.
            metrics_server, _thread = start_http_server(
                settings.metrics.port, addr=settings.metrics.host, registry=services.metrics.registry
            )
        try:
            yield
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()
            if demo_runner is not None:
                demo_runner.stop()
            try:
                # Independent parts, each waiting for its own threads: stopped side by side, not in turn.
                stop_together(
                    [detection.stop, incidents.stop, notifier.stop, production.stop, telemetry.stop]
                )
            finally:
                maintenance.stop()
                services.close()

    app = FastAPI(
        title="refsys control plane",
        version=control_plane.__version__,
        description="Production chains, telemetry, SIEM and KPIs of an Earth-observation ground segment.",
        lifespan=lifespan,
        openapi_url=None,  # served by system.openapi_document, behind sign-in
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    app.state.telemetry = telemetry
    app.state.production = production
    app.state.notifier = notifier
    app.state.incidents = incidents
    app.state.rule_catalog = rule_catalog
    app.state.detection = detection
    install_problem_handlers(app)
    app.include_router(system.router)
    if services.issuer is not None:
        app.include_router(system.jwks_router)
    app.include_router(audit.router)
    app.include_router(intake_api.router)
    app.include_router(search_api.router)
    app.include_router(hooks_api.router)
    app.include_router(alerts_api.router)
    app.include_router(rules_api.router)
    app.include_router(pipelines_api.router)
    app.include_router(runs_api.router)
    app.include_router(parking_lot_api.router)
    app.include_router(products_api.router)
    app.include_router(reprocessing_api.router)
    app.add_middleware(
        RequestMiddleware,
        metrics=services.metrics,
        max_body_bytes=settings.server.max_body_bytes,
        hsts=settings.server.hsts,
        access_log_enabled=settings.logging.access_log,
    )
    return app


def stop_together(stops: list[Callable[[], None]]) -> None:
    """Run the stop functions in parallel and wait for all; the first failure is raised once all have ended."""
    with ThreadPoolExecutor(max_workers=len(stops), thread_name_prefix="refsys-stop") as pool:
        futures = [pool.submit(stop) for stop in stops]
    for future in futures:
        future.result()


def _demo_runner(settings: Settings, telemetry: Telemetry) -> DemoRunner:
    traffic = DemoTraffic(
        events_per_s=settings.demo.events_per_s,
        attack_every_s=settings.demo.attack_every_s,
        seed=settings.demo.seed,
    )
    return DemoRunner(traffic=traffic, ingest=telemetry.intake.ingest)
