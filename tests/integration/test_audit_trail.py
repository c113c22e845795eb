"""The audit trail on SQLite and on real PostgreSQL: appends never fork, and every kind of tampering by someone
with write access to the database is detected by ``refsys audit verify`` (exit 1, first broken record named)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from control_plane.cli import main
from control_plane.core.audit import chain
from control_plane.core.audit.tables import records
from control_plane.core.audit.trail import Actor, AuditTrail
from control_plane.core.audit.verify import verify_trail
from control_plane.core.config import Settings
from control_plane.core.services import open_audit, open_engine
from tests.apps import make_settings, prepare_database

ACTOR = Actor(
    subject="alice", roles=("operator",), credential_id="jti-1", client="10.0.0.7", request_id="r-1"
)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    settings = make_settings(tmp_path / "var", db_url)
    prepare_database(settings)
    return settings


@pytest.fixture
def trail(settings: Settings) -> Iterator[AuditTrail]:
    engine = open_engine(settings)
    yield open_audit(settings, engine)
    engine.dispose()


def _fill(trail: AuditTrail, count: int) -> None:
    for number in range(count):
        trail.append(
            actor=ACTOR, action="run.submit", outcome="success", target=f"run-{number}", details={"n": number}
        )


def _verify_cli(settings: Settings, tmp_path: Path) -> tuple[int, str]:
    config = tmp_path / "refsys.yaml"
    config.write_text(
        yaml.safe_dump({"data_dir": str(settings.data_dir), "database": {"url": settings.database_url}})
    )
    result = CliRunner().invoke(main, ["audit", "verify", "--config", str(config)])
    return result.exit_code, result.output


def _execute(trail: AuditTrail, statement: str, **params: object) -> None:
    with trail.engine.begin() as connection:
        connection.execute(sa.text(statement), params)


def test_intact_chain_verifies(settings: Settings, trail: AuditTrail, tmp_path: Path) -> None:
    _fill(trail, 20)
    trail.checkpoint()
    report = verify_trail(trail)
    assert report.ok and report.records == 20 and report.checkpoint is not None
    code, output = _verify_cli(settings, tmp_path)
    assert code == 0, output
    assert json.loads(output.splitlines()[0])["ok"] is True


def test_edited_field_is_detected(settings: Settings, trail: AuditTrail, tmp_path: Path) -> None:
    _fill(trail, 10)
    _execute(trail, "UPDATE audit_records SET target = 'run-x' WHERE seq = 4")
    code, output = _verify_cli(settings, tmp_path)
    assert code == 1
    assert "audit record 4" in output and "edited" in output


def test_deleted_row_is_detected(settings: Settings, trail: AuditTrail, tmp_path: Path) -> None:
    _fill(trail, 10)
    _execute(trail, "DELETE FROM audit_records WHERE seq = 6")
    code, output = _verify_cli(settings, tmp_path)
    assert code == 1
    assert "audit record 6" in output and "missing" in output


def test_swapped_rows_are_detected(settings: Settings, trail: AuditTrail, tmp_path: Path) -> None:
    _fill(trail, 10)
    # Swap the contents of records 3 and 7, keeping each row's position (its seq).
    with trail.engine.begin() as connection:
        rows = {
            row.seq: dict(row._mapping)
            for row in connection.execute(sa.select(records).where(records.c.seq.in_([3, 7])))
        }
        for seq, other in ((3, 7), (7, 3)):
            values = {key: value for key, value in rows[other].items() if key != "seq"}
            values["id"] = f"tmp-{seq}"  # the id is unique: park it while swapping
            connection.execute(records.update().where(records.c.seq == seq).values(**values))
        for seq, other in ((3, 7), (7, 3)):
            connection.execute(records.update().where(records.c.seq == seq).values(id=rows[other]["id"]))
    code, output = _verify_cli(settings, tmp_path)
    assert code == 1
    assert "audit record 3" in output


def test_forged_append_with_recomputed_sha256_is_detected(
    settings: Settings, trail: AuditTrail, tmp_path: Path
) -> None:
    _fill(trail, 5)
    with trail.engine.begin() as connection:
        last = dict(
            connection.execute(sa.select(records).order_by(records.c.seq.desc()).limit(1)).one()._mapping
        )
        forged = dict(
            last, seq=6, id="forged-6", action="machine_key.create", target="backdoor", prev_hash=last["hash"]
        )
        forged["hash"] = hashlib.sha256(
            chain.canonical(forged)
        ).hexdigest()  # the attacker can do plain SHA-256
        forged["mac"] = hashlib.sha256(forged["hash"].encode()).hexdigest()  # but not the keyed MAC
        connection.execute(records.insert().values(**forged))
    code, output = _verify_cli(settings, tmp_path)
    assert code == 1
    assert "audit record 6" in output and "MAC" in output


def test_tail_cut_before_the_last_checkpoint_is_detected(
    settings: Settings, trail: AuditTrail, tmp_path: Path
) -> None:
    _fill(trail, 10)
    trail.checkpoint()
    _execute(trail, "DELETE FROM audit_records WHERE seq > 7")
    code, output = _verify_cli(settings, tmp_path)
    assert code == 1
    assert "audit record 8" in output and "tail cut" in output


def test_altered_checkpoint_file_is_detected(settings: Settings, trail: AuditTrail, tmp_path: Path) -> None:
    _fill(trail, 3)
    trail.checkpoint()
    text = trail.checkpoint_file.read_text()
    trail.checkpoint_file.write_text(text.replace('"seq":3', '"seq":2'))
    code, output = _verify_cli(settings, tmp_path)
    assert code == 1 and "signature is invalid" in output


def test_concurrent_appenders_never_fork_the_chain(settings: Settings, trail: AuditTrail) -> None:
    writers, each = 6, 25
    errors: list[BaseException] = []

    def write(number: int) -> None:
        engine = open_engine(settings)  # a connection pool of its own, as another process would have
        own = open_audit(settings, engine)
        try:
            for index in range(each):
                own.append(actor=ACTOR, action="concurrent", outcome="success", target=f"{number}-{index}")
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=write, args=(number,)) for number in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    report = verify_trail(trail)
    assert report.ok, report.first_break
    assert report.records == report.head_seq == writers * each
    assert trail.head()[0] == writers * each


def test_list_filters_and_pages(trail: AuditTrail) -> None:
    from control_plane.core.audit.trail import AuditFilter

    _fill(trail, 7)
    trail.append(actor=Actor(subject="bob"), action="run.cancel", outcome="failure", target="run-3")
    assert [row["actor"] for row in trail.list(AuditFilter(action="run.cancel"))] == ["bob"]
    first = trail.list(AuditFilter(actor="alice"), limit=3)
    assert [row["seq"] for row in first] == [7, 6, 5]
    second = trail.list(AuditFilter(actor="alice"), cursor=first[-1]["seq"], limit=3)
    assert [row["seq"] for row in second] == [4, 3, 2]
    oldest = trail.list(AuditFilter(), limit=2, newest_first=False)
    assert [row["seq"] for row in oldest] == [1, 2]
    assert "mac" not in oldest[0]
