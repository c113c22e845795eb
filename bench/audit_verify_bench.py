"""Audit trail: how fast records append through the real path, and how fast a 100k-record chain verifies.

Target (issue: control-plane foundation): an intact chain of 100k records verifies in under 5 s on 2 cores.
Runs on SQLite always, and on PostgreSQL when REFSYS_BENCH_POSTGRES_URL (or the test default) answers.

    python bench/audit_verify_bench.py [--records 100000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import report
from control_plane.core import schema
from control_plane.core.audit.trail import Actor
from control_plane.core.audit.verify import verify_trail
from control_plane.core.config import Settings
from control_plane.core.services import open_audit, open_engine

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ACTOR = Actor(
    subject="bench", roles=("operator",), credential_id="jti", client="10.1.2.3", user_agent="bench/1"
)


def run(database_url: str | None, records: int, data_dir: Path) -> dict[str, Any]:
    settings = Settings(data_dir=data_dir, database={"url": database_url} if database_url else {})
    engine = open_engine(settings)
    schema.upgrade(engine)
    trail = open_audit(settings, engine)
    started = time.perf_counter()
    for number in range(records):
        trail.append(
            actor=ACTOR, action="run.submit", outcome="success", target=f"run-{number}",
            details={"chain": "s2-l1c", "params": {"tile": f"T{number % 1000:03d}"}},
        )  # fmt: skip
        if number and number % 20_000 == 0:
            print(f"  appended {number}", file=sys.stderr)
    append_s = time.perf_counter() - started
    trail.checkpoint()
    started = time.perf_counter()
    verdict = verify_trail(trail)
    verify_s = time.perf_counter() - started
    engine.dispose()
    assert verdict.ok and verdict.records == records, verdict
    return {
        "records": records,
        "append_per_s": round(records / append_s, 1),
        "verify_s": round(verify_s, 3),
        "verify_records_per_s": round(records / verify_s),
        "target_verify_s": 5.0,
        "met": verify_s < 5.0,
    }


def _postgres_schema_url() -> str | None:
    """A private schema on the local PostgreSQL, or None when it is not reachable."""
    engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    name = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    except sa.exc.OperationalError:
        return None
    finally:
        engine.dispose()
    return f"{POSTGRES_URL}?options=-csearch_path%3D{name}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        print("sqlite ...", file=sys.stderr)
        figures["sqlite"] = run(None, args.records, Path(scratch) / "sqlite")
        postgres = _postgres_schema_url()
        if postgres:
            print("postgresql ...", file=sys.stderr)
            figures["postgresql"] = run(postgres, args.records, Path(scratch) / "pg")
            schema_name = postgres.rsplit("%3D", 1)[1]
            engine = sa.create_engine(POSTGRES_URL)
            with engine.begin() as connection:
                connection.execute(sa.text(f'DROP SCHEMA "{schema_name}" CASCADE'))
            engine.dispose()
    report("audit_verify", figures)


if __name__ == "__main__":
    main()
