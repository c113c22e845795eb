"""The engine's harder paths on SQLite and PostgreSQL: waiting for inputs (fed by ``add_input``, or run out with
``on_timeout: run``/``fail``), a lost execution of a dead engine requeued without spending an attempt, a step
timeout, chain run limits, and step logs reaching telemetry with run and step ids."""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from control_plane.core import clock
from control_plane.core.audit.trail import Actor
from control_plane.core.bus import topics
from control_plane.core.services import open_services
from pipelines import tables
from pipelines.engine import ActionNotAllowed, RunRequest
from pipelines.executors.base import Executor, StepLaunch, StepResult
from pipelines.production import Production
from tests.apps import prepare_database
from tests.integration.production_harness import Harness, chain_yaml, run_state, step, wait_for

pytestmark = pytest.mark.timeout(180)
OPERATOR = Actor(subject="omar", roles=("operator",), client="10.0.0.8")
OUT = [{"product_type": "T_OUT", "step": "only", "pattern": "*.dat", "timeliness": "NRT"}]


def _product(production, tmp_path: Path, name: str, product_type: str) -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / name
    path.write_text(name)
    return str(
        production.catalog.register_external(path, product_type=product_type, mission="S2", actor=OPERATOR).id
    )


def test_a_run_waits_for_its_inputs_and_starts_once_they_arrive(tmp_path: Path, db_url: str) -> None:
    harness = Harness(tmp_path, db_url)
    inputs = [
        {"product_type": "T_A", "wait": {"timeout_s": 3600, "on_timeout": "fail"}},
        {"product_type": "T_B", "count": 2, "wait": {"timeout_s": 3600, "on_timeout": "fail"}},
    ]
    args = [*harness.args(), "{inputs}"]
    harness.write_chain(
        "join", chain_yaml("join", inputs=inputs, steps=[step("only", args=args)], outputs=OUT)
    )
    with harness.production() as (production, services):
        engine = production.engine
        first = _product(production, tmp_path, "a1.dat", "T_A")
        run_id, _ = engine.submit(RunRequest(chain_id="join", inputs=[first], trigger="systematic"), OPERATOR)
        engine.run_until_idle(30)
        view = engine.describe(run_id)
        assert (
            view["state"] == "waiting-inputs"
            and "T_B x2" in view["reason"]
            and view["wait_until"] is not None
        )
        engine.add_input(run_id, _product(production, tmp_path, "b1.dat", "T_B"))
        engine.add_input(run_id, first)  # already held: nothing changes
        engine.run_until_idle(30)
        assert run_state(services, run_id) == "waiting-inputs"
        engine.add_input(run_id, _product(production, tmp_path, "b2.dat", "T_B"))
        assert engine.run_until_idle(60)
        assert run_state(services, run_id) == "succeeded"
        assert len(engine.describe(run_id)["inputs"]) == 3
        with pytest.raises(ActionNotAllowed):
            engine.add_input(run_id, first + "x")


@pytest.mark.parametrize("on_timeout, expected", [("run", "succeeded"), ("fail", "failed")])
def test_the_wait_policy_decides_when_inputs_never_come(
    tmp_path: Path, db_url: str, on_timeout: str, expected: str
) -> None:
    harness = Harness(tmp_path, db_url)
    inputs = [{"product_type": "T_A", "wait": {"timeout_s": 1, "on_timeout": on_timeout}}]
    harness.write_chain(
        "late", chain_yaml("late", inputs=inputs, steps=[step("only", args=harness.args())], outputs=OUT)
    )
    with harness.production() as (production, services):
        run_id, _ = production.engine.submit(RunRequest(chain_id="late", trigger="systematic"), OPERATOR)
        wait_for(
            lambda: production.engine.run_until_idle(5) and run_state(services, run_id) == expected,
            f"the run {expected}",
        )
        view = production.engine.describe(run_id)
        assert "T_A x1" in view["reason"]
        if expected == "succeeded":
            with services.engine.connect() as connection:
                end = connection.execute(
                    sa.select(tables.trace_events.c.body).where(
                        tables.trace_events.c.run_id == run_id, tables.trace_events.c.event == "END"
                    )
                ).scalar_one()
            assert end["missing_outputs"] == {"T_OUT": 1}


def test_a_lost_execution_of_a_dead_engine_is_requeued_without_spending_an_attempt(
    tmp_path: Path, db_url: str
) -> None:
    harness = Harness(tmp_path, db_url, lease_s=0.5)
    harness.write_chain("lost", chain_yaml("lost", steps=[step("only", args=harness.args())], outputs=OUT))
    with harness.production() as (production, services):
        engine = production.engine
        run_id, _ = engine.submit(RunRequest(chain_id="lost"), OPERATOR)
        # A previous engine claimed the step and died before its executor started it: nothing runs it.
        past = clock.utcnow() - timedelta(seconds=5)
        with services.engine.begin() as connection:
            connection.execute(
                tables.runs.update()
                .where(tables.runs.c.id == run_id)
                .values(state="running", started_at=past)
            )
            connection.execute(
                tables.run_steps.update()
                .where(tables.run_steps.c.run_id == run_id)
                .values(
                    state="running", attempt=1, lease_owner="dead:1:x", lease_expires=past, started_at=past
                )
            )
            connection.execute(
                tables.step_executions.insert().values(
                    run_id=run_id, step="only", attempt=1, executor="local", started_at=past
                )
            )
        assert engine.run_until_idle(60)
        view = engine.describe(run_id)
        assert view["state"] == "succeeded"
        only = view["steps"][0]
        assert [(a["attempt"], a["outcome"]) for a in only["attempts"]] == [(1, "lost"), (2, "succeeded")]
        assert only["max_attempts"] == 2, "the lost attempt gave one back"
        assert [r["attempt"] for r in harness.side_records()] == [2]


