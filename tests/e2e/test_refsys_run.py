"""Acceptance 1 of production: `refsys run` on the bundled Sentinel-2 L1C chain publishes products with lineage
and traces, and the L2A chain starts by itself from the product event and succeeds (real processors, real
local executor, embedded defaults in a temporary working directory)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipelines import tables
from tests.apps import REFSYS, run_refsys
from tests.e2e.servers import ServerProcess

pytestmark = pytest.mark.timeout(300)


def test_refsys_run_s2_l1c_publishes_and_l2a_follows_by_itself(tmp_path: Path) -> None:
    done = run_refsys("run", "s2-l1c", "--param", "duration_s=1", "--param", "products=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    l1c, *l2as = summary["runs"]
    assert (l1c["chain"], l1c["trigger"], l1c["state"]) == ("s2-l1c", "manual", "succeeded")
    assert len(l1c["products"]) == 2 and len(l2as) == 2  # one L2A run per L1C tile
    assert {(run["chain"], run["trigger"], run["state"]) for run in l2as} == {
        ("s2-l2a", "systematic", "succeeded")
    }
    l2a = l2as[0]
    assert "step l1c: succeeded" in done.stderr and "step l2a: succeeded" in done.stderr  # live progress

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'var' / 'refsys.db'}")
    try:
        with engine.connect() as connection:
            products = list(connection.execute(sa.select(tables.products)))
            traces = connection.execute(sa.select(tables.trace_events)).all()
            l2a_run = connection.execute(sa.select(tables.runs).where(tables.runs.c.id == l2a["id"])).one()
    finally:
        engine.dispose()
    [level2] = [row for row in products if row.run_id == l2a["id"]]
    [level1] = [row for row in products if row.product_type == "S2MSI1C" and row.id in l2a_run.inputs]
    assert level2.product_type == "S2MSI2A"
    assert re.match(r"S2[ABC]_MSIL1C_\d{8}T\d{6}_N\d{4}_R\d{3}_T\w{5}_\d{8}T\d{6}\.SAFE\.zip$", level1.name)
    assert level1.state == "published"
    assert (level1.run_id, level1.step, level1.chain_id) == (l1c["id"], "l1c", "s2-l1c")
    assert len(level1.sha256) == 64 and level1.size > 0
    # Lineage: the L2A run consumed L1C products, and its product names them as inputs.
    assert level1.id in l2a_run.inputs and level1.id in level2.inputs
    assert (level2.run_id, level2.chain_id, level2.timeliness) == (l2a["id"], "s2-l2a", "FAST24")
    by_run: dict[str, set[str]] = {}
    for trace in traces:
        by_run.setdefault(trace.run_id, set()).add(trace.event)
        assert trace.body["trace"]["version"] == "1.0"
    assert by_run[l1c["id"]] == {"BEGIN", "END", "PUBLISHED"}
    assert by_run[l2a["id"]] == {"BEGIN", "END", "PUBLISHED"}
    published = [t for t in traces if t.event == "PUBLISHED" and t.run_id == l2a["id"]]
    assert published[0].body["t0"] is not None and published[0].body["inputs"]


def test_the_bundled_s1_chain_feeds_each_step_the_products_of_the_step_it_needs(tmp_path: Path) -> None:
    done = run_refsys("run", "s1", "--param", "duration_s=0.2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [run] = json.loads(done.stdout)["runs"]
    assert run["state"] == "succeeded" and len(run["products"]) == 3
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'var' / 'refsys.db'}")
    try:
        with engine.connect() as connection:
            products = {row.step: row for row in connection.execute(sa.select(tables.products))}
    finally:
        engine.dispose()
    level0, level1, level2 = products["l0"], products["l1"], products["l2"]
    assert "_IW_RAW__0S" in level0.name and "_IW_GRDH_1S" in level1.name and "_IW_OCN__2S" in level2.name
    # Lineage through the DAG: L1 was made from the L0 of the same run, L2 from the L1.
    assert level1.inputs == [level0.id] and level2.inputs == [level1.id]


def test_refsys_run_with_url_submits_to_a_server_and_follows_the_run(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    server.start()
    try:
        token = server.credential("token", "create", "--role", "operator", "--sub", "ci")
        env = {**server.env, "REFSYS_TOKEN": token}
        done = subprocess.run(
            [REFSYS, "run", "s2-l1c", "--param", "duration_s=0.2", "--url", server.url],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        [run] = json.loads(done.stdout)["runs"]
        assert (run["chain"], run["state"]) == ("s2-l1c", "succeeded")
        assert "step l1c: succeeded" in done.stderr
        refused = subprocess.run(
            [REFSYS, "run", "no-such-chain", "--url", server.url],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode == 2 and "refused the run: 422" in refused.stderr
    finally:
        server.stop()
