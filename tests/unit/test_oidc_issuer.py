"""An external OIDC issuer shaped like Keycloak, served over real HTTP on loopback: discovery, JWKS with an
encryption key to ignore, client roles versus realm roles, key rotation, and the refetch rate limit.

Keycloak itself cannot run here (see DESIGN.md section 3); its token and JWKS shapes are reproduced.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from control_plane.core.auth.roles import Role
from control_plane.core.auth.tokens import AuthError, TokenVerifier
from control_plane.core.config import Settings
from control_plane.core.services import build_verifier


@dataclass
class FakeRealm:
    """A Keycloak realm's discovery and certs endpoints with keys we control."""

    base_url: str = ""
    keys: dict[str, Any] = field(default_factory=dict)
    jwks_fetches: int = 0

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/realms/eo"

    def add_rsa_key(self, kid: str) -> rsa.RSAPrivateKey:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self.keys[kid]

    def jwks(self) -> dict[str, Any]:
        published = []
        for kid, key in self.keys.items():
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            published.append(jwk | {"kid": kid, "alg": "RS256", "use": "sig"})
        encryption = json.loads(
            RSAAlgorithm.to_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key())
        )
        published.append(encryption | {"kid": "enc-1", "alg": "RSA-OAEP", "use": "enc"})
        return {"keys": published}

    def token(self, kid: str, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": self.issuer, "aud": ["refsys", "account"], "sub": "f3b1-uuid", "azp": "refsys", "typ": "Bearer",
            "iat": now, "exp": now + 300, "jti": "kc-jti", "preferred_username": "sofia",
            "realm_access": {"roles": ["admin", "offline_access"]},
            "resource_access": {"refsys": {"roles": ["security-officer"]}, "account": {"roles": ["manage-account"]}},
        }  # fmt: skip
        body.update(claims)
        return jwt.encode(body, self.keys[kid], algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def realm() -> Iterator[FakeRealm]:
    state = FakeRealm()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/realms/eo/.well-known/openid-configuration":
                body = {"issuer": state.issuer, "jwks_uri": f"{state.issuer}/protocol/openid-connect/certs"}
            elif self.path == "/realms/eo/protocol/openid-connect/certs":
                state.jwks_fetches += 1
                body = state.jwks()
            else:
                self.send_error(404)
                return
            payload = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()


def _verifier(realm: FakeRealm, *, min_refresh_s: float, realm_roles: bool = False) -> TokenVerifier:
    settings = Settings(
        auth={
            "oidc": {"issuer": realm.issuer, "jwks_min_refresh_s": min_refresh_s},
            "realm_roles": realm_roles,
        }
    )
    assert not settings.builtin_issuer_enabled
    return build_verifier(settings, None)


def test_keycloak_token_roles_come_from_the_refsys_client(realm: FakeRealm) -> None:
    realm.add_rsa_key("k1")
    principal = _verifier(realm, min_refresh_s=0).verify(realm.token("k1"))
    assert principal.subject == "f3b1-uuid"
    assert principal.roles == {Role.SECURITY_OFFICER}, "realm roles must not count unless configured"


def test_realm_roles_count_when_configured(realm: FakeRealm) -> None:
    realm.add_rsa_key("k1")
    principal = _verifier(realm, min_refresh_s=0, realm_roles=True).verify(realm.token("k1"))
    assert principal.roles == {Role.SECURITY_OFFICER, Role.ADMIN}


def test_rotation_at_the_issuer_is_picked_up_by_refetching_on_an_unknown_kid(realm: FakeRealm) -> None:
    realm.add_rsa_key("k1")
    verifier = _verifier(realm, min_refresh_s=0)
    verifier.verify(realm.token("k1"))
    realm.add_rsa_key("k2")
    assert verifier.verify(realm.token("k2", jti="second")).roles == {Role.SECURITY_OFFICER}
    assert realm.jwks_fetches == 2


def test_unknown_kid_floods_are_rate_limited(realm: FakeRealm) -> None:
    realm.add_rsa_key("k1")
    verifier = _verifier(realm, min_refresh_s=3600)
    stranger = ec.generate_private_key(ec.SECP256R1())
    for number in range(50):
        token = jwt.encode(
            {"iss": realm.issuer}, stranger, algorithm="ES256", headers={"kid": f"made-up-{number}"}
        )
        with pytest.raises(AuthError, match="unknown signing key"):
            verifier.verify(token)
    assert realm.jwks_fetches == 1


def test_encryption_keys_and_mismatched_algorithms_are_refused(realm: FakeRealm) -> None:
    realm.add_rsa_key("k1")
    verifier = _verifier(realm, min_refresh_s=0)
    enc_signed = jwt.encode(
        {"iss": realm.issuer}, realm.keys["k1"], algorithm="RS256", headers={"kid": "enc-1"}
    )
    with pytest.raises(AuthError, match="unknown signing key"):
        verifier.verify(enc_signed)
    other = ec.generate_private_key(ec.SECP256R1())
    confused = jwt.encode({"iss": realm.issuer}, other, algorithm="ES256", headers={"kid": "k1"})
    with pytest.raises(AuthError, match="does not match the signing key"):
        verifier.verify(confused)


def test_unreachable_issuer_refuses_tokens_instead_of_failing_open() -> None:
    settings = Settings(auth={"oidc": {"issuer": "http://127.0.0.1:1/realms/eo"}})
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({"iss": "http://127.0.0.1:1/realms/eo"}, key, algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(AuthError, match="unknown signing key"):
        build_verifier(settings, None).verify(token)
