"""Starting steps and keeping them: ready steps started by lane within the limits, under this engine's lease;
leases kept alive; executions of a dead engine adopted or requeued; executions of cancelled runs stopped.

Functions of the ``Engine`` they serve, called from its scheduling round only.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from control_plane.core import clock
from pipelines import tables
from pipelines.engine import tracing
from pipelines.engine.endings import record_result
from pipelines.engine.progress import MAX_REASON, park
from pipelines.engine.runs import RunRow, load_run, published_by
from pipelines.engine.slots import allocate
from pipelines.engine.states import RunState, StepState, claim_step, move_step
from pipelines.engine.templates import effective_parameters, render_step
from pipelines.executors.base import StepLaunch, StepResult
from pipelines.registry import resolve_processor

if TYPE_CHECKING:
    from pipelines.engine.core import Engine

log = logging.getLogger(__name__)
READY_BATCH = 2000
"""Ready steps read per round; more wait for the next round."""


def dispatch(engine: Engine) -> int:
    """Start ready steps, by lane priority, within every lane's and the global limits."""
    runs, run_steps = tables.runs, tables.run_steps
    now = clock.utcnow()
    with engine.db.connect() as connection:
        running: dict[str, int] = dict(
            connection.execute(
                sa.select(run_steps.c.lane, sa.func.count())
                .where(run_steps.c.state == StepState.RUNNING)
                .group_by(run_steps.c.lane)
            ).all()
        )
        ready_rows = connection.execute(
            sa.select(run_steps.c.run_id, run_steps.c.name, run_steps.c.lane, run_steps.c.attempt)
            .join(runs, runs.c.id == run_steps.c.run_id)
            .where(
                run_steps.c.state == StepState.QUEUED,
                runs.c.state == RunState.RUNNING,
                sa.or_(run_steps.c.not_before.is_(None), run_steps.c.not_before <= now),
            )
            .order_by(run_steps.c.ready_at, run_steps.c.run_id)
            .limit(READY_BATCH)
        ).all()
    if not ready_rows:
        return 0
    ready: dict[str, list[Any]] = defaultdict(list)
    for row in ready_rows:
        ready[row.lane].append(row)
    lanes = engine.production.lanes
    starts = allocate(
        lanes=lanes,
        running=running,
        ready={lane: len(rows) for lane, rows in ready.items()},
        max_parallel=engine.production.max_parallel_steps,
    )
    chosen = [
        (row.run_id, row.name, row.attempt + 1)
        for lane, count in starts.items()
        for row in ready[lane][:count]
    ]
    return start_steps(engine, chosen)


def build_launch(engine: Engine, run: RunRow, step_name: str, attempt: int) -> StepLaunch:
    """Everything the executor needs for one attempt (``KeyError``/``TemplateError`` when it cannot be built)."""
    chain = engine.chain(run.chain_id, run.chain_version)
    step = chain.step(step_name)
    processor = resolve_processor(engine.settings, step.processor)
    input_paths = [
        str(engine.catalog.path_of(product_id))
        for product_id in [*run.inputs, *published_by(engine.db, run.id, step.needs)]
    ]
    args, env = render_step(
        step, parameters=effective_parameters(chain, run.parameters), run_id=run.id, input_paths=input_paths
    )
    lane = engine.production.lanes.get(run.lane)
    return StepLaunch(
        run_id=run.id,
        step=step.name,
        attempt=attempt,
        chain_id=chain.id,
        chain_version=chain.version,
        lane=run.lane,
        priority_class=lane.priority_class if lane else None,
        processor=processor,
        args=args,
        env=env,
        resources=step.resources,
        timeout_s=step.timeout_s,
        input_paths=input_paths,
    )


def start_steps(engine: Engine, wanted: list[tuple[str, str, int]]) -> int:
    """Claim ready steps ``(run_id, step, attempt)`` (queued -> running under this engine's lease) and record
    their attempts in one transaction, then start each on the executor and save the references it gave."""
    now = clock.utcnow()
    with engine.db.connect() as connection:
        runs = {
            row.id: RunRow.of(row)
            for row in connection.execute(
                sa.select(*RunRow.columns()).where(
                    tables.runs.c.id.in_({run_id for run_id, _s, _a in wanted})
                )
            )
        }
    launches: list[tuple[RunRow, StepLaunch]] = []
    changed = 0
    for run_id, step, attempt in wanted:
        try:
            launches.append((runs[run_id], build_launch(engine, runs[run_id], step, attempt)))
        except Exception as exc:  # any reason it cannot be built ends the step, and says why
            changed += _fail_unstartable(
                engine, runs[run_id], step, attempt, f"cannot prepare the step: {exc}"
            )
    claimed: list[tuple[RunRow, StepLaunch]] = []
    with engine.db.begin() as connection:
        for run, launch in launches:
            lease = now + engine.lease
            if not claim_step(
                connection,
                run.id,
                launch.step,
                attempt=launch.attempt,
                owner=engine.owner,
                lease_expires=lease,
                now=now,
            ):
                continue  # another engine (or an action) got there first
            connection.execute(
                tables.step_executions.insert().values(
                    run_id=run.id,
                    step=launch.step,
                    attempt=launch.attempt,
                    executor=engine.executor.name,
                    image=launch.processor.image,
                    started_at=now,
                )
            )
            claimed.append((run, launch))
    references = []
    for run, launch in claimed:
        tracing.begin(engine.traces, run, launch.step)
        try:
            references.append(
                {"r": run.id, "s": launch.step, "a": launch.attempt, "ref": engine.executor.start(launch)}
            )
        except Exception as exc:  # a start that fails is a failed attempt; retries apply
            log.exception("could not start %s", launch.execution_id)
            reason = f"the executor could not start it: {exc}"
            record_result(engine, StepResult(run.id, launch.step, launch.attempt, "failed", None, reason))
    if references:
        run_steps, executions = tables.run_steps, tables.step_executions
        with engine.db.begin() as connection:
            connection.execute(
                run_steps.update()
                .where(
                    run_steps.c.run_id == sa.bindparam("r"),
                    run_steps.c.name == sa.bindparam("s"),
                    run_steps.c.attempt == sa.bindparam("a"),
                )
                .values(executor_ref=sa.bindparam("ref")),
                references,
            )
            connection.execute(
                executions.update()
                .where(
                    executions.c.run_id == sa.bindparam("r"),
                    executions.c.step == sa.bindparam("s"),
                    executions.c.attempt == sa.bindparam("a"),
                )
                .values(executor_ref=sa.bindparam("ref")),
                references,
            )
    return changed + len(claimed)


