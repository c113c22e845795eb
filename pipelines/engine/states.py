"""Run and step states, and the only ways they may change.

Each state machine is a small explicit table (from -> the states it may go to). Every change is written as a
conditional UPDATE (``WHERE state = <the state we read>``), so when two engines (or an engine and an operator's
action) race for the same row, exactly one wins and the other sees that it lost; an illegal change raises before
anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from control_plane.core import clock
from pipelines import tables


class RunState(StrEnum):
    PENDING = "pending"
    WAITING_INPUTS = "waiting-inputs"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed-out"


class StepState(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed-out"


RUN_TERMINAL = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT})
STEP_TERMINAL = frozenset({StepState.SUCCEEDED, StepState.FAILED, StepState.CANCELLED, StepState.TIMED_OUT})

RUN_TRANSITIONS: Mapping[RunState, frozenset[RunState]] = {
    # Admission: inputs complete -> queued; missing -> waiting; a bad request (missing parameter) -> failed.
    RunState.PENDING: frozenset(
        {RunState.WAITING_INPUTS, RunState.QUEUED, RunState.FAILED, RunState.CANCELLED}
    ),
    # Inputs arrived, or the wait ran out: queued (run with what is there) or failed (``on_timeout: fail``).
    RunState.WAITING_INPUTS: frozenset({RunState.QUEUED, RunState.FAILED, RunState.CANCELLED}),
    # Queued waits for a slot of its chain (``max_concurrent_runs``).
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.FAILED, RunState.CANCELLED}),
    RunState.RUNNING: frozenset(
        {RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT}
    ),
    RunState.SUCCEEDED: frozenset(),
    # Retry (or a parking-lot restart) gives a failed run new attempts of its failed steps, in the same run.
    RunState.FAILED: frozenset({RunState.RUNNING}),
    RunState.TIMED_OUT: frozenset({RunState.RUNNING}),
    RunState.CANCELLED: frozenset(),
}

STEP_TRANSITIONS: Mapping[StepState, frozenset[StepState]] = {
    # Its ``needs`` succeeded: ready (queued for a slot). A cancelled run cancels it.
    StepState.PENDING: frozenset({StepState.QUEUED, StepState.CANCELLED}),
    # Claimed by an engine (with a lease); or the run was cancelled before it started.
    StepState.QUEUED: frozenset({StepState.RUNNING, StepState.CANCELLED}),
    # Back to queued: a retry after backoff, or a lost execution requeued.
    StepState.RUNNING: frozenset(
        {StepState.SUCCEEDED, StepState.FAILED, StepState.TIMED_OUT, StepState.CANCELLED, StepState.QUEUED}
    ),
    StepState.SUCCEEDED: frozenset(),
    # An operator's retry of the run gives it fresh attempts.
    StepState.FAILED: frozenset({StepState.QUEUED}),
    StepState.TIMED_OUT: frozenset({StepState.QUEUED}),
    StepState.CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    """A state change the tables above do not allow (a bug, or an action the state does not permit)."""

    def __init__(self, kind: str, source: str, target: str) -> None:
        super().__init__(f"{kind} cannot go from {source} to {target}")
        self.kind, self.source, self.target = kind, source, target


def check_run(source: str, target: str) -> None:
    """Raise ``IllegalTransition`` unless a run may go from ``source`` to ``target``."""
    if RunState(target) not in RUN_TRANSITIONS[RunState(source)]:
        raise IllegalTransition("run", source, target)


def check_step(source: str, target: str) -> None:
    """Raise ``IllegalTransition`` unless a step may go from ``source`` to ``target``."""
    if StepState(target) not in STEP_TRANSITIONS[StepState(source)]:
        raise IllegalTransition("step", source, target)


def move_run(connection: sa.Connection, run_id: str, source: str, target: str, **values: Any) -> bool:
    """Move one run from ``source`` to ``target`` (plus ``values``) if it is still in ``source``; True if this
    call made the change, False if someone else changed the run first."""
    check_run(source, target)
    runs = tables.runs
    result = connection.execute(
        runs.update()
        .where(runs.c.id == run_id, runs.c.state == source)
        .values(state=target, updated_at=values.pop("updated_at", clock.utcnow()), **values)
    )
    return result.rowcount == 1


def move_step(
    connection: sa.Connection,
    run_id: str,
    step: str,
    source: str,
    target: str,
    *,
    attempt: int | None = None,
    **values: Any,
) -> bool:
    """Move one step from ``source`` to ``target`` (plus ``values``) if it is still there (and, with
    ``attempt``, still at that attempt, so a late result of an old attempt cannot touch a newer one)."""
    check_step(source, target)
    steps = tables.run_steps
    query = steps.update().where(steps.c.run_id == run_id, steps.c.name == step, steps.c.state == source)
    if attempt is not None:
        query = query.where(steps.c.attempt == attempt)
    return connection.execute(query.values(state=target, **values)).rowcount == 1


def claim_step(
    connection: sa.Connection,
    run_id: str,
    step: str,
    *,
    attempt: int,
    owner: str,
    lease_expires: datetime,
    now: datetime,
) -> bool:
    """queued -> running as attempt ``attempt``, under this engine's lease: the one way a step starts. The
    condition includes the previous attempt number, so no two engines can ever start the same attempt."""
    check_step(StepState.QUEUED, StepState.RUNNING)
    steps = tables.run_steps
    result = connection.execute(
        steps.update()
        .where(
            steps.c.run_id == run_id,
            steps.c.name == step,
            steps.c.state == StepState.QUEUED,
            steps.c.attempt == attempt - 1,
        )
        .values(
            state=StepState.RUNNING,
            attempt=attempt,
            lease_owner=owner,
            lease_expires=lease_expires,
            started_at=now,
            ended_at=None,
            exit_code=None,
            executor_ref=None,
            reason=None,
            not_before=None,
        )
    )
    return result.rowcount == 1
