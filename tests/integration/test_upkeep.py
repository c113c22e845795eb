"""Production upkeep: old execution directories go once their run has ended long enough; nothing else does; a
failing task does not keep the others from running."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from control_plane.core import clock
from control_plane.core.audit.trail import Actor
from pipelines.engine import RunRequest
from pipelines.upkeep import Upkeep, remove_old_work_dirs
from tests.integration.production_harness import Harness, chain_yaml, step

OPERATOR = Actor(subject="ops")


def test_execution_directories_of_runs_ended_long_ago_are_removed_and_nothing_else(
    tmp_path: Path, db_url: str
) -> None:
    harness = Harness(tmp_path, db_url)
    harness.write_chain(
        "tidy",
        chain_yaml(
            "tidy", steps=[step("only", args=harness.args())],
            outputs=[{"product_type": "T", "step": "only", "pattern": "*.dat", "timeliness": "NTC"}],
        ),
    )  # fmt: skip
    with harness.production() as (production, services):
        ended, _ = production.engine.submit(RunRequest(chain_id="tidy"), OPERATOR)
        assert production.engine.run_until_idle(120)
        work = harness.settings.work_dir
        stranger = work / "not-a-run-of-this-database"
        stranger.mkdir()
        assert (work / ended).is_dir()
        # Ended just now: kept for the retention period.
        assert remove_old_work_dirs(services.engine, work, keep=timedelta(days=7)) == 0
        later = clock.utcnow() + timedelta(days=8)
        assert remove_old_work_dirs(services.engine, work, keep=timedelta(days=7), now=later) == 1
        assert not (work / ended).exists() and stranger.is_dir()


def test_a_failing_task_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    def broken() -> None:
        raise RuntimeError("store unreachable")

    Upkeep({"broken": broken, "fine": lambda: done.append("fine")}).run_once()
    assert done == ["fine"]
    assert "upkeep: broken failed" in caplog.text
