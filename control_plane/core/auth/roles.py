"""Roles and permissions in one table.

Every route declares a permission; this table says which roles hold it. ``admin`` holds every permission, and
machine credentials can only ever carry the ``ingest`` or ``metrics`` role. Adding a route means adding (or
reusing) a permission here, so a reviewer sees every access decision in one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    OPS_MANAGER = "ops-manager"
    SECURITY_OFFICER = "security-officer"
    AUDITOR = "auditor"
    INGEST = "ingest"
    METRICS = "metrics"


MACHINE_ROLES = frozenset({Role.INGEST, Role.METRICS})
"""The only roles a machine key may carry: sensors push telemetry, scrapers read metrics."""

HUMAN_ROLES = frozenset(Role) - MACHINE_ROLES

PERMISSIONS: dict[str, frozenset[Role]] = {
    "api:schema": HUMAN_ROLES,
    "audit:read": frozenset({Role.AUDITOR}),
    "audit:verify": frozenset({Role.AUDITOR}),
    "metrics:read": frozenset({Role.METRICS}),
    "telemetry:ingest": frozenset({Role.INGEST}),
    "telemetry:read": frozenset({Role.SECURITY_OFFICER}),
    "events:search": frozenset({Role.SECURITY_OFFICER, Role.AUDITOR}),
    "hooks:read": frozenset({Role.SECURITY_OFFICER}),
    "hooks:write": frozenset({Role.SECURITY_OFFICER}),
    "rules:read": frozenset({Role.SECURITY_OFFICER}),
    "rules:write": frozenset({Role.SECURITY_OFFICER}),
    "alerts:read": frozenset({Role.SECURITY_OFFICER}),
    "incidents:read": frozenset({Role.SECURITY_OFFICER}),
    "incidents:write": frozenset({Role.SECURITY_OFFICER}),
    "pipelines:read": frozenset({Role.OPERATOR, Role.OPS_MANAGER}),
    "runs:read": frozenset({Role.OPERATOR, Role.OPS_MANAGER}),
    "runs:write": frozenset({Role.OPERATOR}),
    "runs:logs": frozenset({Role.OPERATOR}),
    "parking-lot:read": frozenset({Role.OPERATOR}),
    "parking-lot:write": frozenset({Role.OPERATOR}),
    "reprocessing:write": frozenset({Role.OPERATOR}),
    "products:read": frozenset({Role.OPERATOR, Role.OPS_MANAGER}),
    "products:download": frozenset({Role.OPERATOR, Role.OPS_MANAGER}),
    "products:rescan": frozenset({Role.OPERATOR}),
}
"""Permission -> roles that hold it (``admin`` is added to every entry by ``roles_for``)."""


def roles_for(permission: str) -> frozenset[Role]:
    """Roles admitted by ``permission``; an unknown name is a programming error caught at import time."""
    try:
        return PERMISSIONS[permission] | {Role.ADMIN}
    except KeyError:
        raise KeyError(f"permission '{permission}' is not in the roles table") from None


def parse_roles(names: Iterable[str]) -> frozenset[Role]:
    """Known roles among ``names``; unknown role names (other clients' roles, typos in the IdP) are ignored."""
    known = {role.value for role in Role}
    return frozenset(Role(name) for name in names if name in known)


def holds(roles: frozenset[Role], permission: str) -> bool:
    return bool(roles & roles_for(permission))
