"""Identity: every way a bearer credential can be wrong is answered 401 with a problem body; wrong role, 403."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from control_plane.core.auth.machine_keys import MachineKeyStore
from control_plane.core.auth.roles import Role
from control_plane.core.services import Services
from tests.apps import bearer, make_settings, running_app

AUDIT = "/api/v1/audit"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[TestClient, Services]]:
    with running_app(make_settings(tmp_path)) as pair:
        yield pair


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(services: Services, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": services.settings.auth.builtin_issuer.issuer,
        "aud": services.settings.audience,
        "sub": "mallory",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "j-1",
        "resource_access": {"refsys": {"roles": ["admin"]}},
    }
    claims.update(changes)
    return claims


def _signed(services: Services, claims: dict[str, Any]) -> str:
    """Signed with the issuer's real key, so only the claims are wrong."""
    assert services.issuer is not None
    key = services.issuer.active_key
    return jwt.encode(claims, key.private_pem, algorithm="ES256", headers={"kid": key.kid})


def _assert_refused(response: Any, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert reason in body["detail"]


def _get(client: TestClient, token: str, path: str = AUDIT) -> Any:
    return client.get(path, headers={"Authorization": f"Bearer {token}"})


def test_valid_token_is_accepted(app: tuple[TestClient, Services]) -> None:
    client, services = app
    assert _get(client, _signed(services, _claims(services))).status_code == 200


def test_expired_token(app: tuple[TestClient, Services]) -> None:
    client, services = app
    past = int(time.time()) - 3600
    token = _signed(services, _claims(services, iat=past - 600, nbf=past - 600, exp=past))
    _assert_refused(_get(client, token), 401, "token expired")


def test_wrong_audience(app: tuple[TestClient, Services]) -> None:
    client, services = app
    _assert_refused(_get(client, _signed(services, _claims(services, aud="account"))), 401, "wrong audience")


def test_wrong_issuer(app: tuple[TestClient, Services]) -> None:
    client, services = app
    token = _signed(services, _claims(services, iss="https://evil.example/realms/x"))
    _assert_refused(_get(client, token), 401, "wrong issuer")


def test_unknown_kid(app: tuple[TestClient, Services]) -> None:
    client, services = app
    stranger = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(_claims(services), stranger, algorithm="ES256", headers={"kid": "not-a-published-key"})
    _assert_refused(_get(client, token), 401, "unknown signing key")


def test_alg_none(app: tuple[TestClient, Services]) -> None:
    client, services = app
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    token = f"{header}.{_b64(json.dumps(_claims(services)).encode())}."
    _assert_refused(_get(client, token), 401, "'none' is not accepted")


def test_hs256_signed_with_the_public_key_as_secret(app: tuple[TestClient, Services]) -> None:
    """The classic key-confusion attack: HMAC keyed with the (public) verification key."""
    client, services = app
    assert services.issuer is not None
    key = services.issuer.active_key
    public_pem = (
        serialization.load_pem_private_key(key.private_pem.encode(), password=None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    payload = _b64(json.dumps(_claims(services)).encode())
    signature = _b64(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    _assert_refused(_get(client, f"{header}.{payload}.{signature}"), 401, "'HS256' is not accepted")


def test_tampered_signature(app: tuple[TestClient, Services]) -> None:
    client, services = app
    header, payload, signature = _signed(services, _claims(services)).split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    _assert_refused(_get(client, f"{header}.{payload}.{flipped}"), 401, "bad signature")


def test_tampered_claims_keep_the_old_signature(app: tuple[TestClient, Services]) -> None:
    client, services = app
    header, _payload, signature = _signed(services, _claims(services, resource_access={})).split(".")
    forged = _b64(json.dumps(_claims(services)).encode())
    _assert_refused(_get(client, f"{header}.{forged}.{signature}"), 401, "bad signature")


def test_missing_header(app: tuple[TestClient, Services]) -> None:
    client, _services = app
    response = client.get(AUDIT)
    _assert_refused(response, 401, "missing bearer credential")
    assert response.headers["www-authenticate"] == 'Bearer realm="refsys"'


def test_revoked_machine_key(app: tuple[TestClient, Services]) -> None:
    client, services = app
    keys = MachineKeyStore(services.engine)
    issued = keys.create(name="prom-1", role=Role.METRICS, created_by="test")
    assert _get(client, issued.key, "/metrics").status_code == 200
    keys.revoke("prom-1")
    _assert_refused(_get(client, issued.key, "/metrics"), 401, "machine key revoked")


def test_machine_key_on_a_route_machines_cannot_use(app: tuple[TestClient, Services]) -> None:
    client, services = app
    issued = MachineKeyStore(services.engine).create(name="falco-1", role=Role.INGEST, created_by="test")
    _assert_refused(_get(client, issued.key), 401, "accepted only on ingest and metrics routes")


def test_machine_key_with_a_wrong_secret(app: tuple[TestClient, Services]) -> None:
    client, services = app
    issued = MachineKeyStore(services.engine).create(name="prom-2", role=Role.METRICS, created_by="test")
    _assert_refused(_get(client, issued.key[:-4] + "AAAA", "/metrics"), 401, "unknown machine key")


def test_valid_token_with_the_wrong_role_is_forbidden(app: tuple[TestClient, Services]) -> None:
    client, services = app
    _assert_refused(client.get(AUDIT, headers=bearer(services, Role.OPERATOR)), 403, "auditor")


def test_admin_implies_every_role(app: tuple[TestClient, Services]) -> None:
    client, services = app
    assert client.get(AUDIT, headers=bearer(services, Role.ADMIN)).status_code == 200
    assert client.get("/metrics", headers=bearer(services, Role.ADMIN)).status_code == 200


def test_refusals_are_audited_with_their_reason(app: tuple[TestClient, Services]) -> None:
    client, services = app
    client.get(AUDIT, headers={"Authorization": "Bearer not.a.jwt", "User-Agent": "probe/1"})
    client.get(AUDIT, headers=bearer(services, Role.OPERATOR, subject="olga"))
    records = client.get(
        AUDIT, params={"action": "request.refused"}, headers=bearer(services, Role.AUDITOR)
    ).json()
    by_status = {item["details"]["status"]: item for item in records["items"]}
    assert by_status[401]["details"]["reason"] == "malformed token"
    assert by_status[401]["actor"] == "anonymous"
    assert by_status[401]["user_agent"] == "probe/1"
    assert by_status[403]["actor"] == "olga"
    assert by_status[403]["target"] == "GET /api/v1/audit"
    assert by_status[403]["outcome"] == "refused"
