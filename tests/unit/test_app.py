"""The HTTP kernel: health and readiness, problem bodies, security headers, body limit, metrics, access log."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from control_plane.core.audit.trail import Actor
from control_plane.core.auth.machine_keys import MachineKeyStore
from control_plane.core.auth.roles import Role
from control_plane.core.logs import ACCESS_LOGGER, JsonFormatter
from control_plane.core.metrics import ServiceMetrics
from control_plane.core.middleware import RequestMiddleware
from control_plane.core.services import Services
from tests.apps import bearer, free_port, make_settings, running_app


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[TestClient, Services]]:
    with running_app(make_settings(tmp_path, server={"max_body_bytes": 2048})) as pair:
        yield pair


def test_health_and_readiness(app: tuple[TestClient, Services]) -> None:
    client, _services = app
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "schema": "ok", "bus": "ok"}


def test_readiness_fails_when_the_schema_is_behind(app: tuple[TestClient, Services]) -> None:
    client, services = app
    with services.engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0000'"))
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["checks"]["schema"] == "at 0000, needs upgrade"


def test_unknown_route_is_a_problem(app: tuple[TestClient, Services]) -> None:
    client, _services = app
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "Not Found",
        "instance": "/api/v1/nothing-here",
    }


def test_invalid_query_is_a_problem_listing_the_errors(app: tuple[TestClient, Services]) -> None:
    client, services = app
    response = client.get("/api/v1/audit", params={"limit": 0}, headers=bearer(services, Role.AUDITOR))
    assert response.status_code == 422
    assert response.json()["errors"][0]["location"] == "query.limit"


def test_security_headers_and_request_id(
    app: tuple[TestClient, Services], caplog: pytest.LogCaptureFixture
) -> None:
    client, _services = app
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        response = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
        unsafe = client.get("/healthz", headers={"X-Request-ID": "a\x01b" * 40})
    assert response.headers["x-request-id"] != "abc-123", "request ids are minted by the server"
    assert uuid.UUID(response.headers["x-request-id"]).version == 7
    logged = [record.__dict__ for record in caplog.records if record.name == ACCESS_LOGGER]
    assert (
        logged[0]["client_request_id"] == "abc-123"
        and logged[0]["request_id"] == response.headers["x-request-id"]
    )
    assert logged[1]["client_request_id"] is None and unsafe.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "strict-transport-security" not in response.headers


def test_jwks_keeps_its_own_cache_policy(app: tuple[TestClient, Services]) -> None:
    client, services = app
    response = client.get("/.well-known/jwks.json")
    assert response.headers["cache-control"] == "public, max-age=60"
    assert services.issuer is not None
    assert [key["kid"] for key in response.json()["keys"]] == [services.issuer.active_key.kid]
    assert all("d" not in key for key in response.json()["keys"]), "a private key component was published"


def test_body_limit_by_declared_length(app: tuple[TestClient, Services]) -> None:
    client, services = app
    declared = client.post("/api/v1/audit", content=b"x" * 4096, headers=bearer(services, Role.AUDITOR))
    assert declared.status_code == 413
    assert declared.headers["content-type"] == "application/problem+json"
    assert declared.json()["detail"] == "request body larger than 2048 bytes"


def test_body_limit_on_a_chunked_body_without_length() -> None:
    """A chunked body has no Content-Length: the middleware counts bytes as the route reads them."""
    received: list[int] = []

    async def echo(request: Request) -> PlainTextResponse:
        body = await request.body()
        received.append(len(body))
        return PlainTextResponse(str(len(body)))

    metrics = ServiceMetrics(audit_head_seq=lambda: 0)
    inner = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    client = TestClient(
        RequestMiddleware(inner, metrics=metrics, max_body_bytes=2048, hsts=True, access_log_enabled=False)
    )

    def chunks(count: int) -> Iterator[bytes]:
        yield from (b"y" * 1024 for _ in range(count))

    assert client.post("/echo", content=chunks(2)).text == "2048"
    refused = client.post("/echo", content=chunks(3))
    assert refused.status_code == 413
    assert refused.headers["strict-transport-security"].startswith("max-age=")
    assert received == [2048], "the route must never see the oversized body"


def test_metrics_count_requests_by_route_template(app: tuple[TestClient, Services]) -> None:
    client, services = app
    auditor = bearer(services, Role.AUDITOR)
    client.get("/api/v1/audit", headers=auditor)
    client.get("/api/v1/audit", params={"limit": 5}, headers=auditor)
    key = MachineKeyStore(services.engine).create(name="prom", role=Role.METRICS, created_by="test").key
    text = client.get("/metrics", headers={"Authorization": f"Bearer {key}"}).text
    assert 'refsys_http_requests_total{method="GET",route="/api/v1/audit",status="200"} 2.0' in text
    assert (
        'refsys_http_request_duration_seconds_bucket{le="0.001",method="GET",route="/api/v1/audit",status="200"}'
        in text
    )
    assert "refsys_build_info{" in text
    assert "refsys_audit_head_sequence 0.0" in text


def test_access_log_is_one_json_line_without_the_token(
    app: tuple[TestClient, Services], caplog: pytest.LogCaptureFixture
) -> None:
    client, services = app
    headers = bearer(services, Role.AUDITOR, subject="ana")
    token = headers["Authorization"].split()[1]
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        client.get("/api/v1/audit", params={"access_token": token}, headers=headers)
    (record,) = [record for record in caplog.records if record.name == ACCESS_LOGGER]
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert entry["route"] == "/api/v1/audit" and entry["status"] == 200 and entry["sub"] == "ana"
    assert entry["jti"] and entry["request_id"] and entry["latency_ms"] >= 0
    assert token not in line and "access_token" not in line


def test_audit_verify_over_http_names_the_first_broken_record(app: tuple[TestClient, Services]) -> None:
    client, services = app
    for number in range(3):
        services.audit.append(
            actor=Actor(subject="ops"), action="run.submit", outcome="success", target=str(number)
        )
    auditor = bearer(services, Role.AUDITOR)
    assert client.get("/api/v1/audit/verify", headers=auditor).json()["ok"] is True
    with services.engine.begin() as connection:
        connection.execute(sa.text("UPDATE audit_records SET outcome = 'failure' WHERE seq = 2"))
    report = client.get("/api/v1/audit/verify", headers=auditor).json()
    assert report["ok"] is False
    assert report["first_broken"]["seq"] == 2 and "edited" in report["first_broken"]["reason"]


def test_separate_metrics_port_serves_without_credentials(tmp_path: Path) -> None:
    port = free_port()
    with running_app(make_settings(tmp_path, metrics={"port": port})) as (client, _services):
        client.get("/healthz")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'refsys_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
