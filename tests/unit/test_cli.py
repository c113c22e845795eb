"""The ``refsys`` command: exit codes, one-line errors, and the credentials it issues."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner

from control_plane.cli import main
from control_plane.core.audit.trail import AuditFilter
from control_plane.core.auth.roles import Role
from control_plane.core.config import load_settings
from control_plane.core.services import build_verifier, open_audit, open_engine, open_issuer
from tests.apps import run_refsys


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in [name for name in os.environ if name.startswith("REFSYS_")]:
        monkeypatch.delenv(name)
    return tmp_path


def _serve(workdir: Path, config: str) -> subprocess.CompletedProcess[str]:
    (workdir / "refsys.yaml").write_text(config)
    return run_refsys("serve", "--config", "refsys.yaml", "--port", "1", cwd=workdir)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("server:\n  hots: 0.0.0.0\n", "unknown setting server.hots"),
        ("database:\n  pool_size: lots\n", "database.pool_size: Input should be a valid integer"),
        (
            "database:\n  url: postgresql://postgres@127.0.0.1:1/refsys\n",
            "cannot connect to postgresql+psycopg://postgres@127.0.0.1:1/refsys",
        ),
        (
            "database:\n  url: postgresql://u:hunter2@127.0.0.1:1/refsys\n",
            "cannot connect to postgresql+psycopg://u:***@127.0.0.1:1/refsys",
        ),
        (
            "database:\n  url: sqlite:////nonexistent/dir/refsys.db\n",
            "directory /nonexistent/dir does not exist",
        ),
        (
            "production:\n  executor: kubernetes\n  kubernetes:\n    kubeconfig: /nonexistent/kubeconfig\n",
            "production.kubernetes: cannot load the kubeconfig /nonexistent/kubeconfig",
        ),
        (
            "production:\n  chain_dirs: [/nonexistent/chains]\n",
            "config error: chain files: /nonexistent/chains",
        ),
    ],
)
def test_bad_configuration_stops_serve_with_exit_2_and_creates_nothing(
    workdir: Path, config: str, message: str
) -> None:
    result = _serve(workdir, config)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "hunter2" not in result.stderr
    assert sorted(path.name for path in workdir.iterdir()) == ["refsys.yaml"]


def test_token_create_prints_a_token_the_server_accepts_and_audits_it(workdir: Path) -> None:
    result = CliRunner().invoke(
        main, ["token", "create", "--role", "auditor", "--role", "operator", "--sub", "ann", "--ttl", "15m"]
    )
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    settings = load_settings()
    principal = build_verifier(settings, open_issuer(settings)).verify(token)
    assert principal.subject == "ann" and principal.roles == {Role.AUDITOR, Role.OPERATOR}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 900
    engine = open_engine(settings)
    (record,) = open_audit(settings, engine).list(AuditFilter(action="token.issue"))
    assert record["target"] == "ann" and record["details"]["jti"] == claims["jti"]
    assert token not in str(record)
    mode = stat.S_IMODE(settings.issuer_key_file.stat().st_mode)
    assert mode == 0o600


def test_token_ttl_beyond_the_issuer_maximum_is_refused(workdir: Path) -> None:
    result = CliRunner().invoke(main, ["token", "create", "--role", "admin", "--ttl", "30d"])
    assert result.exit_code == 1
    assert "token lifetime must be between" in result.output


def test_bad_duration_is_a_usage_error(workdir: Path) -> None:
    result = CliRunner().invoke(main, ["token", "create", "--role", "admin", "--ttl", "soon"])
    assert result.exit_code == 2


def test_machine_keys_are_created_once_stored_hashed_and_revoked(workdir: Path) -> None:
    runner = CliRunner()
    created = runner.invoke(main, ["key", "create", "--role", "ingest", "--name", "suricata-1"])
    assert created.exit_code == 0, created.output
    key = created.output.strip()
    assert key.startswith("rsk_")
    settings = load_settings()
    engine = open_engine(settings)
    with engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT secret_sha256 FROM machine_keys").scalar_one()
    assert key.split("_", 2)[2] not in stored
    assert runner.invoke(main, ["key", "create", "--role", "ingest", "--name", "suricata-1"]).exit_code == 1
    assert runner.invoke(main, ["key", "create", "--role", "admin", "--name", "x"]).exit_code == 2
    assert runner.invoke(main, ["key", "revoke", "suricata-1"]).exit_code == 0
    assert runner.invoke(main, ["key", "revoke", "suricata-1"]).exit_code == 1
    actions = [row["action"] for row in open_audit(settings, engine).list(AuditFilter(), newest_first=False)]
    assert actions == ["machine_key.create", "machine_key.revoke"]


def test_rotation_keeps_old_tokens_valid_and_signs_new_ones_with_a_new_key(workdir: Path) -> None:
    runner = CliRunner()
    old = runner.invoke(main, ["token", "create", "--role", "admin"]).output.strip()
    assert runner.invoke(main, ["issuer", "rotate"]).exit_code == 0
    new = runner.invoke(main, ["token", "create", "--role", "admin"]).output.strip()
    assert jwt.get_unverified_header(old)["kid"] != jwt.get_unverified_header(new)["kid"]
    settings = load_settings()
    issuer = open_issuer(settings)
    assert issuer is not None
    published = {key["kid"] for key in issuer.jwks()["keys"]}
    assert {jwt.get_unverified_header(old)["kid"], jwt.get_unverified_header(new)["kid"]} <= published
    verifier = build_verifier(settings, issuer)
    assert verifier.verify(old).roles == verifier.verify(new).roles == {Role.ADMIN}


def test_db_upgrade_is_idempotent_and_audited_once(workdir: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["db", "upgrade"])
    second = runner.invoke(main, ["db", "upgrade"])
    assert first.exit_code == second.exit_code == 0
    settings = load_settings()
    records = open_audit(settings, open_engine(settings)).list(AuditFilter(action="db.upgrade"))
    assert len(records) == 1 and records[0]["details"]["from"] is None
