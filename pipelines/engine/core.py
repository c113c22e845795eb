"""The run engine: runs and steps persisted, one scheduling thread, leases, retries, the parking lot.

Every round the scheduling thread collects ended executions, keeps its leases alive, adopts or requeues
executions whose lease ran out (a previous incarnation's, after a crash), admits runs whose inputs are complete,
and starts ready steps within the lanes' limits. It wakes at once on a submission, an action or a full log
buffer, and otherwise every ``production.tick_s``. All state is in the database and every change is a
conditional update (see ``states``), so any number of engines may share it and a restarted one finds everything
where the crash left it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine as DbEngine

from control_plane.core import clock, ids
from control_plane.core.audit.trail import Actor, AuditTrail
from control_plane.core.bus import Bus
from control_plane.core.config import Settings
from pipelines import tables
from pipelines.catalog import Catalog
from pipelines.engine import actions, endings, progress, steps
from pipelines.engine.logs import StepLogs
from pipelines.engine.requests import BadRunRequest, RunRequest
from pipelines.engine.runs import RunRow, load_run, missing_inputs, product_rows, run_view
from pipelines.engine.states import RunState, StepState, move_run
from pipelines.engine.templates import TemplateError, check_chain, effective_parameters
from pipelines.executors.base import Executor
from pipelines.registry import ChainRegistry, resolve_processor
from pipelines.spec import ChainSpec
from pipelines.traces import TraceWriter

log = logging.getLogger(__name__)
ADMIT_BATCH = 500
ADMIT_SKEW = timedelta(seconds=5)
"""A waiting run changed this recently (an input added, by any engine, on any host's clock) is looked at again."""
ACTIVE_RUN = (RunState.PENDING, RunState.QUEUED, RunState.RUNNING)


class Engine:
    """Runs chains; see the module docstring. Thread-safe: API handlers call its actions concurrently."""

    def __init__(
        self,
        settings: Settings,
        engine: DbEngine,
        bus: Bus,
        audit: AuditTrail,
        registry: ChainRegistry,
        catalog: Catalog,
        traces: TraceWriter,
        executor: Executor,
        *,
        logs: StepLogs | None = None,
    ) -> None:
        self.settings = settings
        self.production = settings.production
        self.db = engine
        self.bus = bus
        self.audit = audit
        self.registry = registry
        self.catalog = catalog
        self.traces = traces
        self.executor = executor
        self.logs = logs or StepLogs(engine, bus)
        self.logs.on_backlog = self.wake
        self.owner = f"{socket.gethostname()[:24]}:{os.getpid()}:{ids.new_id()[-12:]}"
        """This incarnation's lease owner id: a restarted engine is a new owner and waits for old leases to
        run out before it adopts their executions."""
        self.lease = timedelta(seconds=self.production.lease_s)
        self._wakeup = threading.Condition()
        self._woken = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._round_lock = threading.Lock()
        self._next_upkeep = 0.0
        self.cancelled_executions: set[tuple[str, str, int]] = set()
        """Executions of cancelled runs already asked to stop (so each is asked once)."""
        self._admitted_at = datetime(1970, 1, 1, tzinfo=UTC)
        """Waiting runs changed since this are looked at again (the first round looks at every one)."""

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduling thread (recovery happens in its first rounds)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="refsys-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop scheduling; executions keep running and a later engine adopts them once their leases run out."""
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        self.logs.flush()
        self.executor.close()

    def wake(self) -> None:
        with self._wakeup:
            self._woken = True
            self._wakeup.notify_all()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.round()
            except Exception:  # a database hiccup must not end scheduling; the next round retries
                log.exception("engine round failed; retrying")
                busy = False
            if not busy:
                with self._wakeup:
                    if not self._woken:
                        self._wakeup.wait(self.production.tick_s)
                    self._woken = False

    def run_until_idle(self, timeout_s: float) -> bool:
        """Schedule (in this thread, unless the scheduling thread runs) until no run is pending, queued or
        running; False if ``timeout_s`` passed first. Runs waiting for inputs do not keep it busy."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            busy = self.round() if self._thread is None else False
            if self.idle():
                return True
            if not busy:
                with self._wakeup:
                    self._wakeup.wait(min(self.production.tick_s, max(0.0, deadline - time.monotonic())))
                    self._woken = False
        return self.idle()

    def idle(self) -> bool:
        with self.db.connect() as connection:
            active = connection.execute(
                sa.select(sa.func.count()).select_from(tables.runs).where(tables.runs.c.state.in_(ACTIVE_RUN))
            ).scalar_one()
        return active == 0

    # -- requests -----------------------------------------------------------------------------------------

    def submit(self, request: RunRequest, actor: Actor) -> tuple[str, bool]:
        """Create a run (audited as ``run.submit``) and return (its id, True), or (the id of the run the same
        idempotency key made before, False). ``BadRunRequest`` for an unknown chain, lane or input."""
        if request.idempotency_key is not None:
            existing = self._by_key(request.idempotency_key)
            if existing is not None:
                return existing, False
        try:
            chain = self.chain(request.chain_id, request.chain_version)
            if request.trigger == "manual" and not chain.triggers.manual:
                raise BadRunRequest(
                    f"chain {chain.key} does not accept manual runs (triggers.manual is false)"
                )
            lane = request.lane or chain.lane
            if lane not in self.production.lanes:
                known = ", ".join(sorted(self.production.lanes))
                raise BadRunRequest(f"lane {lane!r} is not configured (lanes: {known})")
            run_id, created = self._create(request, chain, lane, actor)
        except BadRunRequest as exc:
            self.audit.append(
                actor=actor,
                action="run.submit",
                outcome="failure",
                target=request.chain_id,
                details={"reason": str(exc), "trigger": request.trigger},
            )
            raise
        if created:
            self.audit.append(
                actor=actor,
                action="run.submit",
                outcome="success",
                target=run_id,
                details={
                    **actions.run_details(self, chain, lane, request.parameters),
                    "trigger": request.trigger,
                    "inputs": list(request.inputs),
                    "idempotency_key": request.idempotency_key,
                    "resubmitted_from": request.resubmitted_from,
                },
            )
            self.wake()
        return run_id, created

    def chain(self, chain_id: str, version: str | None = None) -> ChainSpec:
        try:
            return self.registry.get(chain_id, version)
        except KeyError:
            wanted = f"{chain_id}@{version}" if version else chain_id
            raise BadRunRequest(f"chain {wanted} is not known") from None

    def _by_key(self, key: str) -> str | None:
        with self.db.connect() as connection:
            found: str | None = connection.execute(
                sa.select(tables.runs.c.id).where(tables.runs.c.idempotency_key == key)
            ).scalar_one_or_none()
        return found

    def _create(self, request: RunRequest, chain: ChainSpec, lane: str, actor: Actor) -> tuple[str, bool]:
        now = clock.utcnow()
        run_id = ids.new_id()
        with self.db.connect() as connection:
            products = product_rows(connection, request.inputs)
        unknown = [product_id for product_id in request.inputs if product_id not in products]
        if unknown:
            raise BadRunRequest(f"input product {unknown[0]} is not in the catalog")
        published = [p["published_at"] or p["created_at"] for p in products.values()]
        t0 = request.t0 or (max(published) if published else now)
        run = {
            "id": run_id,
            "chain_id": chain.id,
            "chain_version": chain.version,
            "mission": chain.mission,
            "lane": lane,
            "state": RunState.PENDING,
            "trigger": request.trigger,
            "parameters": dict(request.parameters),
            "inputs": list(dict.fromkeys(request.inputs)),
            "idempotency_key": request.idempotency_key,
            "requested_by": actor.subject[:256],
            "campaign_id": request.campaign_id,
            "baseline": request.baseline,
            "resubmitted_from": request.resubmitted_from,
            "t0": t0,
            "created_at": now,
            "updated_at": now,
        }
        step_rows = [
            {
                "run_id": run_id,
                "name": step.name,
                "state": StepState.PENDING,
                "lane": lane,
                "attempt": 0,
                "max_attempts": step.retries.max_attempts,
            }
            for step in chain.steps
        ]
        try:
            with self.db.begin() as connection:
                connection.execute(tables.runs.insert().values(**run))
                connection.execute(tables.run_steps.insert(), step_rows)
        except sa.exc.IntegrityError:
            # Another request with the same idempotency key won the race: its run is the answer.
            existing = self._by_key(request.idempotency_key) if request.idempotency_key else None
            if existing is None:
                raise
            return existing, False
        return run_id, True

    def add_input(self, run_id: str, product_id: str) -> None:
        """Add a product to a run that has not started yet (a systematic trigger feeding a waiting run).
        Adding one it holds changes nothing; ``ActionNotAllowed`` once the run has started."""
        runs = tables.runs
        for _ in range(20):
            with self.db.begin() as connection:
                run = load_run(connection, run_id)
                if product_id in run.inputs:
                    return
                if run.state not in (RunState.PENDING, RunState.WAITING_INPUTS):
                    raise actions.ActionNotAllowed(f"run {run_id} is {run.state}; it takes no more inputs")
                now = clock.utcnow()
                changed = connection.execute(
                    runs.update()
                    .where(
                        runs.c.id == run_id, runs.c.state == run.state, runs.c.updated_at == run.updated_at
                    )
                    .values(inputs=[*run.inputs, product_id], t0=now, updated_at=now)
                ).rowcount
            if changed:
                self.wake()
                return
        raise RuntimeError(f"run {run_id} kept changing while adding input {product_id}")

    # -- actions (see actions.py) ------------------------------------------------------------------------

    def cancel(self, run_id: str, actor: Actor) -> None:
        actions.cancel(self, run_id, actor)

    def retry(self, run_id: str, actor: Actor, *, parking_lot: bool = False) -> None:
        actions.retry(self, run_id, actor, parking_lot=parking_lot)

    def resubmit(self, run_id: str, actor: Actor, *, parking_lot: bool = False) -> str:
        return actions.resubmit(self, run_id, actor, parking_lot=parking_lot)

    def drop(self, run_id: str, actor: Actor) -> None:
        actions.drop(self, run_id, actor)

    # -- scheduling ---------------------------------------------------------------------------------------

    def round(self) -> bool:
        """One scheduling round; True when it changed something (the loop then goes again at once)."""
        with self._round_lock:
            changed = endings.collect(self)
            self.logs.flush()
            if time.monotonic() >= self._next_upkeep:
                self._next_upkeep = time.monotonic() + self.production.lease_s / 3
                steps.heartbeat(self)
                changed += steps.recover(self)
                changed += self._sweep()
            changed += self._admit()
            changed += steps.dispatch(self)
            steps.kill_cancelled(self)
            return changed > 0

    def _admit(self) -> int:
        """pending / waiting-inputs -> queued (or waiting, or failed); queued -> running within chain limits."""
        runs = tables.runs
        changed = 0
        now = clock.utcnow()
        # A waiting run is looked at again only when it changed (an input came) or its next deadline passed.
        due = sa.or_(
            runs.c.state == RunState.PENDING,
            runs.c.wait_until.is_(None),
            runs.c.wait_until <= now,
            runs.c.updated_at >= self._admitted_at,
        )
        self._admitted_at = now - ADMIT_SKEW
        with self.db.connect() as connection:
            candidates = [
                RunRow.of(row)
                for row in connection.execute(
                    sa.select(*RunRow.columns())
                    .where(runs.c.state.in_((RunState.PENDING, RunState.WAITING_INPUTS)), due)
                    .order_by(runs.c.created_at)
                    .limit(ADMIT_BATCH)
                )
            ]
        for run in candidates:
            changed += self._admit_one(run)
        return changed + self._start_queued()

    def _admit_one(self, run: RunRow) -> int:
        now = clock.utcnow()
        try:
            chain = self.chain(run.chain_id, run.chain_version)
            check_chain(chain, effective_parameters(chain, run.parameters))
        except (BadRunRequest, TemplateError) as exc:
            return self._fail_early(run.id, run.state, str(exc))
        with self.db.connect() as connection:
            lacking = missing_inputs(chain, product_rows(connection, run.inputs))
        if not lacking:
            with self.db.begin() as connection:
                return int(move_run(connection, run.id, run.state, RunState.QUEUED, wait_until=None))
        deadlines = [
            (spec, run.created_at + timedelta(seconds=spec.wait.timeout_s), n) for spec, n in lacking
        ]
        expired = [(spec, n) for spec, deadline, n in deadlines if deadline <= now]
        described = ", ".join(f"{spec.product_type} x{n}" for spec, n in lacking)
        if any(spec.wait.on_timeout == "fail" for spec, _n in expired):
            return self._fail_early(
                run.id, run.state, f"inputs still missing when the wait ran out: {described}"
            )
        if len(expired) == len(lacking):
            with self.db.begin() as connection:
                return int(
                    move_run(
                        connection,
                        run.id,
                        run.state,
                        RunState.QUEUED,
                        wait_until=None,
                        reason=f"started after its wait for inputs without: {described}",
                    )
                )
        wait_until = min(deadline for _spec, deadline, _n in deadlines if deadline > now)
        reason = f"waiting for inputs: {described}"
        with self.db.begin() as connection:
            if run.state == RunState.PENDING:
                return int(
                    move_run(
                        connection,
                        run.id,
                        run.state,
                        RunState.WAITING_INPUTS,
                        wait_until=wait_until,
                        reason=reason,
                    )
                )
            # Still waiting: note the next deadline (and what is still missing) so it is looked at then.
            runs = tables.runs
            connection.execute(
                runs.update()
                .where(
                    runs.c.id == run.id,
                    runs.c.state == RunState.WAITING_INPUTS,
                    runs.c.updated_at == run.updated_at,
                )
                .values(wait_until=wait_until, reason=reason)
            )
        return 0

    def _fail_early(self, run_id: str, state: str, reason: str) -> int:
        """A run that cannot go on (bad parameters, a chain no longer configured, inputs that never came)
        fails at once, with the reason; it is not parked, since no retry can help it."""
        now = clock.utcnow()
        with self.db.begin() as connection:
            failed = move_run(connection, run_id, state, RunState.FAILED, reason=reason[:1024], ended_at=now)
            if failed:
                progress.cancel_unstarted(connection, run_id)
        if failed:
            log.info("run %s failed: %s", run_id, reason)
        return int(failed)

    def _start_queued(self) -> int:
        """queued -> running, oldest first, while the chain has fewer than ``max_concurrent_runs`` running."""
        runs = tables.runs
        with self.db.connect() as connection:
            queued = connection.execute(
                sa.select(runs.c.id, runs.c.chain_id, runs.c.chain_version)
                .where(runs.c.state == RunState.QUEUED)
                .order_by(runs.c.created_at)
                .limit(ADMIT_BATCH)
            ).all()
            if not queued:
                return 0
            running: dict[str, int] = defaultdict(int)
            for chain_id, count in connection.execute(
                sa.select(runs.c.chain_id, sa.func.count())
                .where(runs.c.state == RunState.RUNNING)
                .group_by(runs.c.chain_id)
            ):
                running[chain_id] = count
        started = 0
        for run_id, chain_id, version in queued:
            try:
                limit = self.chain(chain_id, version).max_concurrent_runs
            except BadRunRequest as exc:
                started += self._fail_early(run_id, RunState.QUEUED, str(exc))
                continue
            if running[chain_id] >= limit:
                continue
            now = clock.utcnow()
            with self.db.begin() as connection:
                if move_run(connection, run_id, RunState.QUEUED, RunState.RUNNING, started_at=now):
                    progress.promote(connection, self, run_id, now)
                    running[chain_id] += 1
                    started += 1
        return started

    def _sweep(self) -> int:
        """Nothing may stay stuck: in running runs with no step queued or running, promote steps whose needs
        succeeded, and end the runs where none could be (all ended, or the rest can never start)."""
        runs, run_steps = tables.runs, tables.run_steps
        with self.db.connect() as connection:
            running = connection.execute(
                sa.select(runs.c.id, runs.c.chain_id, runs.c.chain_version).where(
                    runs.c.state == RunState.RUNNING
                )
            ).all()
            busy = set(
                connection.execute(
                    sa.select(run_steps.c.run_id)
                    .where(run_steps.c.state.in_((StepState.QUEUED, StepState.RUNNING)))
                    .distinct()
                ).scalars()
            )
        changed = 0
        for run_id, chain_id, chain_version in running:
            if run_id in busy:
                continue
            now = clock.utcnow()
            try:
                self.chain(chain_id, chain_version)
            except BadRunRequest as exc:
                changed += self._fail_early(run_id, RunState.RUNNING, str(exc))
                continue
            with self.db.begin() as connection:
                promoted = progress.promote(connection, self, run_id, now)
                if not promoted:
                    changed += progress.finish_run(connection, self, run_id, now, stalled=True)
                changed += promoted
        return changed

    def missing_outputs(self, run: RunRow) -> dict[str, int]:
        """Inputs a run started without (by product type), the basis of its traces' ``missing_outputs``."""
        chain = self.chain(run.chain_id, run.chain_version)
        if not chain.inputs:
            return {}
        with self.db.connect() as connection:
            lacking = missing_inputs(chain, product_rows(connection, run.inputs))
        return {spec.product_type: n for spec, n in lacking}

    def image_of(self, chain: ChainSpec, step: str) -> str | None:
        try:
            return resolve_processor(self.settings, chain.step(step).processor).image
        except KeyError:
            return None

    def describe(self, run_id: str) -> dict[str, Any]:
        """The run as the API shows it (``RunNotFound`` when unknown)."""
        with self.db.connect() as connection:
            return run_view(connection, run_id)
