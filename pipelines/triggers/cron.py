"""Cron triggers: each chain's crontab expressions (UTC) start runs, through APScheduler's in-process scheduler.

A firing is identified by (chain, expression, minute), crontab's resolution, and that is the run's idempotency
key: two replicas firing the same schedule, or a firing retried after a hiccup, make one run. A firing missed
while the control plane was down is not made up for (``coalesce``; a grace of one minute): systematic and
reprocessing production cover the gaps, not a burst of late cron runs.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from control_plane.core import clock
from control_plane.core.audit.trail import Actor
from pipelines.engine import Engine, RunRequest
from pipelines.registry import BUNDLED_DIR, ChainRegistry
from pipelines.spec import ChainSpec

log = logging.getLogger(__name__)

ACTOR = Actor(subject="refsys:trigger:cron")
MISFIRE_GRACE_S = 60


def firing_key(chain: ChainSpec, expression: str, fired_at: datetime) -> str:
    """The idempotency key of one firing: the same for every replica that fires it."""
    minute = fired_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")
    return f"cron:{chain.key}:{expression}:{minute}"


class CronTriggers:
    """One scheduled job per (chain, crontab expression) of every chain in the registry."""

    def __init__(self, *, registry: ChainRegistry, engine: Engine, include_bundled: bool = False) -> None:
        self.registry = registry
        self.engine = engine
        self.include_bundled = include_bundled
        self.scheduler = BackgroundScheduler(timezone=UTC)

    def jobs(self) -> list[tuple[ChainSpec, str]]:
        """(chain, expression) of the newest version of every chain with cron triggers. The bundled chains are
        reference content: their schedules run only when asked (``refsys serve --demo``), never by surprise in
        a deployment that merely left ``production.bundled_chains`` on."""
        latest = {chain.id: chain for chain in self.registry.all()}  # all() is sorted: the last version wins
        return [
            (chain, expression)
            for chain in latest.values()
            if self.include_bundled or not self._bundled(chain)
            for expression in chain.triggers.cron
        ]

    def _bundled(self, chain: ChainSpec) -> bool:
        return (
            Path(self.registry.origin(chain.id, chain.version))
            .resolve()
            .is_relative_to(BUNDLED_DIR.resolve())
        )

    def fire(self, chain: ChainSpec, expression: str, fired_at: datetime | None = None) -> str:
        """Start the run of one firing (idempotent); returns its id."""
        run_id, created = self.engine.submit(
            RunRequest(
                chain_id=chain.id,
                chain_version=chain.version,
                trigger="cron",
                idempotency_key=firing_key(chain, expression, fired_at or clock.utcnow()),
            ),
            ACTOR,
        )
        if created:
            log.info("cron %r started run %s of %s", expression, run_id, chain.key)
        return run_id

    def fire_all(self) -> list[str]:
        """Fire every scheduled chain once now (``refsys serve --demo``: production moves from the first
        minute instead of at the next firing); returns the runs' ids."""
        return [self.fire(chain, expression) for chain, expression in self.jobs()]

    def start(self) -> None:
        for chain, expression in self.jobs():
            self.scheduler.add_job(
                self._fire_safely,
                CronTrigger.from_crontab(expression, timezone=UTC),
                args=(chain, expression),
                id=f"{chain.key}|{expression}",
                coalesce=True,
                misfire_grace_time=MISFIRE_GRACE_S,
                max_instances=1,
            )
        self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)

    def _fire_safely(self, chain: ChainSpec, expression: str) -> None:
        try:
            self.fire(chain, expression)
        except Exception:  # one failed firing must not unschedule the job; the next firing tries again
            log.exception("cron %r of %s could not start a run", expression, chain.key)
