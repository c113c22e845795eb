"""Acceptance 2: ad hoc production through the API with real tokens and the real local executor: submit (the same
idempotency key twice gives one run), watch, read logs, cancel (the step's whole process group is gone),
retry, resubmit; refusals as problems; every action audited with the client address."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from control_plane.core.audit.trail import AuditFilter
from control_plane.core.auth.roles import Role
from pipelines import tables
from tests.apps import bearer, running_app
from tests.integration.production_harness import Harness, chain_yaml, step, wait_for

pytestmark = pytest.mark.timeout(240)

FAMILY_SCRIPT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(f"pid {os.getpid()} pgid {os.getpgid(0)} child {child.pid}", flush=True)
    time.sleep(float(sys.argv[1]))
    open(os.path.join(os.environ["REFSYS_OUTPUT_DIR"], "out.dat"), "w").write("done")
    """
)


def _gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _harness(tmp_path: Path, db_url: str, flag: Path) -> Harness:
    family = tmp_path / "family.py"
    family.write_text(FAMILY_SCRIPT)
    harness = Harness(
        tmp_path,
        db_url,
        processors=({"name": "family", "version": "1", "command": [sys.executable, str(family)]},),
    )
    out = [{"product_type": "T_OUT", "step": "only", "pattern": "*.dat", "timeliness": "NRT"}]
    harness.write_chain(
        "slow",
        chain_yaml(
            "slow",
            parameters={"sleep_s": 0.1},
            steps=[{**step("only", args=["{sleep_s}"]), "processor": {"name": "family", "version": "1"}}],
            outputs=out,
        ),
    )
    harness.write_chain(
        "fragile", chain_yaml("fragile", steps=[step("only", args=harness.args(flag=str(flag)))], outputs=out)
    )
    return harness


