"""Production upkeep in the background: retention evictions, rescans of products held while clamd was down,
and the removal of old execution directories.

Each task is idempotent and cheap when there is nothing to do, so one thread runs them in turn on a fixed
interval; a task that fails is logged and tried again at the next round, never fatal to the server, and never
keeps the other tasks from running.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from control_plane.core import clock
from control_plane.core.audit.trail import Actor
from pipelines import tables
from pipelines.engine.states import RUN_TERMINAL

log = logging.getLogger(__name__)

ACTOR = Actor(subject="refsys:upkeep")
INTERVAL_S = 3600.0

Task = Callable[[], object]


class Upkeep:
    def __init__(self, tasks: dict[str, Task], *, interval_s: float = INTERVAL_S) -> None:
        self.tasks = tasks
        """Name (for the logs) -> task; a task returns what it did (a count, a list), logged when not empty."""
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> None:
        for name, task in self.tasks.items():
            try:
                done = task()
            except Exception:  # the next round tries again; the server must not stop over upkeep
                log.exception("upkeep: %s failed", name)
                continue
            if done:
                log.info("upkeep: %s: %s", name, len(done) if isinstance(done, list) else done)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="refsys-production-upkeep", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.run_once()


def remove_old_work_dirs(
    db: sa.Engine, work_dir: Path, *, keep: timedelta, now: datetime | None = None
) -> int:
    """Delete the execution directories of runs that ended more than ``keep`` ago; returns how many runs'.

    Only runs this database knows as ended are touched: a directory of a run still active (or of a run unknown
    here, such as another installation's) stays. Outputs were copied into the catalog when they were published,
    so what goes is logs already stored and scratch space."""
    if not work_dir.is_dir():
        return 0
    names = [entry.name for entry in work_dir.iterdir() if entry.is_dir()]
    if not names:
        return 0
    cutoff = (now or clock.utcnow()) - keep
    runs = tables.runs
    with db.connect() as connection:
        ended = set(
            connection.execute(
                sa.select(runs.c.id).where(
                    runs.c.id.in_(names), runs.c.state.in_(RUN_TERMINAL), runs.c.ended_at < cutoff
                )
            ).scalars()
        )
    for run_id in ended:
        shutil.rmtree(work_dir / run_id, ignore_errors=True)
    return len(ended)
