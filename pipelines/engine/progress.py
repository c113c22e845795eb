"""How a run moves on as its steps end: steps made ready once their needs succeeded, the run's terminal state
once it can go no further, the parking lot when a step is out of attempts. Called inside the caller's
transaction, so a step's end and its consequences are written together."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa

from control_plane.core import clock
from control_plane.core.bus import topics
from pipelines import tables
from pipelines.engine.runs import load_run
from pipelines.engine.states import STEP_TERMINAL, RunState, StepState, move_run, move_step

if TYPE_CHECKING:
    from pipelines.engine.core import Engine

log = logging.getLogger(__name__)
MAX_REASON = 1024


def promote(connection: sa.Connection, engine: Engine, run_id: str, now: datetime) -> int:
    """pending -> queued for each step of a running run whose ``needs`` have all succeeded."""
    run_steps = tables.run_steps
    run = load_run(connection, run_id)
    if run.state != RunState.RUNNING:
        return 0
    chain = engine.chain(run.chain_id, run.chain_version)
    states = dict(
        connection.execute(
            sa.select(run_steps.c.name, run_steps.c.state).where(run_steps.c.run_id == run_id)
        ).all()
    )
    promoted = 0
    for step in chain.steps:
        if states.get(step.name) != StepState.PENDING:
            continue
        if all(states.get(need) == StepState.SUCCEEDED for need in step.needs):
            promoted += move_step(
                connection, run_id, step.name, StepState.PENDING, StepState.QUEUED, ready_at=now
            )
    return promoted


def cancel_unstarted(connection: sa.Connection, run_id: str) -> None:
    """Steps of an ended run that never started (pending or queued) are cancelled."""
    run_steps = tables.run_steps
    connection.execute(
        run_steps.update()
        .where(run_steps.c.run_id == run_id, run_steps.c.state.in_((StepState.PENDING, StepState.QUEUED)))
        .values(state=StepState.CANCELLED, ended_at=clock.utcnow())
    )


def finish_run(
    connection: sa.Connection, engine: Engine, run_id: str, now: datetime, *, stalled: bool = False
) -> int:
    """Give a running run its terminal state once it can go no further: parked when a step is out of
    attempts, succeeded when every step succeeded, cancelled when the rest were cancelled. ``stalled``: no
    step is queued or running and none could be made ready, so pending steps will never start either."""
    run_steps = tables.run_steps
    rows = connection.execute(
        sa.select(run_steps.c.name, run_steps.c.state, run_steps.c.reason).where(run_steps.c.run_id == run_id)
    ).all()
    if stalled and any(row.state in (StepState.QUEUED, StepState.RUNNING) for row in rows):
        return 0  # it moved on since the caller looked
    failed = [row for row in rows if row.state in (StepState.FAILED, StepState.TIMED_OUT)]
    if failed:
        first = failed[0]
        return int(park(connection, engine, run_id, first.name, first.state, first.reason or "", now))
    unfinished = [row.name for row in rows if row.state not in STEP_TERMINAL]
    if unfinished and not stalled:
        return 0
    if all(row.state == StepState.SUCCEEDED for row in rows):
        return int(move_run(connection, run_id, RunState.RUNNING, RunState.SUCCEEDED, ended_at=now))
    reason = "steps were cancelled" + (f"; {', '.join(unfinished)} can never start" if unfinished else "")
    return int(
        move_run(connection, run_id, RunState.RUNNING, RunState.CANCELLED, ended_at=now, reason=reason)
    )


def park(
    connection: sa.Connection,
    engine: Engine,
    run_id: str,
    step: str,
    step_state: str,
    reason: str,
    now: datetime,
) -> bool:
    """A step is out of attempts: the run fails (or times out) and waits in the parking lot for an operator."""
    target = RunState.TIMED_OUT if step_state == StepState.TIMED_OUT else RunState.FAILED
    why = f"step {step!r} {step_state} after its last attempt: {reason}"[:MAX_REASON]
    if not move_run(connection, run_id, RunState.RUNNING, target, ended_at=now, parked_at=now, reason=why):
        return False
    run = load_run(connection, run_id)
    engine.bus.publish(
        topics.PARKING_LOT,
        run_id,
        [
            {
                "kind": "run",
                "action": "parked",
                "run_id": run_id,
                "chain": run.chain_id,
                "chain_version": run.chain_version,
                "lane": run.lane,
                "step": step,
                "state": target,
                "reason": why,
                "actor": "refsys:engine",
                "at": clock.rfc3339(now),
            }
        ],
    )
    log.warning("run %s parked: %s", run_id, why)
    return True