def _run(client: TestClient, headers: dict[str, str], run_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/runs/{run_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def _until_state(client: TestClient, headers: dict[str, str], run_id: str, *states: str) -> dict[str, Any]:
    return wait_for(
        lambda: (run := _run(client, headers, run_id))["state"] in states and run, f"run in {states}"
    )


def _traces(services: Any, run_id: str) -> list[tuple[str, str | None]]:
    with services.engine.connect() as connection:
        return [
            (row.event, row.status)
            for row in connection.execute(
                sa.select(tables.trace_events.c.event, tables.trace_events.c.status).where(
                    tables.trace_events.c.run_id == run_id
                )
            )
        ]


def test_submit_watch_cancel_retry_resubmit_through_the_api(tmp_path: Path, db_url: str) -> None:
    flag = tmp_path / "broken"
    flag.write_text("cause")
    harness = _harness(tmp_path, db_url, flag)
    with running_app(harness.settings) as (client, services):
        operator = bearer(services, Role.OPERATOR, subject="olga")
        manager = bearer(services, Role.OPS_MANAGER, subject="mia")

        # Submit twice with one idempotency key: one run (201, then 200 with the same id).
        body = {"chain": "slow", "parameters": {"sleep_s": 120}}
        first = client.post("/api/v1/runs", json=body, headers={**operator, "Idempotency-Key": "req-1"})
        again = client.post("/api/v1/runs", json=body, headers={**operator, "Idempotency-Key": "req-1"})
        assert (first.status_code, again.status_code) == (201, 200), first.text
        run_id = first.json()["id"]
        assert again.json()["id"] == run_id
        listed = client.get("/api/v1/runs", params={"chain": "slow"}, headers=manager).json()["items"]
        assert [item["id"] for item in listed] == [run_id]
        assert client.post("/api/v1/runs", json=body, headers=manager).status_code == 403

        # Watch it run and read the step's output through the logs API.
        def family() -> re.Match[str] | None:
            logs = client.get(f"/api/v1/runs/{run_id}/steps/only/logs", headers=operator)
            assert logs.status_code == 200, logs.text
            return next(
                (
                    m
                    for item in logs.json()["items"]
                    if (m := re.match(r"pid (\d+) pgid (\d+) child (\d+)", item["line"]))
                ),
                None,
            )

        match = wait_for(family, "the step's first log line")
        pid, pgid, child = (int(value) for value in match.groups())
        assert pgid == pid and os.getpgid(child) == pgid
        assert _run(client, operator, run_id)["steps"][0]["state"] == "running"
        assert client.get(f"/api/v1/runs/{run_id}/steps/only/logs", headers=manager).status_code == 403

        # Cancel: the state is cancelled at once, the whole process group (child included) goes.
        cancelled = client.post(f"/api/v1/runs/{run_id}/cancel", headers=operator)
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        wait_for(lambda: _gone(pgid), "the step's process group to be gone")
        view = wait_for(
            lambda: (run := _run(client, operator, run_id))["steps"][0]["state"] == "cancelled" and run,
            "step cancelled",
        )
        assert view["steps"][0]["attempts"][0]["outcome"] == "cancelled"
        # The KPI contract: the cancelled execution's BEGIN has its END (NOK), whenever the engine records it.
        traces = wait_for(
            lambda: (found := _traces(services, run_id)).count(("END", "NOK")) == 1 and found, "END"
        )
        assert traces.count(("BEGIN", None)) == 1
        refused = client.post(f"/api/v1/runs/{run_id}/cancel", headers=operator)
        assert refused.status_code == 409 and refused.headers["content-type"] == "application/problem+json"
        assert client.post(f"/api/v1/runs/{run_id}/retry", headers=operator).status_code == 409

        # Retry a failed run once its cause is fixed: a new attempt in the same run.
        failing = client.post("/api/v1/runs", json={"chain": "fragile"}, headers=operator).json()["id"]
        assert _until_state(client, operator, failing, "failed", "succeeded")["state"] == "failed"
        flag.unlink()
        retried = client.post(f"/api/v1/runs/{failing}/retry", headers=operator)
        assert retried.status_code == 200 and retried.json()["state"] == "running"
        done = _until_state(client, operator, failing, "succeeded", "failed")
        assert done["state"] == "succeeded" and [a["outcome"] for a in done["steps"][0]["attempts"]] == [
            "failed",
            "succeeded",
        ]

        # Resubmit: a new run linked to the old one, same inputs and parameters.
        resubmitted = client.post(f"/api/v1/runs/{failing}/resubmit", headers=operator)
        assert resubmitted.status_code == 201
        new = resubmitted.json()
        assert new["id"] != failing and new["resubmitted_from"] == failing and new["trigger"] == "resubmit"
        assert _until_state(client, operator, new["id"], "succeeded", "failed")["state"] == "succeeded"
        again = client.post(
            f"/api/v1/runs/{failing}/resubmit", headers=operator
        )  # e.g. retried after a timeout
        assert again.json()["id"] == new["id"]  # resubmitting one run makes one new run

        assert (
            client.get("/api/v1/runs/00000000-0000-7000-8000-000000000000", headers=operator).status_code
            == 404
        )
        bad = client.post("/api/v1/runs", json={"chain": "slow", "lane": "nope"}, headers=operator)
        assert bad.status_code == 422 and "lane 'nope'" in bad.json()["detail"]

        trail = [
            (r["action"], r["outcome"], r["target"], r["client"])
            for r in reversed(services.audit.list(AuditFilter(actor="olga")))
        ]
        expected = [
            ("run.submit", "success", run_id), ("run.cancel", "success", run_id), ("run.cancel", "failure", run_id),
            ("run.retry", "failure", run_id), ("run.submit", "success", failing), ("run.retry", "success", failing),
            ("run.submit", "success", new["id"]), ("run.resubmit", "success", failing),
            ("run.resubmit", "success", failing), ("run.submit", "failure", "slow"),
        ]  # fmt: skip
        assert [row[:3] for row in trail] == expected
        assert {row[3] for row in trail} == {"testclient"}
        submit = services.audit.list(AuditFilter(action="run.submit", target=run_id))[0]
        assert submit["details"]["images"] == {"only": None} and submit["details"]["non_allowlisted"] == []
