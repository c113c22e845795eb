"""Bearer JWT verification, as for tokens Keycloak issues: asymmetric signatures only, claims checked.

``alg`` is checked against a fixed allow-list before any key is touched, so ``none`` and the HS256
"public key as HMAC secret" confusion are refused outright. Verified tokens are cached until they expire, so a
client reusing its token pays for the signature check once.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import jwt

from control_plane.core import clock
from control_plane.core.auth.roles import Role, parse_roles

ALLOWED_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]
VERIFIED_CACHE_SIZE = 4096


class AuthError(Exception):
    """The credential was refused; ``str()`` is the reason given to the client and to the audit trail."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a person or service (JWT) or a machine key, with the roles it holds."""

    subject: str
    roles: frozenset[Role]
    kind: Literal["token", "machine-key"]
    credential_id: str | None
    """The token's ``jti``, or the machine key's name."""
    expires_at: float | None = None


class KeySource(Protocol):
    """Where the public keys of one issuer come from."""

    def key_for(self, kid: str | None) -> jwt.PyJWK | None:
        """The key named ``kid``, refreshing (rate-limited) when it is unknown; None if it stays unknown."""
        ...


_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.MissingRequiredClaimError, "token lacks a required claim"),
)


class TokenVerifier:
    def __init__(
        self,
        *,
        issuers: Mapping[str, KeySource],
        audience: str,
        client_id: str,
        realm_roles: bool,
        leeway_s: int,
    ) -> None:
        self.issuers = dict(issuers)
        self.audience = audience
        self.client_id = client_id
        self.realm_roles = realm_roles
        self.leeway_s = leeway_s
        self._cache: OrderedDict[bytes, Principal] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, token: str) -> Principal | None:
        """The principal of ``token`` if it was verified before and has not expired since."""
        digest = hashlib.sha256(token.encode()).digest()
        with self._lock:
            principal = self._cache.get(digest)
            if principal is None:
                return None
            if (
                principal.expires_at is None
                or principal.expires_at + self.leeway_s <= clock.utcnow().timestamp()
            ):
                del self._cache[digest]
                return None
            self._cache.move_to_end(digest)
            return principal

    def verify(self, token: str) -> Principal:
        """The principal the token names, or ``AuthError`` saying why it is refused."""
        cached = self.cached(token)
        if cached is not None:
            return cached
        principal = self._verify_uncached(token)
        with self._lock:
            self._cache[hashlib.sha256(token.encode()).digest()] = principal
            if len(self._cache) > VERIFIED_CACHE_SIZE:
                self._cache.popitem(last=False)
        return principal

    def _verify_uncached(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise AuthError(f"signature algorithm {algorithm!r} is not accepted")
        issuer = unverified.get("iss")
        source = self.issuers.get(issuer) if isinstance(issuer, str) else None
        if source is None:
            raise AuthError("wrong issuer")
        key = source.key_for(header.get("kid"))
        if key is None:
            raise AuthError("unknown signing key")
        if key.algorithm_name != algorithm:
            raise AuthError("signature algorithm does not match the signing key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=issuer,
                leeway=self.leeway_s,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(
                next((reason for kind, reason in _ERRORS if isinstance(exc, kind)), "invalid token")
            ) from None
        return Principal(
            subject=str(claims["sub"]),
            roles=self._roles(claims),
            kind="token",
            credential_id=str(claims["jti"]) if claims.get("jti") else None,
            expires_at=float(claims["exp"]),
        )

    def _roles(self, claims: Mapping[str, Any]) -> frozenset[Role]:
        names = _role_names(_dig(claims, "resource_access", self.client_id))
        if self.realm_roles:
            names += _role_names(_dig(claims, "realm_access"))
        return parse_roles(names)


def _dig(claims: Mapping[str, Any], *path: str) -> Any:
    node: Any = claims
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _role_names(section: Any) -> list[str]:
    roles = section.get("roles") if isinstance(section, Mapping) else None
    return [name for name in roles if isinstance(name, str)] if isinstance(roles, list) else []
