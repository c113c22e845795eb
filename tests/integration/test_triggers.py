"""Triggers on the real engine, catalog and local executor (SQLite and PostgreSQL): a product event starts the
chain that consumes it; a poison event is parked instead of looping; cron firings are idempotent; a
reprocessing campaign runs in its throttled lane while NRT runs still start, its outputs flagged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from control_plane.core.audit.trail import Actor, AuditFilter
from control_plane.core.auth.roles import Role
from control_plane.core.bus import topics
from pipelines import tables
from pipelines.engine import RunRequest
from pipelines.triggers.reprocessing import CampaignError, CampaignRequest
from tests.apps import bearer, running_app
from tests.integration.production_harness import Harness, chain_yaml, rows_where, run_state, step, wait_for

pytestmark = pytest.mark.timeout(240)
OPERATOR = Actor(subject="alice", roles=("operator",), client="10.0.0.7")


def _runs(services, chain_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return rows_where(services, tables.runs, "chain_id", chain_id, "created_at")


def _upstream_and_downstream(harness: Harness) -> None:
    args = harness.args(output="a.dat")
    harness.write_chain(
        "up",
        chain_yaml(
            "up", steps=[step("make", args=args)],
            outputs=[{"product_type": "T_A", "step": "make", "pattern": "*.dat", "timeliness": "NRT"}],
        ),
    )  # fmt: skip
    harness.write_chain(
        "down",
        chain_yaml(
            "down",
            steps=[step("use", args=harness.args(output="b.dat"))],
            outputs=[{"product_type": "T_B", "step": "use", "pattern": "*.dat", "timeliness": "NRT"}],
            inputs=[{"product_type": "T_A"}],
        ).replace('"inputs"', '"triggers": {"product_types": ["T_A"]}, "inputs"'),
    )


def test_a_published_product_starts_the_chain_that_consumes_it_once(tmp_path: Path, db_url: str) -> None:
    harness = Harness(tmp_path, db_url)
    _upstream_and_downstream(harness)
    with harness.production() as (production, services):
        trigger = production.systematic
        try:
            up_run, _ = production.engine.submit(RunRequest(chain_id="up"), OPERATOR)
            assert production.engine.run_until_idle(120)
            assert run_state(services, up_run) == "succeeded"
            wait_for(lambda: trigger.run_once(timeout_s=0.2), "the product.available event")
            assert production.engine.run_until_idle(120)
            [down] = _runs(services, "down")
            with services.engine.connect() as connection:
                [upstream_product] = connection.execute(
                    sa.select(tables.products.c.id).where(tables.products.c.run_id == up_run)
                ).scalars()
                t0 = connection.execute(
                    sa.select(tables.products.c.t0).where(tables.products.c.id == upstream_product)
                ).scalar_one()
            assert down["trigger"] == "systematic" and down["inputs"] == [upstream_product]
            assert down["state"] == "succeeded"
            assert down["t0"] is not None and t0 is not None
            # At-least-once delivery: the same event handled again starts nothing new.
            event = {"product_id": upstream_product, "product_type": "T_A", "mission": "S2"}
            assert trigger.handle(event) == [down["id"]]
            assert len(_runs(services, "down")) == 1
            # Reprocessing outputs fan out into nothing.
            assert trigger.handle({**event, "product_id": "other", "reprocessing": True}) == []
        finally:
            trigger.stop()


def test_a_poison_product_event_is_parked_after_its_attempts_and_the_next_one_is_handled(
    tmp_path: Path, db_url: str
) -> None:
    harness = Harness(tmp_path, db_url)
    _upstream_and_downstream(harness)
    with harness.production() as (production, services):
        trigger = production.systematic
        try:
            services.bus.publish(topics.PRODUCT_AVAILABLE, "T_A", [{"product_type": "T_A"}])  # no product_id
            delivered = tmp_path / "A_0001.dat"
            delivered.write_text("a")
            good = production.catalog.register_external(
                delivered, product_type="T_A", mission="S2", actor=OPERATOR
            )
            handled = 0
            while handled < 2:
                handled += trigger.run_once(timeout_s=0.5)
            parked = _parked_product_events(services)
            assert len(parked) == 1 and "product_id" in parked[0]["reason"]
            assert [run["inputs"] for run in _runs(services, "down")] == [[good.id]]
            assert trigger.run_once(timeout_s=0.2) == 0  # committed: it does not come back
        finally:
            trigger.stop()


def _parked_product_events(services) -> list[dict]:  # type: ignore[no-untyped-def]
    consumer = services.bus.consumer(topics.PARKING_LOT, "test-parked")
    try:
        found: list[dict] = []
        while batch := consumer.poll(max_records=100, timeout_s=0.3):
            found += [record.value for record in batch if record.value.get("kind") == "product-event"]
        return found
    finally:
        consumer.close()


def test_cron_firings_are_idempotent_per_minute_and_scheduled(tmp_path: Path) -> None:
    harness = Harness(tmp_path, None)
    harness.write_chain(
        "tick",
        chain_yaml(
            "tick", steps=[step("only", args=harness.args())],
            outputs=[{"product_type": "T_T", "step": "only", "pattern": "*.dat", "timeliness": "NTC"}],
        ).replace('"inputs"', '"triggers": {"cron": ["*/5 * * * *"]}, "inputs"'),
    )  # fmt: skip
    with harness.production() as (production, services):
        cron = production.cron
        [(chain, expression)] = cron.jobs()
        fired_at = datetime(2026, 11, 25, 10, 5, 0, tzinfo=UTC)
        first = cron.fire(chain, expression, fired_at)
        assert (
            cron.fire(chain, expression, fired_at + timedelta(seconds=30)) == first
        )  # same minute: same run
        assert cron.fire(chain, expression, fired_at + timedelta(minutes=5)) != first
        assert [run["trigger"] for run in _runs(services, "tick")] == ["cron", "cron"]
        cron.start()
        try:
            [job] = cron.scheduler.get_jobs()
            assert job.next_run_time is not None and job.next_run_time.minute % 5 == 0
        finally:
            cron.stop()


def test_a_campaign_runs_throttled_while_nrt_runs_start_and_its_outputs_are_flagged(
    tmp_path: Path, db_url: str
) -> None:
    harness = Harness(tmp_path, db_url, max_parallel_steps=7)
    harness.write_chain(
        "reproc",
        chain_yaml(
            "reproc",
            steps=[step("redo", args=harness.args(sleep_s=0.3, output="r.dat"))],
            outputs=[{"product_type": "T_R", "step": "redo", "pattern": "*.dat", "timeliness": "NTC"}],
            inputs=[{"product_type": "T_IN"}],
        ),
    )
    harness.write_chain(
        "nrt",
        chain_yaml(
            "nrt", steps=[step("fast", args=harness.args(output="n.dat"))],
            outputs=[{"product_type": "T_N", "step": "fast", "pattern": "*.dat", "timeliness": "NRT"}],
        ),
    )  # fmt: skip
    with harness.production() as (production, services):
        sensed = datetime(2026, 11, 1, tzinfo=UTC)
        for index in range(50):
            path = tmp_path / f"IN_{index:03d}.dat"
            path.write_text(str(index))
            production.catalog.register_external(
                path, product_type="T_IN", mission="S2", sensing_start=sensed + timedelta(hours=index), actor=OPERATOR
            )  # fmt: skip
        campaigns = production.campaigns
        with pytest.raises(CampaignError, match="sensing_to is before"):
            campaigns.create(
                CampaignRequest("reproc", sensing_from=sensed, sensing_to=sensed - timedelta(1)), OPERATOR
            )
        created = campaigns.create(
            CampaignRequest(
                "reproc", sensing_from=sensed, sensing_to=sensed + timedelta(days=3), baseline="R2"
            ),
            OPERATOR,
        )
        assert created["runs"] == 50 and created["lane"] == "REPROCESSING"
        production.start(triggers=False)
        wait_for(lambda: _running(services, "REPROCESSING") > 0, "the campaign to start")
        nrt_run, _ = production.engine.submit(RunRequest(chain_id="nrt"), OPERATOR)
        wait_for(lambda: run_state(services, nrt_run) == "succeeded", "the NRT run", deadline_s=60)
        status = campaigns.status(created["id"])
        assert status is not None and not status["done"], "the NRT run waited for the campaign"
        assert _max_running(services) <= 2  # the throttled lane's own limit
        wait_for(lambda: (campaigns.status(created["id"]) or {}).get("done"), "the campaign", deadline_s=180)
        with services.engine.connect() as connection:
            outputs = connection.execute(
                sa.select(tables.products.c.baseline, tables.products.c.reprocessing).where(
                    tables.products.c.product_type == "T_R"
                )
            ).all()
            flagged = connection.execute(
                sa.select(sa.func.count())
                .select_from(tables.trace_events)
                .where(tables.trace_events.c.chain == "reproc")
            ).scalar_one()
        assert len(outputs) == 50 and set(outputs) == {("R2", True)}
        assert flagged > 0
        assert _trace_reprocessing_flags(services, "reproc") == {True}
        assert _trace_reprocessing_flags(services, "nrt") == {False}


def _running(services, lane: str) -> int:  # type: ignore[no-untyped-def]
    with services.engine.connect() as connection:
        return int(
            connection.execute(
                sa.select(sa.func.count())
                .select_from(tables.run_steps)
                .where(tables.run_steps.c.lane == lane, tables.run_steps.c.state == "running")
            ).scalar_one()
        )


def _max_running(services) -> int:  # type: ignore[no-untyped-def]
    """Most reprocessing executions that overlapped in time, from the executions table."""
    with services.engine.connect() as connection:
        rows = connection.execute(
            sa.select(tables.step_executions.c.started_at, tables.step_executions.c.ended_at)
            .join(tables.runs, tables.runs.c.id == tables.step_executions.c.run_id)
            .where(tables.runs.c.lane == "REPROCESSING", tables.step_executions.c.ended_at.is_not(None))
        ).all()
    edges = sorted([(row.started_at, 1) for row in rows] + [(row.ended_at, -1) for row in rows])
    running = peak = 0
    for _moment, change in edges:
        running += change
        peak = max(peak, running)
    return peak


def _trace_reprocessing_flags(services, chain: str) -> set[bool]:  # type: ignore[no-untyped-def]
    with services.engine.connect() as connection:
        bodies = connection.execute(
            sa.select(tables.trace_events.c.body).where(tables.trace_events.c.chain == chain)
        ).scalars()
        return {bool(body.get("reprocessing")) for body in bodies}


def test_campaigns_over_http_are_opened_by_operators_and_followed(tmp_path: Path) -> None:
    harness = Harness(tmp_path, None)
    harness.write_chain(
        "reproc",
        chain_yaml(
            "reproc",
            steps=[step("redo", args=harness.args(output="r.dat"))],
            outputs=[{"product_type": "T_R", "step": "redo", "pattern": "*.dat", "timeliness": "NTC"}],
            inputs=[{"product_type": "T_IN"}],
        ),
    )
    with running_app(harness.settings) as (client, services):
        catalog = client.app.state.production.catalog  # type: ignore[attr-defined]
        sensed = datetime(2026, 11, 1, tzinfo=UTC)
        ids = []
        for index in range(3):
            path = tmp_path / f"IN_{index}.dat"
            path.write_text(str(index))
            ids.append(
                catalog.register_external(
                    path, product_type="T_IN", mission="S2", sensing_start=sensed, actor=OPERATOR
                ).id
            )
        operator = bearer(services, Role.OPERATOR)
        body = {"chain": "reproc", "products": ids[:2], "baseline": "R7"}
        assert (
            client.post(
                "/api/v1/reprocessing", json=body, headers=bearer(services, Role.OPS_MANAGER)
            ).status_code
            == 403
        )
        keyed = {**operator, "Idempotency-Key": "campaign-7"}
        created = client.post("/api/v1/reprocessing", json=body, headers=keyed)
        assert created.status_code == 201, created.text
        assert created.json()["runs"] == 2 and created.json()["lane"] == "REPROCESSING"
        again = client.post("/api/v1/reprocessing", json=body, headers=keyed)  # a retried request
        assert again.status_code == 200 and again.json()["id"] == created.json()["id"]
        refused = client.post(
            "/api/v1/reprocessing", json={"chain": "reproc", "products": ["nope"]}, headers=operator
        )
        assert refused.status_code == 422 and "unknown product 'nope'" in refused.json()["detail"]
        assert refused.headers["content-type"] == "application/problem+json"
        campaign = created.json()["id"]
        done = wait_for(
            lambda: (
                (answer := client.get(f"/api/v1/reprocessing/{campaign}", headers=operator).json())["done"]
                and answer
            ),
            "the campaign over HTTP",
        )
        assert done["runs"] == {"succeeded": 2} and done["baseline"] == "R7"
        assert services.audit.list(AuditFilter(action="reprocessing.create"))[0]["target"] == campaign
        assert client.get("/api/v1/reprocessing/unknown", headers=operator).status_code == 404
