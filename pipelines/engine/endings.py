"""Ending steps from the executor's results: the attempt recorded, outputs published and traced, a retry after
backoff, the run parked when out of attempts, or a lost execution requeued without spending an attempt."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from control_plane.core import clock
from pipelines import tables
from pipelines.catalog import OutputContext
from pipelines.engine import tracing
from pipelines.engine.progress import MAX_REASON, finish_run, park, promote
from pipelines.engine.runs import RunRow, load_run, published_by
from pipelines.engine.states import RunState, StepState, move_step
from pipelines.executors.base import StepResult

if TYPE_CHECKING:
    from pipelines.engine.core import Engine

log = logging.getLogger(__name__)


def collect(engine: Engine) -> int:
    """Record every result the executor has."""
    results = engine.executor.poll()
    if results:
        engine.logs.flush()  # the lines a step wrote are stored before its end is
    for result in results:
        try:
            record_result(engine, result)
        except Exception:  # one bad result must not lose the others, nor stay unrecorded
            log.exception("could not record the end of %s/%s/%s", result.run_id, result.step, result.attempt)
            release_lease(engine, result)
    return len(results)


def release_lease(engine: Engine, result: StepResult) -> None:
    """Let the lease of an execution whose end could not be recorded run out now: recovery then adopts it
    again and the executor reports its end once more, instead of the step staying ``running`` forever."""
    run_steps = tables.run_steps
    try:
        with engine.db.begin() as connection:
            connection.execute(
                run_steps.update()
                .where(
                    run_steps.c.run_id == result.run_id,
                    run_steps.c.name == result.step,
                    run_steps.c.attempt == result.attempt,
                    run_steps.c.lease_owner == engine.owner,
                )
                .values(lease_owner=None, lease_expires=clock.utcnow())
            )
    except Exception:  # the database is down: the lease runs out by itself when heartbeats fail too
        log.exception("could not release the lease of %s/%s/%s", result.run_id, result.step, result.attempt)


def record_result(engine: Engine, result: StepResult) -> None:
    """One execution ended: record the attempt, then publish outputs, retry, park, or requeue."""
    run_steps = tables.run_steps
    now = clock.utcnow()
    with engine.db.connect() as connection:
        step_row = connection.execute(
            sa.select(run_steps).where(run_steps.c.run_id == result.run_id, run_steps.c.name == result.step)
        ).first()
        run = load_run(connection, result.run_id)
    if step_row is None or step_row.state != StepState.RUNNING or step_row.attempt != result.attempt:
        _close_execution(engine, result, now)  # a late report of an attempt already dealt with
        return
    started = step_row.started_at or now
    duration_s = (now - started).total_seconds()
    outcome, reason = result.outcome, result.reason
    if outcome == "cancelled" and run.state == RunState.RUNNING:
        # Nobody here asked for it (a Job deleted by hand, a process killed from outside): a failed attempt,
        # so retries and the parking lot apply instead of leaving its run unable to go on.
        outcome, reason = "failed", f"cancelled outside refsys: {reason}"
    outputs: list[str] = []
    if outcome == "succeeded":
        try:
            outputs = _publish(engine, run, result, started)
        except Exception as exc:  # outputs that cannot be published fail the attempt
            log.exception("publishing the outputs of %s/%s failed", run.id, result.step)
            outcome, reason = "failed", f"publishing its outputs failed: {exc}"
    if outcome in tracing.STATUS_OF_OUTCOME:
        tracing.end(
            engine.traces,
            run,
            result.step,
            status=tracing.STATUS_OF_OUTCOME[outcome],
            duration_s=duration_s,
            outputs=outputs,
            missing_outputs=_missing_outputs(engine, run, result.step, outcome),
        )
    with engine.db.begin() as connection:
        _close_execution(engine, result, now, outcome=outcome, connection=connection)
        _end_step(connection, engine, run, step_row, result, outcome, reason, now)


def _end_step(
    connection: sa.Connection,
    engine: Engine,
    run: RunRow,
    step_row: Any,
    result: StepResult,
    outcome: str,
    reason: str,
    now: datetime,
) -> None:
    name, attempt = result.step, result.attempt
    release: dict[str, Any] = {"lease_owner": None, "lease_expires": None, "exit_code": result.exit_code}
    if outcome == "lost":
        # The executor lost it (its process or Job vanished): run it again, without spending an attempt.
        move_step(
            connection,
            run.id,
            name,
            StepState.RUNNING,
            StepState.QUEUED,
            attempt=attempt,
            **release,
            max_attempts=step_row.max_attempts + 1,
            ready_at=now,
            reason=reason[:MAX_REASON],
        )
        return
    if outcome == "succeeded":
        move_step(
            connection,
            run.id,
            name,
            StepState.RUNNING,
            StepState.SUCCEEDED,
            attempt=attempt,
            ended_at=now,
            reason=None,
            **release,
        )
        if not promote(connection, engine, run.id, now):
            finish_run(connection, engine, run.id, now)
        return
    if outcome == "cancelled":
        move_step(
            connection,
            run.id,
            name,
            StepState.RUNNING,
            StepState.CANCELLED,
            attempt=attempt,
            ended_at=now,
            reason=reason[:MAX_REASON],
            **release,
        )
        finish_run(connection, engine, run.id, now)
        return
    state = StepState.TIMED_OUT if outcome == "timed-out" else StepState.FAILED
    if attempt < step_row.max_attempts and run.state == RunState.RUNNING:
        chain = engine.chain(run.chain_id, run.chain_version)
        policy = chain.step(name).retries
        failures = policy.max_attempts - (step_row.max_attempts - attempt)
        move_step(
            connection,
            run.id,
            name,
            StepState.RUNNING,
            StepState.QUEUED,
            attempt=attempt,
            **release,
            not_before=now + policy.delay(failures),
            ready_at=now,
            reason=f"attempt {attempt} {outcome}: {reason}"[:MAX_REASON],
        )
        return
    move_step(
        connection,
        run.id,
        name,
        StepState.RUNNING,
        state,
        attempt=attempt,
        ended_at=now,
        reason=reason[:MAX_REASON],
        **release,
    )
    if run.state == RunState.RUNNING:
        park(connection, engine, run.id, name, state, reason, now)


def _close_execution(
    engine: Engine,
    result: StepResult,
    now: datetime,
    *,
    outcome: str | None = None,
    connection: sa.Connection | None = None,
) -> None:
    executions = tables.step_executions
    query = (
        executions.update()
        .where(
            executions.c.run_id == result.run_id,
            executions.c.step == result.step,
            executions.c.attempt == result.attempt,
            executions.c.outcome.is_(None),
        )
        .values(ended_at=now, exit_code=result.exit_code, outcome=outcome or result.outcome)
    )
    if connection is not None:
        connection.execute(query)
        return
    with engine.db.begin() as own:
        own.execute(query)


def _publish(engine: Engine, run: RunRow, result: StepResult, started: datetime) -> list[str]:
    """Publish a succeeded step's outputs in the catalog and trace each; returns the product names."""
    chain = engine.chain(run.chain_id, run.chain_version)
    outputs = [output for output in chain.outputs if output.step == result.step]
    if not outputs:
        return []
    if result.output_dir is None:
        raise RuntimeError(
            "the executor handed over no output directory (on Kubernetes: set production.kubernetes.work_claim "
            "and production.kubernetes.work_mount)"
        )
    context = OutputContext(
        run_id=run.id,
        chain_id=run.chain_id,
        chain_version=run.chain_version,
        mission=run.mission,
        baseline=run.baseline,
        reprocessing=run.reprocessing,
        inputs=[*run.inputs, *published_by(engine.db, run.id, chain.step(result.step).needs)],
        t0=run.t0,
    )
    published = engine.catalog.publish_outputs(
        run=context, step=result.step, output_dir=result.output_dir, outputs=outputs
    )
    for product in published:
        if product.published_at is None:  # quarantined or held unscanned: not distributed, not traced as such
            continue
        tracing.published(
            engine.traces,
            run,
            result.step,
            product_name=product.name,
            product_type=product.product_type,
            timeliness_class=product.timeliness,
            t0=product.t0,
            published_at=product.published_at,
        )
    return [product.name for product in published]


def _missing_outputs(engine: Engine, run: RunRow, step: str, outcome: str) -> dict[str, int]:
    """Estimated products of this step's output types that will not exist: at least one of each when the step
    failed, plus one per input the run started without (when its wait for inputs ran out)."""
    lacking = sum(engine.missing_outputs(run).values())
    per_type = lacking + (0 if outcome == "succeeded" else 1)
    if not per_type:
        return {}
    chain = engine.chain(run.chain_id, run.chain_version)
    return {output.product_type: per_type for output in chain.outputs if output.step == step}
