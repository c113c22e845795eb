"""What operators do to runs (DESIGN.md "Run actions"): cancel, retry (a parking-lot restart), resubmit, drop.

``retry`` gives the failed steps of a run new attempts in the same run (their attempt budget starts again);
``resubmit`` makes a new run linked to the old one by ``resubmitted_from``, with the same inputs and parameters;
``drop`` takes a run out of the parking lot and changes nothing else. Every action is audited with what the SIEM
side watches (actor, client address, chain, lane, each step's processor image, parameters outside the chain's
defaults); the parking-lot ones are also published on the ``parking-lot`` topic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from control_plane.core import clock
from control_plane.core.audit.trail import Actor
from control_plane.core.bus import topics
from pipelines import tables
from pipelines.engine.requests import ActionNotAllowed, BadRunRequest, RunRequest
from pipelines.engine.runs import RunRow, load_run
from pipelines.engine.states import RUN_TERMINAL, RunState, StepState, move_run
from pipelines.spec import ChainSpec

if TYPE_CHECKING:
    from pipelines.engine.core import Engine

__all__ = ["ActionNotAllowed", "cancel", "drop", "resubmit", "retry", "run_details"]


def run_details(engine: Engine, chain: ChainSpec, lane: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The audit details of an action on a run of ``chain``."""
    return {
        "chain": chain.key,
        "lane": lane,
        "images": {step.name: engine.image_of(chain, step.name) for step in chain.steps},
        "parameters": dict(parameters),
        "non_allowlisted": sorted(name for name in parameters if name not in chain.parameters),
    }


def cancel(engine: Engine, run_id: str, actor: Actor) -> None:
    """Cancel a run that has not ended: steps not started are cancelled now, running ones are stopped on the
    executor by the scheduling thread (their process group killed, or their Job deleted)."""
    run = _load(engine, run_id)
    run_steps = tables.run_steps
    try:
        with engine.db.begin() as connection:
            if run.state in RUN_TERMINAL or not move_run(
                connection,
                run_id,
                run.state,
                RunState.CANCELLED,
                ended_at=clock.utcnow(),
                reason=f"cancelled by {actor.subject}",
            ):
                raise _Refusal(
                    f"run {run_id} is {_state(engine, run_id)}; only a run that has not ended can "
                    "be cancelled"
                )
            connection.execute(
                run_steps.update()
                .where(
                    run_steps.c.run_id == run_id, run_steps.c.state.in_((StepState.PENDING, StepState.QUEUED))
                )
                .values(state=StepState.CANCELLED, ended_at=clock.utcnow())
            )
    except _Refusal as refusal:
        _refuse(engine, actor, "run.cancel", run, str(refusal))
    _audit(engine, actor, "run.cancel", run)
    engine.wake()


def retry(engine: Engine, run_id: str, actor: Actor, *, parking_lot: bool = False) -> None:
    """New attempts of the failed steps of a failed (or timed-out) run, in the same run; it leaves the
    parking lot. ``parking_lot``: the action is the parking lot's ``restart`` (audited and published so)."""
    action = "parking-lot.restart" if parking_lot else "run.retry"
    run_steps = tables.run_steps
    run = _load(engine, run_id)
    now = clock.utcnow()
    try:
        with engine.db.begin() as connection:
            if parking_lot and not _parked(connection, run_id):
                raise _Refusal(f"run {run_id} is not in the parking lot")
            if run.state not in (RunState.FAILED, RunState.TIMED_OUT):
                raise _Refusal(f"run {run_id} is {run.state}; only a failed or timed-out run can be retried")
            failed = connection.execute(
                sa.select(run_steps.c.name, run_steps.c.state, run_steps.c.attempt).where(
                    run_steps.c.run_id == run_id,
                    run_steps.c.state.in_((StepState.FAILED, StepState.TIMED_OUT)),
                )
            ).all()
            if not failed:
                raise _Refusal(
                    f"run {run_id} failed before any step ran ({_reason(connection, run_id)}); "
                    "resubmit it instead"
                )
            if not move_run(
                connection, run_id, run.state, RunState.RUNNING, parked_at=None, ended_at=None, reason=None
            ):
                raise _Refusal(f"run {run_id} changed state meanwhile; look again")
            chain = engine.chain(run.chain_id, run.chain_version)
            for name, state, attempt in failed:
                connection.execute(
                    run_steps.update()
                    .where(run_steps.c.run_id == run_id, run_steps.c.name == name, run_steps.c.state == state)
                    .values(
                        state=StepState.QUEUED,
                        max_attempts=attempt + chain.step(name).retries.max_attempts,
                        not_before=None,
                        ready_at=now,
                        ended_at=None,
                        reason=f"{action} by {actor.subject}",
                    )
                )
    except _Refusal as refusal:
        _refuse(engine, actor, action, run, str(refusal))
    _audit(engine, actor, action, run, steps=[name for name, _state, _attempt in failed])
    if parking_lot:
        _notify(engine, actor, "restart", run)
    engine.wake()


