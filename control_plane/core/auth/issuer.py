"""The built-in token issuer of the embedded default: the same JWT/JWKS path as Keycloak, with no IdP to run.

Its key set lives in one 0600 JSON file. ``rotate`` retires the current key but keeps publishing it in the JWKS
until the longest-lived token it can have signed has expired, so rotation never logs anyone out early.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from control_plane.core import clock, ids, secretfiles
from control_plane.core.auth.roles import Role

ISSUER_ALGORITHM = "ES256"


class IssuerError(Exception):
    """The built-in issuer cannot mint the requested token."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_pem: str
    created_at: datetime
    retired_at: datetime | None = None

    def public_jwk(self) -> dict[str, Any]:
        private = serialization.load_pem_private_key(self.private_pem.encode(), password=None)
        jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(private.public_key()))  # type: ignore[arg-type]
        return jwk | {"kid": self.kid, "alg": ISSUER_ALGORITHM, "use": "sig"}

    def as_dict(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "private_pem": self.private_pem,
            "created_at": clock.rfc3339(self.created_at),
            "retired_at": clock.rfc3339(self.retired_at) if self.retired_at else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SigningKey:
        retired = data.get("retired_at")
        return cls(
            kid=data["kid"],
            private_pem=data["private_pem"],
            created_at=clock.parse_rfc3339(data["created_at"]),
            retired_at=clock.parse_rfc3339(retired) if retired else None,
        )


def _new_key() -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return SigningKey(kid=ids.new_id(), private_pem=pem, created_at=clock.utcnow())


def _encode(keys: list[SigningKey]) -> bytes:
    return json.dumps({"keys": [key.as_dict() for key in keys]}, indent=1).encode()


class BuiltinIssuer:
    """Mints tokens shaped as Keycloak shapes them (roles under ``resource_access.<client>.roles``)."""

    def __init__(self, *, key_file: Path, issuer: str, audience: str, client_id: str, max_ttl_s: int) -> None:
        self.key_file = key_file
        self.issuer = issuer
        self.audience = audience
        self.client_id = client_id
        self.max_ttl_s = max_ttl_s
        self._keys = self._load()

    def _load(self) -> list[SigningKey]:
        raw = secretfiles.read_or_create_secret(self.key_file, lambda: _encode([_new_key()]))
        return [SigningKey.from_dict(item) for item in json.loads(raw)["keys"]]

    def reload(self) -> None:
        """Re-read the key file (another process, such as ``refsys issuer rotate``, may have changed it)."""
        self._keys = self._load()

    @property
    def active_key(self) -> SigningKey:
        return next(key for key in reversed(self._keys) if key.retired_at is None)

    def published_keys(self, now: datetime | None = None) -> list[SigningKey]:
        """Keys whose tokens may still be valid: the active one and those retired less than max_ttl ago."""
        now = now or clock.utcnow()
        grace = timedelta(seconds=self.max_ttl_s)
        return [key for key in self._keys if key.retired_at is None or key.retired_at + grace > now]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk() for key in self.published_keys()]}

    def rotate(self) -> SigningKey:
        """Start signing with a new key; the old one stays published until its tokens expire."""
        now = clock.utcnow()
        kept = [
            key if key.retired_at else SigningKey(key.kid, key.private_pem, key.created_at, now)
            for key in self.published_keys(now)
        ]
        fresh = _new_key()
        secretfiles.write_secret(self.key_file, _encode([*kept, fresh]), replace=True)
        self._keys = [*kept, fresh]
        return fresh

    def mint(self, *, subject: str, roles: frozenset[Role], ttl_s: int) -> tuple[str, dict[str, Any]]:
        """A signed access token and its claims; the caller audits the issuance (never the token itself)."""
        if ttl_s <= 0 or ttl_s > self.max_ttl_s:
            raise IssuerError(
                f"token lifetime must be between 1 s and {self.max_ttl_s} s (auth.builtin_issuer.max_ttl_s)"
            )
        if not subject:
            raise IssuerError("a token needs a subject")
        now = int(clock.utcnow().timestamp())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "azp": self.client_id,
            "typ": "Bearer",
            "iat": now,
            "nbf": now,
            "exp": now + ttl_s,
            "jti": ids.new_id(),
            "preferred_username": subject,
            "resource_access": {self.client_id: {"roles": sorted(role.value for role in roles)}},
        }
        key = self.active_key
        token = jwt.encode(claims, key.private_pem, algorithm=ISSUER_ALGORITHM, headers={"kid": key.kid})
        return token, claims
