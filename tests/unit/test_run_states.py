"""The run and step transition tables, the conditional updates that apply them, and the lane slot policy."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from control_plane.core import clock
from control_plane.core.config import DEFAULT_LANES, LaneSettings
from control_plane.core.db import Base, create_db_engine
from pipelines import tables
from pipelines.engine.slots import allocate
from pipelines.engine.states import (
    RUN_TERMINAL,
    RUN_TRANSITIONS,
    STEP_TRANSITIONS,
    IllegalTransition,
    RunState,
    StepState,
    check_run,
    check_step,
    claim_step,
    move_run,
    move_step,
)
from pipelines.engine.templates import TemplateError, render_step
from pipelines.spec import StepSpec


@pytest.mark.parametrize(
    "source, target",
    [
        (RunState.SUCCEEDED, RunState.RUNNING),  # a succeeded run is final
        (RunState.CANCELLED, RunState.RUNNING),  # so is a cancelled one: resubmit instead
        (RunState.PENDING, RunState.RUNNING),  # admission goes through queued
        (RunState.RUNNING, RunState.QUEUED),  # a started run never goes back
        (RunState.WAITING_INPUTS, RunState.SUCCEEDED),
    ],
)
def test_illegal_run_transitions_raise(source: RunState, target: RunState) -> None:
    with pytest.raises(IllegalTransition, match=f"run cannot go from {source} to {target}"):
        check_run(source, target)


@pytest.mark.parametrize(
    "source, target",
    [
        (StepState.SUCCEEDED, StepState.QUEUED),  # a succeeded step never runs again
        (StepState.PENDING, StepState.RUNNING),  # a step starts only once ready (queued) and claimed
        (StepState.CANCELLED, StepState.QUEUED),
        (StepState.QUEUED, StepState.SUCCEEDED),
    ],
)
def test_illegal_step_transitions_raise(source: StepState, target: StepState) -> None:
    with pytest.raises(IllegalTransition):
        check_step(source, target)


def test_every_state_has_a_row_and_terminal_runs_only_reopen_by_retry() -> None:
    assert set(RUN_TRANSITIONS) == set(RunState) and set(STEP_TRANSITIONS) == set(StepState)
    for state in RUN_TERMINAL:
        assert RUN_TRANSITIONS[state] <= {RunState.RUNNING}
    check_run(RunState.FAILED, RunState.RUNNING)  # retry / parking-lot restart


@pytest.fixture
def connection(tmp_path: Path) -> sa.Connection:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'states.db'}")
    Base.metadata.create_all(engine)
    now = clock.utcnow()
    with engine.begin() as conn:
        conn.execute(
            tables.runs.insert().values(
                id="r1",
                chain_id="c",
                chain_version="1",
                mission="S2",
                lane="NRT",
                state="queued",
                trigger="manual",
                parameters={},
                inputs=[],
                requested_by="t",
                created_at=now,
                updated_at=now,
            )
        )
        conn.execute(
            tables.run_steps.insert().values(
                run_id="r1", name="s", state="queued", lane="NRT", attempt=0, max_attempts=3
            )
        )
    return engine.connect()


def test_a_conditional_update_lets_exactly_one_of_two_racers_win(connection: sa.Connection) -> None:
    assert move_run(connection, "r1", RunState.QUEUED, RunState.RUNNING)
    assert not move_run(connection, "r1", RunState.QUEUED, RunState.RUNNING), "the second racer must lose"
    now = clock.utcnow()
    lease = now + timedelta(seconds=10)
    assert claim_step(connection, "r1", "s", attempt=1, owner="engine-a", lease_expires=lease, now=now)
    assert not claim_step(connection, "r1", "s", attempt=1, owner="engine-b", lease_expires=lease, now=now)
    row = connection.execute(sa.select(tables.run_steps)).one()
    assert (row.state, row.attempt, row.lease_owner, row.lease_expires) == ("running", 1, "engine-a", lease)
    # A late result of an older attempt cannot end the current one.
    assert not move_step(connection, "r1", "s", StepState.RUNNING, StepState.SUCCEEDED, attempt=0)
    with pytest.raises(IllegalTransition):
        move_step(connection, "r1", "s", StepState.RUNNING, StepState.PENDING)


LANES = {
    "NRT": LaneSettings(priority=80, concurrency=4, reserved=2),
    "NTC": LaneSettings(priority=40, concurrency=4, reserved=0),
    "REPRO": LaneSettings(priority=0, concurrency=4, reserved=0, throttled=True),
}


@pytest.mark.parametrize(
    "running, ready, expected",
    [
        (
            {},
            {"NRT": 10, "NTC": 10, "REPRO": 10},
            {"NRT": 4, "NTC": 2},
        ),  # 6 slots: NRT's 2 reserved + 4 shared
        (
            {},
            {"NTC": 10, "REPRO": 10},
            {"NTC": 4},
        ),  # NTC never takes NRT's reserved slots; REPRO gets nothing
        ({}, {"REPRO": 10}, {"REPRO": 4}),  # only slots nobody else wants right now
        ({"NTC": 4}, {"NRT": 1, "REPRO": 5}, {"NRT": 1}),  # shared full: NRT still starts in its reservation
        ({"NRT": 1}, {"NRT": 1, "NTC": 1}, {"NRT": 1, "NTC": 1}),
        ({"NRT": 4, "NTC": 2}, {"NRT": 3, "NTC": 3, "REPRO": 3}, {}),  # everything in use
    ],
)
def test_slots_go_by_priority_reservation_and_throttling(
    running: dict[str, int], ready: dict[str, int], expected: dict[str, int]
) -> None:
    assert allocate(lanes=LANES, running=running, ready=ready, max_parallel=6) == expected


def test_default_lanes_leave_reprocessing_only_spare_slots() -> None:
    starts = allocate(lanes=DEFAULT_LANES, running={}, ready={"NRT": 20, "REPROCESSING": 20}, max_parallel=16)
    assert starts == {"NRT": 8, "REPROCESSING": 2}


def test_arguments_are_templated_and_a_missing_parameter_names_itself() -> None:
    spec = StepSpec.model_validate(
        {"name": "l2a", "processor": {"name": "p", "version": "1"},
         "args": ["--level={level}", "{inputs}", "--out", "{output_dir}", "{run_id}"]}
    )  # fmt: skip
    args, _env = render_step(spec, parameters={"level": 2}, run_id="r9", input_paths=["a.zip", "b.zip"])
    assert args == ["--level=2", "a.zip", "b.zip", "--out", "out", "r9"]
    with pytest.raises(TemplateError, match=r"step 'l2a': argument 1 '--level=\{level\}': parameter 'level'"):
        render_step(spec, parameters={}, run_id="r9", input_paths=[])
