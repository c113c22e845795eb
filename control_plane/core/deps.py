"""FastAPI dependencies declared once for every router: the services, and the permission check.

A route states what it needs with ``Annotated[Principal, Depends(Authorize("audit:read"))]``; ``Authorize``
authenticates the caller, checks the roles table and audits every refusal.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from control_plane.core.audit.trail import Actor
from control_plane.core.auth.roles import MACHINE_ROLES, holds, roles_for
from control_plane.core.auth.tokens import AuthError, Principal
from control_plane.core.services import Services

ANONYMOUS = "anonymous"
bearer_scheme = HTTPBearer(
    auto_error=False,  # refsys answers missing credentials itself, as an audited problem
    description="An access token (built-in issuer or Keycloak), or a machine key on ingest and metrics routes.",
)


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def request_actor(request: Request, principal: Principal | None) -> Actor:
    """The audit trail's view of who is behind ``request``."""
    return Actor(
        subject=principal.subject if principal else ANONYMOUS,
        roles=tuple(sorted(principal.roles)) if principal else (),
        credential_id=principal.credential_id if principal else None,
        client=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        request_id=getattr(request.state, "request_id", None),
    )


class Authorize:
    """Authenticate the caller and require ``permission``: 401 without a valid credential, 403 without the role."""

    def __init__(self, permission: str) -> None:
        self.permission = permission
        self.roles = roles_for(permission)
        self.machine_key_allowed = bool(self.roles & MACHINE_ROLES)

    async def __call__(
        self,
        request: Request,
        services: ServicesDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    ) -> Principal:
        credential = credentials.credentials if credentials else None
        # Fast path on the event loop: a token verified before and not yet expired. Anything else may read the
        # database (machine keys) or fetch a JWKS (unknown kid), so it runs on a worker thread.
        principal = services.authenticator.cached(credential)
        if principal is None:
            try:
                principal = await run_in_threadpool(
                    services.authenticator.authenticate,
                    credential,
                    machine_key_allowed=self.machine_key_allowed,
                )
            except AuthError as exc:
                raise await run_in_threadpool(_refusal, request, services, None, 401, str(exc)) from None
        if not holds(principal.roles, self.permission):
            needed = ", ".join(sorted(self.roles))
            reason = f"this action needs one of the roles: {needed}"
            raise await run_in_threadpool(_refusal, request, services, principal, 403, reason)
        request.state.principal = principal
        return principal


def _refusal(
    request: Request, services: Services, principal: Principal | None, status: int, reason: str
) -> HTTPException:
    """Audit the refusal (or count it, past the per-client rate) and return the problem to raise."""
    actor = request_actor(request, principal)
    if services.refusals.admit(actor.client or "unknown", reason):
        route = getattr(request.scope.get("route"), "path", request.url.path)
        services.audit.append(
            actor=actor,
            action="request.refused",
            outcome="refused",
            target=f"{request.method} {route}",
            details={"status": status, "reason": reason},
        )
    if status != 401:
        return HTTPException(status_code=status, detail=reason)
    challenge = 'Bearer realm="refsys"'
    if request.headers.get("authorization"):  # RFC 6750 section 3: no error code when no credential was sent
        challenge += f', error="invalid_token", error_description="{reason}"'
    return HTTPException(status_code=status, detail=reason, headers={"WWW-Authenticate": challenge})
