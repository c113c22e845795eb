"""What every ``refsys`` command shares: exit codes, one-line errors, configuration and state opening."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy.engine import Engine

from control_plane.core import schema
from control_plane.core.audit.keys import AuditKeyError
from control_plane.core.audit.trail import Actor, AuditTrail
from control_plane.core.auth.issuer import BuiltinIssuer, IssuerError
from control_plane.core.auth.roles import Role
from control_plane.core.config import ConfigError, Settings, load_settings
from control_plane.core.services import open_audit, open_engine, open_issuer

EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
DEMO_TOKEN_TTL_S = 12 * 3600
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"refsys: {message}", err=True)
    sys.exit(code)


def config_option(command: F) -> F:
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="REFSYS_CONFIG",
        help="YAML configuration file (default: embedded defaults, state under ./var).",
    )(command)


def settings_from(config_file: Path | None) -> Settings:
    try:
        return load_settings(config_file)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def open_state(settings: Settings) -> Engine:
    """The state database, reachable and at head: an embedded SQLite is upgraded in place, a shared
    PostgreSQL schema that is behind is refused (upgrading it is an operator's decision)."""
    try:
        engine = open_engine(settings)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        if settings.is_postgres:
            schema.require_current(engine)
        else:
            schema.upgrade(engine)
    except schema.SchemaBehindError as exc:
        engine.dispose()
        fail(str(exc), EXIT_USAGE)
    return engine


def open_trail(settings: Settings, engine: Engine, *, create_keys: bool = True) -> AuditTrail:
    try:
        return open_audit(settings, engine, create_keys=create_keys)
    except AuditKeyError as exc:
        fail(str(exc), EXIT_USAGE)


def parse_duration(text: str) -> int:
    match = _DURATION.match(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration such as 90s, 15m, 1h or 7d")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def builtin_issuer(settings: Settings) -> BuiltinIssuer:
    issuer = open_issuer(settings)
    if issuer is None:
        fail(
            "the built-in issuer is off (an external issuer is configured); set auth.builtin_issuer.enabled",
            EXIT_USAGE,
        )
    return issuer


def audit_local(
    settings: Settings,
    engine: Engine,
    action: str,
    *,
    target: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Audit a change made from this machine's CLI and checkpoint the head at once: a CLI process has no
    periodic checkpointer, and its record must not sit in an unprotected tail."""
    trail = open_trail(settings, engine)
    trail.append(actor=Actor.local_cli(), action=action, outcome="success", target=target, details=details)
    trail.checkpoint()


def mint_audited(
    settings: Settings, engine: Engine, *, subject: str, roles: frozenset[Role], ttl_s: int
) -> str:
    """A token from the built-in issuer, its issuance audited and checkpointed (the token itself never is)."""
    try:
        token, claims = builtin_issuer(settings).mint(subject=subject, roles=roles, ttl_s=ttl_s)
    except IssuerError as exc:
        fail(str(exc), EXIT_CHECK_FAILED)
    details = {"roles": sorted(roles), "jti": claims["jti"], "exp": claims["exp"], "ttl_s": ttl_s}
    audit_local(settings, engine, "token.issue", target=subject, details=details)
    return token
