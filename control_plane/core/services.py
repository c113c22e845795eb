"""Opening refsys's stores from settings: the one place that knows how the kernel's parts fit together.

The server uses all of them; CLI commands open only what they need (``refsys token create`` needs no bus).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from control_plane.core import schema
from control_plane.core.audit.keys import AuditKeys
from control_plane.core.audit.refusals import RefusalLimiter
from control_plane.core.audit.trail import AuditTrail
from control_plane.core.auth.authenticate import Authenticator
from control_plane.core.auth.issuer import BuiltinIssuer
from control_plane.core.auth.keysources import BuiltinKeySource, JwksKeySource
from control_plane.core.auth.machine_keys import MachineKeyStore
from control_plane.core.auth.tokens import KeySource, TokenVerifier
from control_plane.core.bus import Bus, create_bus
from control_plane.core.config import ConfigError, Settings
from control_plane.core.db import create_db_engine, safe_url
from control_plane.core.metrics import ServiceMetrics

BUILTIN_KEY_RELOAD_S = 1.0


def open_engine(settings: Settings) -> Engine:
    """An engine on the state database, after proving it is reachable (``ConfigError`` otherwise).

    Nothing is created on disk for a database that cannot be reached: for SQLite, only a file under the data
    directory may be created, and the data directory itself only when the URL points into it.
    """
    url = settings.database_url
    if url.startswith("sqlite"):
        path = sa.make_url(url).database
        if path and path != ":memory:":
            parent = Path(path).absolute().parent
            if not parent.is_dir() and not parent.is_relative_to(settings.data_dir):
                raise ConfigError(f"config error: database.url: directory {parent} does not exist")
            parent.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(
        url, pool_size=settings.database.pool_size, connect_timeout_s=settings.database.connect_timeout_s
    )
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ConfigError(
            f"config error: database.url: cannot connect to {safe_url(url)}: {reason}"
        ) from None
    return engine


def open_audit(settings: Settings, engine: Engine, *, create_keys: bool = True) -> AuditTrail:
    keys = AuditKeys.load(
        mac_key_file=settings.audit_mac_key_file,
        signing_key_file=settings.audit_signing_key_file,
        create=create_keys,
    )
    return AuditTrail(engine, keys, settings.audit_checkpoint_file)


def open_issuer(settings: Settings) -> BuiltinIssuer | None:
    """The built-in issuer, or None when an external issuer took over and it was not explicitly kept on."""
    if not settings.builtin_issuer_enabled:
        return None
    return BuiltinIssuer(
        key_file=settings.issuer_key_file,
        issuer=settings.auth.builtin_issuer.issuer,
        audience=settings.audience,
        client_id=settings.auth.client_id,
        max_ttl_s=settings.auth.builtin_issuer.max_ttl_s,
    )


def build_verifier(settings: Settings, issuer: BuiltinIssuer | None) -> TokenVerifier:
    sources: dict[str, KeySource] = {}
    if issuer is not None:
        sources[issuer.issuer] = BuiltinKeySource(issuer, min_refresh_s=BUILTIN_KEY_RELOAD_S)
    oidc = settings.auth.oidc
    if oidc.issuer:
        sources[oidc.issuer] = JwksKeySource(
            issuer=oidc.issuer, jwks_url=oidc.jwks_url, min_refresh_s=oidc.jwks_min_refresh_s
        )
    return TokenVerifier(
        issuers=sources,
        audience=settings.audience,
        client_id=settings.auth.client_id,
        realm_roles=settings.auth.realm_roles,
        leeway_s=settings.auth.leeway_s,
    )


@dataclass
class Services:
    """Everything a running server holds; reachable from handlers as ``request.app.state.services``."""

    settings: Settings
    engine: Engine
    bus: Bus
    issuer: BuiltinIssuer | None
    authenticator: Authenticator
    audit: AuditTrail
    refusals: RefusalLimiter
    metrics: ServiceMetrics

    def close(self) -> None:
        self.bus.close()
        self.engine.dispose()


def open_services(settings: Settings) -> Services:
    """Open every store for a server. The state database must already be at the newest schema."""
    engine = open_engine(settings)
    try:
        schema.require_current(engine)
        issuer = open_issuer(settings)
        audit = open_audit(settings, engine)
        return Services(
            settings=settings,
            engine=engine,
            bus=create_bus(settings),
            issuer=issuer,
            authenticator=Authenticator(
                verifier=build_verifier(settings, issuer), machine_keys=MachineKeyStore(engine)
            ),
            audit=audit,
            refusals=RefusalLimiter(settings.audit.refusals_per_minute),
            metrics=ServiceMetrics(audit_head_seq=lambda: audit.head()[0]),
        )
    except BaseException:
        engine.dispose()
        raise
