"""A real production stack on a temporary data directory for engine tests: test chains written as YAML, a
test processor script in the processor table, the real registry, catalog, traces and local executor."""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from control_plane.core.bus import topics
from control_plane.core.config import Settings
from control_plane.core.services import Services, open_services
from pipelines import tables
from pipelines.production import Production
from tests.apps import make_settings, prepare_database

STEP_SCRIPT = textwrap.dedent(
    '''
    """Test processor: appends (step, pid, start, end, exit) to a side log, sleeps, fails on demand, writes
    one output file. Arguments: SIDE_LOG SLEEP_S FAIL_UNTIL_ATTEMPT FLAG_FILE OUTPUT_NAME."""
    import json, os, sys, time
    side_log, sleep_s, fail_until, flag, output = sys.argv[1:6]
    attempt = int(os.environ["REFSYS_ATTEMPT"])
    start = time.time()
    print(f"step {os.environ['REFSYS_STEP']} attempt {attempt} starts", flush=True)
    time.sleep(float(sleep_s))
    code = 0
    if attempt < int(fail_until):
        print("failing on purpose", file=sys.stderr, flush=True)
        code = 3
    elif flag != "-" and os.path.exists(flag):
        print(f"broken: {flag} exists", file=sys.stderr, flush=True)
        code = 4
    else:
        with open(os.path.join(os.environ["REFSYS_OUTPUT_DIR"], output), "w") as handle:
            handle.write(os.environ["REFSYS_RUN_ID"])
    record = {"run": os.environ["REFSYS_RUN_ID"], "step": os.environ["REFSYS_STEP"], "attempt": attempt,
              "pid": os.getpid(), "start": start, "end": time.time(), "exit": code}
    with open(side_log, "a") as handle:
        handle.write(json.dumps(record) + "\\n")
    sys.exit(code)
    '''
)


def chain_yaml(
    chain_id: str,
    *,
    steps: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    parameters: dict[str, Any] | None = None,
    inputs: list[dict[str, Any]] | None = None,
    lane: str = "NRT",
    max_concurrent_runs: int = 10,
) -> str:
    import json

    document = {
        "id": chain_id, "version": "1.0", "mission": "S2", "lane": lane, "max_concurrent_runs": max_concurrent_runs,
        "parameters": parameters or {}, "inputs": inputs or [], "steps": steps, "outputs": outputs,
    }  # fmt: skip
    return json.dumps(document, indent=1)  # JSON is YAML


def step(
    name: str, *, needs: list[str] | None = None, args: list[str], attempts: int = 1, backoff_s: float = 0.05
) -> dict[str, Any]:
    return {
        "name": name, "processor": {"name": "test-step", "version": "1"}, "args": args, "needs": needs or [],
        "timeout_s": 60, "retries": {"max_attempts": attempts, "backoff_s": backoff_s, "max_backoff_s": 1},
    }  # fmt: skip


class Harness:
    def __init__(
        self,
        root: Path,
        db_url: str | None,
        *,
        processors: tuple[dict[str, Any], ...] = (),
        **production: Any,
    ) -> None:
        self.root = root
        self.side_log = root / "side.log"
        self.chains = root / "chains"
        self.chains.mkdir(parents=True, exist_ok=True)
        script = root / "step.py"
        script.write_text(STEP_SCRIPT)
        self.settings: Settings = make_settings(
            root / "data",
            db_url,
            production={
                "bundled_chains": False,
                "chain_dirs": [str(self.chains)],
                "processors": [
                    {"name": "test-step", "version": "1", "command": [sys.executable, str(script)]},
                    *processors,
                ],
                "lease_s": 2.0,
                "tick_s": 0.05,
                **production,
            },
        )

    def write_chain(self, chain_id: str, text: str) -> None:
        (self.chains / f"{chain_id}.yaml").write_text(text)

    def args(
        self, *, sleep_s: float = 0.0, fail_until: int = 0, flag: str = "-", output: str = "out.dat"
    ) -> list[str]:
        return [str(self.side_log), str(sleep_s), str(fail_until), flag, output]

    def side_records(self) -> list[dict[str, Any]]:
        import json

        if not self.side_log.exists():
            return []
        return [json.loads(line) for line in self.side_log.read_text().splitlines() if line.strip()]

    @contextmanager
    def production(self) -> Iterator[tuple[Production, Services]]:
        prepare_database(self.settings)
        services = open_services(self.settings)
        production = Production(self.settings, services.engine, services.bus, services.audit)
        try:
            yield production, services
        finally:
            production.stop()
            services.close()


def wait_for(condition: Callable[[], Any], what: str, deadline_s: float = 60) -> Any:
    """Poll ``condition`` until it returns something truthy (returned), or fail naming ``what``."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def run_state(services: Services, run_id: str) -> str:
    with services.engine.connect() as connection:
        return str(
            connection.execute(sa.select(tables.runs.c.state).where(tables.runs.c.id == run_id)).scalar_one()
        )


def rows_where(
    services: Services, table: sa.Table, column: str, value: Any, order_by: str
) -> list[dict[str, Any]]:
    """The rows of ``table`` whose ``column`` is ``value``, as dicts ordered by ``order_by``."""
    with services.engine.connect() as connection:
        return [
            dict(row._mapping)
            for row in connection.execute(
                sa.select(table).where(table.c[column] == value).order_by(table.c[order_by])
            )
        ]


def parking_messages(services: Services) -> list[dict[str, Any]]:
    """Every run message on the ``parking-lot`` topic so far."""
    consumer = services.bus.consumer(topics.PARKING_LOT, f"test-{time.monotonic_ns()}")
    try:
        found: list[dict[str, Any]] = []
        while batch := consumer.poll(max_records=1000, timeout_s=0.5):
            found += [record.value for record in batch if record.value.get("kind") == "run"]
        return found
    finally:
        consumer.close()
