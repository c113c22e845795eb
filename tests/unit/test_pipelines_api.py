"""``GET /api/v1/pipelines`` and ``/{id}``: the registry's chains with versions, steps, triggers and origins,
behind ``pipelines:read``. The router runs in a small app of its own, with the real services and tokens."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from control_plane.core.auth.roles import Role
from control_plane.core.problems import install_problem_handlers
from control_plane.core.services import Services, open_services
from pipelines.api.pipelines import router
from pipelines.registry import BUNDLED_DIR, ChainRegistry
from tests.apps import bearer, make_settings, prepare_database


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, Services, Path]]:
    for name in [n for n in os.environ if n.startswith("REFSYS_")]:
        monkeypatch.delenv(name)
    chains = tmp_path / "chains"
    chains.mkdir()
    l2a = yaml.safe_load((BUNDLED_DIR / "s2-l2a.yaml").read_text())
    (chains / "s2-l2a-1.1.yaml").write_text(yaml.safe_dump({**l2a, "version": "1.1", "lane": "NRT"}))
    settings = make_settings(tmp_path / "data", production={"chain_dirs": [chains]})
    prepare_database(settings)
    services = open_services(settings)
    app = FastAPI()
    app.state.services = services
    app.state.production = SimpleNamespace(registry=ChainRegistry.load(settings))
    install_problem_handlers(app)
    app.include_router(router)
    with TestClient(app) as client:
        yield client, services, chains
    services.close()


def test_the_list_shows_each_chain_at_its_latest_version_with_every_version(
    api: tuple[TestClient, Services, Path],
) -> None:
    client, services, chains = api
    response = client.get("/api/v1/pipelines", headers=bearer(services, Role.OPERATOR))
    assert response.status_code == 200
    items = {item["id"]: item for item in response.json()["items"]}
    assert list(items) == ["s1", "s2-l1c", "s2-l2a", "s3-nrt"]
    l2a = items["s2-l2a"]
    assert (l2a["version"], l2a["lane"], l2a["origin"]) == ("1.1", "NRT", str(chains / "s2-l2a-1.1.yaml"))
    assert l2a["versions"] == [
        {"version": "1.0", "origin": str(BUNDLED_DIR / "s2-l2a.yaml")},
        {"version": "1.1", "origin": str(chains / "s2-l2a-1.1.yaml")},
    ]
    assert l2a["triggers"] == {"product_types": ["S2MSI1C"], "cron": [], "manual": True}
    assert l2a["outputs"] == ["S2MSI2A"]
    assert items["s1"]["steps"] == [
        {"name": "l0", "processor": {"name": "s1-l0", "version": "1.0"}, "needs": []},
        {"name": "l1", "processor": {"name": "s1-l1", "version": "1.0"}, "needs": ["l0"]},
        {"name": "l2", "processor": {"name": "s1-l2", "version": "1.0"}, "needs": ["l1"]},
    ]


def test_the_detail_gives_the_whole_spec_of_a_version(api: tuple[TestClient, Services, Path]) -> None:
    client, services, _chains = api
    headers = bearer(services, Role.OPS_MANAGER)
    latest = client.get("/api/v1/pipelines/s2-l2a", headers=headers).json()
    assert (latest["version"], latest["lane"]) == ("1.1", "NRT")
    first = client.get("/api/v1/pipelines/s2-l2a", params={"version": "1.0"}, headers=headers).json()
    assert (first["version"], first["lane"], first["origin"]) == (
        "1.0",
        "FAST24",
        str(BUNDLED_DIR / "s2-l2a.yaml"),
    )
    assert (
        first["inputs"][0]["product_type"] == "S2MSI1C" and first["inputs"][0]["wait"]["on_timeout"] == "fail"
    )
    assert first["steps"][0]["resources"] == {"cpu": 1.0, "memory_mib": 1024, "ephemeral_mib": 2048}
    assert first["outputs"][0]["pattern"] == "S2?_MSIL2A_*.SAFE.zip"
    assert [v["version"] for v in first["versions"]] == ["1.0", "1.1"]


@pytest.mark.parametrize(
    ("path", "params", "detail"),
    [
        ("/api/v1/pipelines/s9", {}, "chain 's9' is not in the registry"),
        ("/api/v1/pipelines/s2-l2a", {"version": "7"}, "chain 's2-l2a' version '7' is not in the registry"),
    ],
)
def test_an_unknown_chain_or_version_is_a_404_problem(
    api: tuple[TestClient, Services, Path], path: str, params: dict[str, str], detail: str
) -> None:
    client, services, _chains = api
    response = client.get(path, params=params, headers=bearer(services, Role.OPERATOR))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == detail


def test_reading_chains_needs_the_pipelines_read_permission(api: tuple[TestClient, Services, Path]) -> None:
    client, services, _chains = api
    assert client.get("/api/v1/pipelines").status_code == 401
    assert client.get("/api/v1/pipelines", headers=bearer(services, Role.AUDITOR)).status_code == 403
    assert (
        client.get("/api/v1/pipelines/s1", headers=bearer(services, Role.SECURITY_OFFICER)).status_code == 403
    )
    assert client.get("/api/v1/pipelines/s1", headers=bearer(services, Role.ADMIN)).status_code == 200