def _fail_unstartable(engine: Engine, run: RunRow, step: str, attempt: int, reason: str) -> int:
    now = clock.utcnow()
    with engine.db.begin() as connection:
        moved = claim_step(
            connection, run.id, step, attempt=attempt, owner=engine.owner, lease_expires=now, now=now
        ) and move_step(
            connection,
            run.id,
            step,
            StepState.RUNNING,
            StepState.FAILED,
            attempt=attempt,
            ended_at=now,
            reason=reason[:MAX_REASON],
            lease_owner=None,
            lease_expires=None,
        )
        if moved:
            park(connection, engine, run.id, step, StepState.FAILED, reason, now)
    return int(moved)


def heartbeat(engine: Engine) -> None:
    """Extend the lease of every execution this engine runs."""
    run_steps = tables.run_steps
    with engine.db.begin() as connection:
        connection.execute(
            run_steps.update()
            .where(run_steps.c.state == StepState.RUNNING, run_steps.c.lease_owner == engine.owner)
            .values(lease_expires=clock.utcnow() + engine.lease)
        )


def recover(engine: Engine) -> int:
    """Take over running steps whose lease ran out (their engine died): adopt the execution if the executor
    still knows it, otherwise requeue it (a lost execution costs no attempt)."""
    run_steps = tables.run_steps
    now = clock.utcnow()
    with engine.db.connect() as connection:
        expired = connection.execute(
            sa.select(
                run_steps.c.run_id,
                run_steps.c.name,
                run_steps.c.attempt,
                run_steps.c.lease_owner,
                run_steps.c.lease_expires,
                run_steps.c.executor_ref,
            ).where(run_steps.c.state == StepState.RUNNING, run_steps.c.lease_expires < now)
        ).all()
    taken = 0
    for row in expired:
        with engine.db.begin() as connection:
            won = connection.execute(
                run_steps.update()
                .where(
                    run_steps.c.run_id == row.run_id,
                    run_steps.c.name == row.name,
                    run_steps.c.state == StepState.RUNNING,
                    run_steps.c.attempt == row.attempt,
                    run_steps.c.lease_expires == row.lease_expires,
                )
                .values(lease_owner=engine.owner, lease_expires=clock.utcnow() + engine.lease)
            ).rowcount
            run = load_run(connection, row.run_id)
        if not won:
            continue
        taken += 1
        try:
            launch = build_launch(engine, run, row.name, row.attempt)
            known = engine.executor.adopt(launch, row.executor_ref)
        except Exception as exc:  # a step that cannot be rebuilt cannot be watched: requeue
            log.warning("cannot adopt %s/%s/%s: %s", row.run_id, row.name, row.attempt, exc)
            known = False
        log.info(
            "%s %s/%s/%s (lease of %s ran out)",
            "adopted" if known else "requeueing lost",
            row.run_id,
            row.name,
            row.attempt,
            row.lease_owner,
        )
        if not known:
            record_result(
                engine,
                StepResult(
                    row.run_id,
                    row.name,
                    row.attempt,
                    "lost",
                    None,
                    f"the executor no longer knows it after {row.lease_owner} stopped",
                ),
            )
    return taken


def kill_cancelled(engine: Engine) -> None:
    """Cancel, on the executor, this engine's executions of runs that were cancelled."""
    runs, run_steps = tables.runs, tables.run_steps
    with engine.db.connect() as connection:
        rows = connection.execute(
            sa.select(run_steps.c.run_id, run_steps.c.name, run_steps.c.attempt)
            .join(runs, runs.c.id == run_steps.c.run_id)
            .where(
                runs.c.state == RunState.CANCELLED,
                run_steps.c.state == StepState.RUNNING,
                run_steps.c.lease_owner == engine.owner,
            )
        ).all()
    current = {(run_id, step, attempt) for run_id, step, attempt in rows}
    for key in current - engine.cancelled_executions:
        engine.executor.cancel(*key)
    # Keep only those still running: the set never grows past the executions being cancelled right now.
    engine.cancelled_executions = current