def resubmit(engine: Engine, run_id: str, actor: Actor, *, parking_lot: bool = False) -> str:
    """A new run of the same chain version with the same inputs and parameters, linked to this one; returns its
    id. A parked run leaves the parking lot (and the ``parking-lot`` topic hears of it, whichever route asked).

    Idempotent: resubmitting the same run again gives the same new run, so an operator retrying after a timeout,
    or after a crash between the new run and the old one leaving the parking lot, finishes the job instead of
    making a second run."""
    action = "parking-lot.resubmit" if parking_lot else "run.resubmit"
    run = _load(engine, run_id)
    with engine.db.connect() as connection:
        parked = _parked(connection, run_id)
    if parking_lot and not parked:
        _refuse(engine, actor, action, run, f"run {run_id} is not in the parking lot")
    if run.state not in RUN_TERMINAL:
        _refuse(
            engine, actor, action, run, f"run {run_id} is {run.state}; only an ended run can be resubmitted"
        )
    request = RunRequest(
        chain_id=run.chain_id,
        chain_version=run.chain_version,
        parameters=dict(run.parameters),
        inputs=list(run.inputs),
        lane=run.lane,
        trigger="resubmit",
        campaign_id=run.campaign_id,
        baseline=run.baseline,
        resubmitted_from=run_id,
        idempotency_key=f"resubmit:{run_id}",
    )
    try:
        new_id, _created = engine.submit(request, actor)
    except BadRunRequest as exc:
        _refuse(engine, actor, action, run, f"run {run_id} cannot be resubmitted: {exc}")
    if parked:
        with engine.db.begin() as connection:
            connection.execute(tables.runs.update().where(tables.runs.c.id == run_id).values(parked_at=None))
    _audit(engine, actor, action, run, new_run=new_id)
    if parked:
        _notify(engine, actor, "resubmit", run, new_run_id=new_id)
    return new_id


def drop(engine: Engine, run_id: str, actor: Actor) -> None:
    """Take a run out of the parking lot: an operator decided it needs nothing more."""
    runs = tables.runs
    run = _load(engine, run_id)
    with engine.db.begin() as connection:
        dropped = connection.execute(
            runs.update().where(runs.c.id == run_id, runs.c.parked_at.is_not(None)).values(parked_at=None)
        ).rowcount
    if not dropped:
        _refuse(engine, actor, "parking-lot.drop", run, f"run {run_id} is not in the parking lot")
    _audit(engine, actor, "parking-lot.drop", run)
    _notify(engine, actor, "drop", run)


def _audit(engine: Engine, actor: Actor, action: str, run: RunRow, **extra: Any) -> None:
    chain = engine.chain(run.chain_id, run.chain_version)
    engine.audit.append(
        actor=actor,
        action=action,
        outcome="success",
        target=run.id,
        details={**run_details(engine, chain, run.lane, run.parameters), "state_before": run.state, **extra},
    )


def _refuse(engine: Engine, actor: Actor, action: str, run: RunRow, reason: str) -> Any:
    """Audit the refused action and raise ``ActionNotAllowed`` (a 409 for the API)."""
    engine.audit.append(
        actor=actor,
        action=action,
        outcome="failure",
        target=run.id,
        details={"chain": f"{run.chain_id}@{run.chain_version}", "lane": run.lane, "reason": reason},
    )
    raise ActionNotAllowed(reason)


def _notify(engine: Engine, actor: Actor, action: str, run: RunRow, **extra: Any) -> None:
    engine.bus.publish(
        topics.PARKING_LOT,
        run.id,
        [
            {
                "kind": "run",
                "action": action,
                "run_id": run.id,
                "chain": run.chain_id,
                "chain_version": run.chain_version,
                "lane": run.lane,
                "actor": actor.subject,
                "client": actor.client,
                "at": clock.rfc3339(clock.utcnow()),
                **extra,
            }
        ],
    )


def _parked(connection: sa.Connection, run_id: str) -> bool:
    runs = tables.runs
    return connection.execute(sa.select(runs.c.parked_at).where(runs.c.id == run_id)).scalar() is not None


class _Refusal(Exception):
    """Raised inside an action's transaction (rolling it back) so that the refusal is audited after it."""


def _load(engine: Engine, run_id: str) -> RunRow:
    with engine.db.connect() as connection:
        return load_run(connection, run_id)


def _state(engine: Engine, run_id: str) -> str:
    return str(_load(engine, run_id).state)


def _reason(connection: sa.Connection, run_id: str) -> str:
    reason = connection.execute(sa.select(tables.runs.c.reason).where(tables.runs.c.id == run_id)).scalar()
    return str(reason or "no reason recorded")