def test_a_step_past_its_timeout_is_killed_and_the_run_times_out(tmp_path: Path, db_url: str) -> None:
    harness = Harness(tmp_path, db_url)
    slow = {**step("only", args=harness.args(sleep_s=60)), "timeout_s": 1}
    harness.write_chain("slow", chain_yaml("slow", steps=[slow], outputs=OUT))
    with harness.production() as (production, _services):
        run_id, _ = production.engine.submit(RunRequest(chain_id="slow"), OPERATOR)
        assert production.engine.run_until_idle(60)
        view = production.engine.describe(run_id)
        assert view["state"] == "timed-out" and view["parked_at"] is not None
        assert view["steps"][0]["attempts"][0]["outcome"] == "timed-out"
        assert harness.side_records() == [], "the step was killed before it could finish"


def test_a_chain_runs_at_most_max_concurrent_runs_at_once(tmp_path: Path, db_url: str) -> None:
    harness = Harness(tmp_path, db_url)
    harness.write_chain(
        "single",
        chain_yaml(
            "single", max_concurrent_runs=1, steps=[step("only", args=harness.args(sleep_s=0.2))], outputs=OUT
        ),
    )
    with harness.production() as (production, _services):
        for _ in range(3):
            production.engine.submit(RunRequest(chain_id="single"), OPERATOR)
        assert production.engine.run_until_idle(120)
        records = sorted(harness.side_records(), key=lambda r: r["start"])
        assert len(records) == 3
        assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(records))


def test_step_output_reaches_telemetry_as_ecs_logs_with_run_and_step_ids(tmp_path: Path, db_url: str) -> None:
    harness = Harness(tmp_path, db_url)
    harness.write_chain(
        "talk",
        chain_yaml("talk", steps=[step("only", args=harness.args(fail_until=2), attempts=2)], outputs=OUT),
    )
    with harness.production() as (production, services):
        run_id, _ = production.engine.submit(RunRequest(chain_id="talk"), OPERATOR)
        assert production.engine.run_until_idle(60)
        consumer = services.bus.consumer(topics.TELEMETRY, "test-logs")
        docs = []
        while batch := consumer.poll(max_records=1000, timeout_s=0.5):
            docs += [r.value for r in batch if r.value["event"]["dataset"] == "refsys.production.log"]
        consumer.close()
        lines = {
            (
                d["labels"]["run_id"],
                d["labels"]["step"],
                d["labels"]["attempt"],
                d["log"]["logger"],
                d["message"],
            )
            for d in docs
        }
        assert (run_id, "only", "1", "stderr", "failing on purpose") in lines
        assert (run_id, "only", "2", "stdout", "step only attempt 2 starts") in lines
        assert all(d["event"]["id"] and d["@timestamp"] for d in docs)


class ScriptedExecutor(Executor):
    """An executor double that ends each execution with the next scripted outcome (the real ones are tested
    elsewhere; this one reports what they rarely do, such as a cancellation nobody asked for)."""

    name = "scripted"

    def __init__(self, outcomes: list[str], output_dir: Path) -> None:
        self.outcomes = outcomes
        self.output_dir = output_dir
        self.ended: list[StepResult] = []
        self.cancelled: list[tuple[str, str, int]] = []

    def start(self, launch: StepLaunch) -> str:
        outcome = self.outcomes.pop(0)
        self.ended.append(
            StepResult(
                launch.run_id, launch.step, launch.attempt, outcome, 0, f"scripted {outcome}", self.output_dir
            )  # type: ignore[arg-type]
        )
        return f"scripted-{launch.attempt}"

    def adopt(self, launch: StepLaunch, ref: str | None) -> bool:
        return False

    def poll(self) -> list[StepResult]:
        ended, self.ended = self.ended, []
        return ended

    def cancel(self, run_id: str, step: str, attempt: int) -> None:
        self.cancelled.append((run_id, step, attempt))


def test_a_cancellation_nobody_asked_for_is_a_failed_attempt_and_is_retried(
    tmp_path: Path, db_url: str
) -> None:
    harness = Harness(tmp_path, db_url)
    harness.write_chain("ext", chain_yaml("ext", steps=[step("only", args=[], attempts=2)], outputs=OUT))
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.dat").write_text("x")
    executor = ScriptedExecutor(["cancelled", "succeeded"], out)
    prepare_database(harness.settings)
    services = open_services(harness.settings)
    production = Production(
        harness.settings, services.engine, services.bus, services.audit, executor=executor
    )
    try:
        run_id, _ = production.engine.submit(RunRequest(chain_id="ext"), OPERATOR)
        assert production.engine.run_until_idle(60)
        view = production.engine.describe(run_id)
        assert view["state"] == "succeeded"
        assert [a["outcome"] for a in view["steps"][0]["attempts"]] == ["failed", "succeeded"]
        assert executor.cancelled == []
    finally:
        production.stop()
        services.close()
