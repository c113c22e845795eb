"""The run engine on SQLite and PostgreSQL with the real local executor: a DAG in order, retries with backoff,
the parking lot and a restart once the cause is fixed, step logs, templating errors."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import sqlalchemy as sa

from control_plane.core.audit.trail import Actor, AuditFilter
from pipelines import tables
from pipelines.engine import ActionNotAllowed, BadRunRequest, RunRequest
from tests.integration.production_harness import (
    Harness,
    chain_yaml,
    parking_messages,
    rows_where,
    run_state,
    step,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)
OPERATOR = Actor(subject="alice", roles=("operator",), client="10.0.0.7")


def test_a_three_step_dag_runs_in_order_and_publishes_its_output(tmp_path: Path, db_url: str) -> None:
    harness = Harness(tmp_path, db_url)
    args = harness.args(sleep_s=0.1)
    harness.write_chain(
        "dag",
        chain_yaml(
            "dag",
            steps=[
                step("a", args=args),
                step("b", needs=["a"], args=args),
                step("c", needs=["b"], args=args),
            ],
            outputs=[{"product_type": "T_OUT", "step": "c", "pattern": "*.dat", "timeliness": "NRT"}],
        ),
    )
    with harness.production() as (production, services):
        run_id, created = production.engine.submit(RunRequest(chain_id="dag"), OPERATOR)
        assert created
        assert production.engine.run_until_idle(120)
        assert run_state(services, run_id) == "succeeded"
        records = harness.side_records()
        assert [record["step"] for record in records] == ["a", "b", "c"]
        assert all(earlier["end"] <= later["start"] for earlier, later in itertools.pairwise(records))
        with services.engine.connect() as connection:
            products = connection.execute(
                sa.select(tables.products).where(tables.products.c.run_id == run_id)
            ).all()
            traces = connection.execute(
                sa.select(tables.trace_events.c.step, tables.trace_events.c.event).where(
                    tables.trace_events.c.run_id == run_id
                )
            ).all()
            logs = (
                connection.execute(
                    sa.select(tables.step_log_lines.c.line).where(tables.step_log_lines.c.run_id == run_id)
                )
                .scalars()
                .all()
            )
        assert [(p.product_type, p.step, p.state) for p in products] == [("T_OUT", "c", "published")]
        assert sorted(traces) == sorted(
            [(s, e) for s in "abc" for e in ("BEGIN", "END")] + [("c", "PUBLISHED")]
        )
        assert "step a attempt 1 starts" in logs
        audit = services.audit.list(AuditFilter(action="run.submit"))
        assert audit[0]["target"] == run_id and audit[0]["client"] == "10.0.0.7"
        assert audit[0]["details"]["images"] == {"a": None, "b": None, "c": None}


def test_a_failing_step_is_retried_with_backoff_then_succeeds(tmp_path: Path, db_url: str) -> None:
    harness = Harness(tmp_path, db_url)
    harness.write_chain(
        "flaky",
        chain_yaml(
            "flaky",
            steps=[step("only", args=harness.args(fail_until=3), attempts=3, backoff_s=0.2)],
            outputs=[{"product_type": "T_OUT", "step": "only", "pattern": "*.dat", "timeliness": "NRT"}],
        ),
    )
    with harness.production() as (production, services):
        run_id, _ = production.engine.submit(RunRequest(chain_id="flaky"), OPERATOR)
        assert production.engine.run_until_idle(120)
        assert run_state(services, run_id) == "succeeded"
        executions = rows_where(services, tables.step_executions, "run_id", run_id, "started_at")
        assert [(e["attempt"], e["outcome"], e["exit_code"]) for e in executions] == [
            (1, "failed", 3), (2, "failed", 3), (3, "succeeded", 0),
        ]  # fmt: skip
        # Backoff: 0.2 s before the second attempt, 0.4 s before the third (policy factor 2).
        assert (executions[1]["started_at"] - executions[0]["ended_at"]).total_seconds() >= 0.2
        assert (executions[2]["started_at"] - executions[1]["ended_at"]).total_seconds() >= 0.4


def test_out_of_retries_parks_the_run_and_a_restart_after_the_fix_succeeds(
    tmp_path: Path, db_url: str
) -> None:
    harness = Harness(tmp_path, db_url)
    flag = tmp_path / "broken"
    flag.write_text("the cause")
    harness.write_chain(
        "fragile",
        chain_yaml(
            "fragile",
            steps=[
                step("prepare", args=harness.args(output="p.dat")),
                step("work", needs=["prepare"], args=harness.args(flag=str(flag)), attempts=2),
            ],
            outputs=[{"product_type": "T_OUT", "step": "work", "pattern": "out.dat", "timeliness": "NRT"}],
        ),
    )
    with harness.production() as (production, services):
        engine = production.engine
        run_id, _ = engine.submit(RunRequest(chain_id="fragile", parameters={"extra": "x"}), OPERATOR)
        assert engine.run_until_idle(120)
        assert run_state(services, run_id) == "failed"
        parked = engine.describe(run_id)
        assert parked["parked_at"] is not None and "work" in parked["reason"]
        with pytest.raises(ActionNotAllowed):
            engine.cancel(run_id, OPERATOR)
        flag.unlink()  # the operator fixes the cause
        engine.retry(run_id, OPERATOR, parking_lot=True)
        assert engine.run_until_idle(120)
        view = engine.describe(run_id)
        assert view["state"] == "succeeded" and view["parked_at"] is None
        work = next(item for item in view["steps"] if item["name"] == "work")
        assert [a["outcome"] for a in work["attempts"]] == ["failed", "failed", "succeeded"]
        prepare = next(item for item in view["steps"] if item["name"] == "prepare")
        assert len(prepare["attempts"]) == 1, "a restart reruns only the failed steps"
        actions = [
            (r["action"], r["outcome"]) for r in reversed(services.audit.list(AuditFilter(target=run_id)))
        ]
        assert actions == [
            ("run.submit", "success"), ("run.cancel", "failure"), ("parking-lot.restart", "success"),
        ]  # fmt: skip
        restart = services.audit.list(AuditFilter(action="parking-lot.restart"))[0]
        assert restart["details"]["non_allowlisted"] == ["extra"]
        assert [m["action"] for m in parking_messages(services) if m["run_id"] == run_id] == [
            "parked",
            "restart",
        ]


def test_a_missing_parameter_fails_the_run_with_a_clear_reason(tmp_path: Path, db_url: str) -> None:
    harness = Harness(tmp_path, db_url)
    harness.write_chain(
        "params",
        chain_yaml(
            "params",
            steps=[step("only", args=[*harness.args(), "{level}"])],
            outputs=[{"product_type": "T_OUT", "step": "only", "pattern": "*.dat", "timeliness": "NRT"}],
        ),
    )
    with harness.production() as (production, services):
        engine = production.engine
        run_id, _ = engine.submit(RunRequest(chain_id="params"), OPERATOR)
        assert engine.run_until_idle(60)
        view = engine.describe(run_id)
        assert view["state"] == "failed"
        assert "parameter 'level' is not set" in view["reason"] and "step 'only'" in view["reason"]
        with pytest.raises(ActionNotAllowed, match="resubmit it instead"):
            engine.retry(run_id, OPERATOR)
        ok_id, _ = engine.submit(RunRequest(chain_id="params", parameters={"level": "2"}), OPERATOR)
        assert engine.run_until_idle(60)
        assert run_state(services, ok_id) == "succeeded"
        with pytest.raises(BadRunRequest, match="lane 'nope'"):
            engine.submit(RunRequest(chain_id="params", lane="nope"), OPERATOR)
        with pytest.raises(BadRunRequest, match="chain missing is not known"):
            engine.submit(RunRequest(chain_id="missing"), OPERATOR)


def test_the_same_idempotency_key_gives_the_same_run(tmp_path: Path, db_url: str) -> None:
    harness = Harness(tmp_path, db_url)
    harness.write_chain(
        "once",
        chain_yaml(
            "once",
            steps=[step("only", args=harness.args())],
            outputs=[{"product_type": "T_OUT", "step": "only", "pattern": "*.dat", "timeliness": "NRT"}],
        ),
    )
    with harness.production() as (production, _services):
        first = production.engine.submit(RunRequest(chain_id="once", idempotency_key="k-1"), OPERATOR)
        second = production.engine.submit(RunRequest(chain_id="once", idempotency_key="k-1"), OPERATOR)
        assert first == (first[0], True) and second == (first[0], False)
        wait_for(lambda: production.engine.run_until_idle(1), "the run to end")
        assert len(harness.side_records()) == 1


def test_two_engines_on_one_database_never_start_a_step_twice(tmp_path: Path, db_url: str) -> None:
    harness = Harness(tmp_path, db_url)
    args = harness.args(sleep_s=0.05)
    harness.write_chain(
        "pair",
        chain_yaml(
            "pair",
            steps=[step("a", args=args), step("b", needs=["a"], args=args)],
            outputs=[{"product_type": "T_OUT", "step": "b", "pattern": "*.dat", "timeliness": "NRT"}],
        ),
    )
    with harness.production() as (first, services), harness.production() as (second, _):
        assert first.engine.owner != second.engine.owner
        run_ids = [first.engine.submit(RunRequest(chain_id="pair"), OPERATOR)[0] for _ in range(12)]
        first.start()
        second.start()
        wait_for(lambda: first.engine.idle(), "every run to end", deadline_s=150)
        assert {run_state(services, run_id) for run_id in run_ids} == {"succeeded"}
        started = [(r["run"], r["step"]) for r in harness.side_records()]
        assert sorted(started) == sorted((run_id, name) for run_id in run_ids for name in "ab")
        with services.engine.connect() as connection:
            executions = connection.execute(sa.select(tables.step_executions.c.executor_ref)).scalars().all()
        assert len(executions) == 24, "one attempt per step: no claim was lost or doubled"
