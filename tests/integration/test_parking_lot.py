"""Acceptance 4 through the API: runs out of retries wait in the parking lot; restart (after fixing the cause),
resubmit and drop, singly and in bulk with per-run results; every action is in the audit trail and on the
``parking-lot`` topic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.core.audit.trail import AuditFilter
from control_plane.core.auth.roles import Role
from tests.apps import bearer, running_app
from tests.integration.production_harness import Harness, chain_yaml, parking_messages, step, wait_for

pytestmark = pytest.mark.timeout(240)
UNKNOWN = "00000000-0000-7000-8000-000000000000"


def _parked_ids(client: TestClient, headers: dict[str, str]) -> list[str]:
    response = client.get("/api/v1/parking-lot", headers=headers)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def _state(client: TestClient, headers: dict[str, str], run_id: str) -> str:
    return str(client.get(f"/api/v1/runs/{run_id}", headers=headers).json()["state"])


def test_parking_lot_restart_resubmit_drop_singly_and_in_bulk(tmp_path: Path, db_url: str) -> None:
    harness = Harness(tmp_path, db_url)
    flag = tmp_path / "broken"
    flag.write_text("cause")
    harness.write_chain(
        "fragile",
        chain_yaml(
            "fragile",
            steps=[step("only", args=harness.args(flag=str(flag)), attempts=2)],
            outputs=[{"product_type": "T_OUT", "step": "only", "pattern": "*.dat", "timeliness": "NRT"}],
        ),
    )
    with running_app(harness.settings) as (client, services):
        operator = bearer(services, Role.OPERATOR, subject="pat")
        runs = [
            client.post("/api/v1/runs", json={"chain": "fragile"}, headers=operator).json()["id"]
            for _ in range(4)
        ]
        parked = wait_for(lambda: len(ids := _parked_ids(client, operator)) == 4 and ids, "four parked runs")
        assert sorted(parked) == sorted(runs)
        first = client.get(f"/api/v1/runs/{runs[0]}", headers=operator).json()
        assert first["state"] == "failed" and "after its last attempt" in first["reason"]
        assert [a["outcome"] for a in first["steps"][0]["attempts"]] == ["failed", "failed"]
        assert (
            client.get("/api/v1/parking-lot", headers=bearer(services, Role.OPS_MANAGER)).status_code == 403
        )

        flag.unlink()  # the cause is fixed
        restarted = client.post(f"/api/v1/parking-lot/{runs[0]}/restart", headers=operator)
        assert restarted.status_code == 200 and restarted.json()["parked_at"] is None
        resubmitted = client.post(f"/api/v1/parking-lot/{runs[1]}/resubmit", headers=operator)
        assert resubmitted.status_code == 201 and resubmitted.json()["resubmitted_from"] == runs[1]
        dropped = client.post(f"/api/v1/parking-lot/{runs[2]}/drop", headers=operator)
        assert dropped.status_code == 200 and dropped.json()["state"] == "failed"
        again = client.post(f"/api/v1/parking-lot/{runs[2]}/drop", headers=operator)
        assert again.status_code == 409

        bulk = client.post(
            "/api/v1/parking-lot/actions",
            json={"action": "restart", "run_ids": [runs[3], runs[2], UNKNOWN]},
            headers=operator,
        )
        assert bulk.status_code == 200, bulk.text
        results: dict[str, Any] = {item["run_id"]: item["status"] for item in bulk.json()["items"]}
        assert results == {runs[3]: 200, runs[2]: 409, UNKNOWN: 404}

        for run_id in (runs[0], runs[3], resubmitted.json()["id"]):
            wait_for(
                lambda run_id=run_id: _state(client, operator, run_id) == "succeeded", f"{run_id} succeeds"
            )
        assert _parked_ids(client, operator) == []

        audited = [
            (r["action"], r["outcome"], r["target"])
            for r in reversed(services.audit.list(AuditFilter(actor="pat")))
        ]
        actions = [row for row in audited if row[0].startswith("parking-lot.")]
        assert actions == [
            ("parking-lot.restart", "success", runs[0]), ("parking-lot.resubmit", "success", runs[1]),
            ("parking-lot.drop", "success", runs[2]), ("parking-lot.drop", "failure", runs[2]),
            ("parking-lot.restart", "success", runs[3]), ("parking-lot.restart", "failure", runs[2]),
        ]  # fmt: skip
        published = [(m["action"], m["run_id"]) for m in parking_messages(services)]
        assert sorted(published) == sorted(
            [("parked", run_id) for run_id in runs]
            + [("restart", runs[0]), ("resubmit", runs[1]), ("drop", runs[2]), ("restart", runs[3])]
        )
        assert all(m["actor"] == "pat" for m in parking_messages(services) if m["action"] != "parked")
