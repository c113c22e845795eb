"""Commands of the kernel: serve, tokens, issuer keys, machine keys, the database and the audit trail."""

from __future__ import annotations

import json
from pathlib import Path

import click

from control_plane.cli.common import (
    DEMO_TOKEN_TTL_S,
    EXIT_CHECK_FAILED,
    EXIT_USAGE,
    audit_local,
    builtin_issuer,
    config_option,
    fail,
    mint_audited,
    open_state,
    open_trail,
    parse_duration,
    settings_from,
)
from control_plane.core import schema, secretfiles
from control_plane.core.audit.trail import Actor
from control_plane.core.audit.verify import verify_trail
from control_plane.core.auth.machine_keys import MachineKeyError, MachineKeyStore
from control_plane.core.auth.roles import MACHINE_ROLES, Role
from control_plane.core.config import ConfigError
from control_plane.core.services import open_engine


def register(main: click.Group) -> None:
    """Add the kernel's commands to ``main``."""
    for command in (serve, token, issuer, key, db, audit):
        main.add_command(command)


@click.command()
@config_option
@click.option("--host", default=None, help="Listen address (default: server.host, 127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Listen port (default: server.port, 8080)."
)
@click.option(
    "--demo", is_flag=True, help="Write a 12 h admin token to DATA_DIR/demo-token and print its path."
)
def serve(config_file: Path | None, host: str | None, port: int | None, demo: bool) -> None:
    """Run the control plane (embedded defaults unless configured)."""
    import uvicorn

    from control_plane.app import create_app
    from control_plane.core.logs import configure_logging
    from pipelines.production import ProductionConfigError
    from pipelines.production import check_configuration as check_production

    settings = settings_from(config_file)
    overrides = {key: value for key, value in {"host": host, "port": port}.items() if value is not None}
    if overrides:
        settings = settings.model_copy(update={"server": settings.server.model_copy(update=overrides)})
    configure_logging(settings.logging.level)
    try:
        check_production(settings)
    except ProductionConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    engine = open_state(settings)
    if demo:
        token = mint_audited(
            settings, engine, subject="demo-admin", roles=frozenset({Role.ADMIN}), ttl_s=DEMO_TOKEN_TTL_S
        )
        token_file = settings.data_dir / "demo-token"
        secretfiles.write_secret(token_file, token.encode() + b"\n", replace=True)
        click.echo(f"refsys: demo admin token (12 h) written to {token_file}")
    engine.dispose()
    app = create_app(settings, demo=demo)
    click.echo(f"refsys: serving on http://{settings.server.host}:{settings.server.port}")
    uvicorn.run(app, host=settings.server.host, port=settings.server.port, log_config=None, access_log=False)


@click.group()
def token() -> None:
    """Tokens from the built-in issuer."""


@token.command("create")
@config_option
@click.option(
    "--role", "roles", multiple=True, required=True, type=click.Choice([role.value for role in Role])
)
@click.option("--sub", "subject", default=None, help="Subject (default: the role names).")
@click.option("--ttl", default="1h", show_default=True, help="Lifetime, e.g. 15m, 1h, 7d.")
def token_create(config_file: Path | None, roles: tuple[str, ...], subject: str | None, ttl: str) -> None:
    """Print a signed access token on stdout."""
    ttl_s = parse_duration(ttl)
    settings = settings_from(config_file)
    engine = open_state(settings)
    granted = frozenset(Role(name) for name in roles)
    click.echo(
        mint_audited(settings, engine, subject=subject or "+".join(sorted(roles)), roles=granted, ttl_s=ttl_s)
    )


@click.group()
def issuer() -> None:
    """The built-in issuer's signing keys."""


@issuer.command("rotate")
@config_option
def issuer_rotate(config_file: Path | None) -> None:
    """Sign new tokens with a new key; the old key stays in the JWKS until its tokens have expired."""
    settings = settings_from(config_file)
    engine = open_state(settings)
    fresh = builtin_issuer(settings).rotate()
    audit_local(settings, engine, "issuer.rotate", target=fresh.kid)
    click.echo(f"refsys: new signing key {fresh.kid}")


@click.group()
def key() -> None:
    """Machine keys for sensors (ingest) and scrapers (metrics)."""


@key.command("create")
@config_option
@click.option("--role", required=True, type=click.Choice(sorted(role.value for role in MACHINE_ROLES)))
@click.option("--name", required=True, help="Unique name of the key (never reused).")
def key_create(config_file: Path | None, role: str, name: str) -> None:
    """Create a key and print it once on stdout; only its hash is stored."""
    settings = settings_from(config_file)
    engine = open_state(settings)
    try:
        issued = MachineKeyStore(engine).create(
            name=name, role=Role(role), created_by=Actor.local_cli().subject
        )
    except MachineKeyError as exc:
        fail(str(exc), EXIT_CHECK_FAILED)
    audit_local(settings, engine, "machine_key.create", target=name, details={"role": role})
    click.echo(issued.key)


@key.command("revoke")
@config_option
@click.argument("name")
def key_revoke(config_file: Path | None, name: str) -> None:
    """Revoke a machine key at once."""
    settings = settings_from(config_file)
    engine = open_state(settings)
    try:
        MachineKeyStore(engine).revoke(name)
    except MachineKeyError as exc:
        fail(str(exc), EXIT_CHECK_FAILED)
    audit_local(settings, engine, "machine_key.revoke", target=name)
    click.echo(f"refsys: machine key {name} revoked")


@click.group()
def db() -> None:
    """The state database."""


@db.command("upgrade")
@config_option
def db_upgrade(config_file: Path | None) -> None:
    """Migrate the state database to this release's schema."""
    settings = settings_from(config_file)
    try:
        engine = open_engine(settings)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    before = schema.current_revision(engine)
    schema.upgrade(engine)
    after = schema.current_revision(engine)
    if before != after:
        audit_local(settings, engine, "db.upgrade", details={"from": before, "to": after})
    click.echo(f"refsys: database schema at {after}")


@click.group()
def audit() -> None:
    """The tamper-evident audit trail."""


@audit.command("verify")
@config_option
def audit_verify(config_file: Path | None) -> None:
    """Verify the chain; exit 1 naming the first broken record."""
    settings = settings_from(config_file)
    engine = open_state(settings)
    report = verify_trail(open_trail(settings, engine, create_keys=False))
    click.echo(json.dumps(report.as_dict()))
    if report.first_break is not None:
        fail(str(report.first_break), EXIT_CHECK_FAILED)
    if report.checkpoint is None and report.records:
        click.echo("refsys: warning: no checkpoint yet, so a cut tail could not be detected", err=True)
