"""The products API over HTTP, on SQLite and on real PostgreSQL: search and paging, downloads with ranges,
checksum headers and ETag, per-user daily quotas (429 + Retry-After + audit), audit of every download with its
volume, and products whose bytes are never sent (quarantined, held, evicted)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import pytest
from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.core.audit.trail import AuditFilter
from control_plane.core.auth.roles import Role
from control_plane.core.services import Services, open_services
from pipelines.api import products as products_api
from pipelines.catalog import Catalog, OutputContext, PublishedProduct
from pipelines.catalog.scanner import ScannerError, Verdict
from pipelines.spec import OutputSpec
from pipelines.tables import products
from tests.apps import bearer, make_settings, prepare_database

QUOTA = 8_000_000
RUN = OutputContext(run_id="run-1", chain_id="s2-l2a", chain_version="1.0", mission="S2")
L2A = OutputSpec(product_type="S2MSI2A", step="process", pattern="*.zip", timeliness="NRT")


class ByName:
    """A scanner double: infected when the file name said so is in the bytes; fails while ``down``."""

    down = False

    def scan(self, stream: BinaryIO) -> Verdict:
        if self.down:
            raise ScannerError("clamd unreachable (test)")
        return Verdict(True, "Test.Marker") if b"INFECTED" in stream.read() else Verdict(False)

    def version(self) -> str:
        return "test"


@dataclass
class Site:
    client: TestClient
    services: Services
    catalog: Catalog
    scanner: ByName
    outputs: Path

    def publish(self, name: str, content: bytes, *, run: OutputContext = RUN) -> PublishedProduct:
        directory = self.outputs / run.run_id / name
        directory.mkdir(parents=True)
        (directory / name).write_bytes(content)
        [product] = self.catalog.publish_outputs(run=run, step="process", output_dir=directory, outputs=[L2A])
        return product

    def headers(self, *roles: Role, subject: str = "alice") -> dict[str, str]:
        return bearer(self.services, *roles, subject=subject)

    def audit(self, action: str) -> list[dict[str, Any]]:
        return self.services.audit.list(AuditFilter(action=action), newest_first=False)


@pytest.fixture
def site(tmp_path: Path, db_url: str) -> Iterator[Site]:
    settings = make_settings(
        tmp_path / "var",
        db_url,
        production={"cron": False, "catalog": {"download_quota_bytes_per_day": QUOTA}},
    )
    prepare_database(settings)
    services = open_services(settings)
    scanner = ByName()
    catalog = Catalog(settings, services.engine, services.bus, services.audit, scanner=scanner)
    app = create_app(settings, services)
    if not hasattr(app.state, "production"):
        app.state.production = SimpleNamespace(catalog=catalog)
    else:  # the composed app: use its catalog's database with this test's scanner double
        app.state.production.catalog = catalog
    if not any(getattr(route, "path", "") == "/api/v1/products" for route in app.routes):
        app.include_router(products_api.router)
    with TestClient(app) as client:
        yield Site(client, services, catalog, scanner, tmp_path / "outputs")


def test_a_download_streams_the_file_with_checksums_and_is_audited(site: Site) -> None:
    content = bytes(range(256)) * 20_000  # 5 MB: many chunks
    product = site.publish("S2A_MSIL2A.zip", content)
    digest = hashlib.sha256(content).digest()

    response = site.client.get(f"/api/v1/products/{product.id}/download", headers=site.headers(Role.OPERATOR))

    assert response.status_code == 200
    assert response.content == content
    assert response.headers["content-length"] == str(len(content))
    assert response.headers["etag"] == f'"{digest.hex()}"'
    assert response.headers["x-checksum-sha256"] == digest.hex()
    assert response.headers["repr-digest"] == f"sha-256=:{base64.b64encode(digest).decode()}:"
    assert response.headers["digest"] == f"sha-256={base64.b64encode(digest).decode()}"
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-disposition"] == 'attachment; filename="S2A_MSIL2A.zip"'
    [record] = site.audit("product.download")
    assert (record["actor"], record["client"], record["outcome"], record["target"]) == (
        "alice", "testclient", "success", product.id,
    )  # fmt: skip
    details = record["details"]
    assert (details["bytes"], details["product_type"], details["complete"]) == (len(content), "S2MSI2A", True)


@pytest.mark.parametrize(
    "header, status, expected_range, body",
    [
        ("bytes=10-19", 206, "bytes 10-19/100", slice(10, 20)),
        ("bytes=90-", 206, "bytes 90-99/100", slice(90, 100)),
        ("bytes=-5", 206, "bytes 95-99/100", slice(95, 100)),
        ("bytes=95-500", 206, "bytes 95-99/100", slice(95, 100)),  # the end is clamped to the file
        ("bytes=0-0", 206, "bytes 0-0/100", slice(0, 1)),
        ("bytes=0-1,5-6", 200, None, slice(0, 100)),  # several ranges: ignored, the whole file
        ("items=0-5", 200, None, slice(0, 100)),  # another unit: ignored
        ("bytes=9-3", 200, None, slice(0, 100)),  # an invalid range-spec: ignored
    ],
)
def test_single_ranges(site: Site, header: str, status: int, expected_range: str | None, body: slice) -> None:
    content = bytes(range(100))
    product = site.publish("ranged.zip", content)

    response = site.client.get(
        f"/api/v1/products/{product.id}/download", headers=site.headers(Role.OPERATOR) | {"Range": header}
    )

    assert response.status_code == status
    assert response.content == content[body]
    assert response.headers.get("content-range") == expected_range
    assert response.headers["x-checksum-sha256"] == hashlib.sha256(content).hexdigest()  # of the whole file
    assert site.audit("product.download")[0]["details"]["bytes"] == len(content[body])


def test_unsatisfiable_ranges_send_nothing(site: Site) -> None:
    product = site.publish("small.zip", b"0123456789")
    for header in ("bytes=10-", "bytes=50-60", "bytes=-0"):
        response = site.client.get(
            f"/api/v1/products/{product.id}/download", headers=site.headers(Role.OPERATOR) | {"Range": header}
        )
        assert response.status_code == 416, header
        assert response.headers["content-range"] == "bytes */10"
        assert response.headers["content-type"] == "application/problem+json"
    assert site.audit("product.download") == []


def test_etag_conditions(site: Site) -> None:
    product = site.publish("etag.zip", b"abcdefghij")
    url = f"/api/v1/products/{product.id}/download"
    etag = f'"{product.sha256}"'
    auth = site.headers(Role.OPERATOR)

    not_modified = site.client.get(url, headers=auth | {"If-None-Match": etag})
    stale_range = site.client.get(url, headers=auth | {"Range": "bytes=0-1", "If-Range": '"other"'})
    fresh_range = site.client.get(url, headers=auth | {"Range": "bytes=0-1", "If-Range": etag})

    assert (not_modified.status_code, not_modified.content) == (304, b"")
    assert (stale_range.status_code, stale_range.content) == (200, b"abcdefghij")
    assert (fresh_range.status_code, fresh_range.content) == (206, b"ab")


def test_the_daily_quota_refuses_with_429_until_utc_midnight_and_audits(site: Site) -> None:
    big = site.publish("big.zip", b"x" * 6_000_000)
    url = f"/api/v1/products/{big.id}/download"
    auth = site.headers(Role.OPERATOR, subject="bob")

    assert site.client.get(url, headers=auth).status_code == 200
    before = datetime.now(UTC)
    refused = site.client.get(url, headers=auth)
    after = datetime.now(UTC)
    partial = site.client.get(url, headers=auth | {"Range": f"bytes=0-{QUOTA - 6_000_000 - 1}"})
    one_more = site.client.get(url, headers=auth | {"Range": "bytes=0-0"})
    someone_else = site.client.get(url, headers=site.headers(Role.OPS_MANAGER, subject="carol"))

    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert "6000000 of 8000000 bytes" in refused.json()["detail"]
    midnight = datetime.combine(after.date() + timedelta(days=1), datetime.min.time(), UTC)
    assert (midnight - after).total_seconds() <= int(refused.headers["retry-after"])
    assert int(refused.headers["retry-after"]) <= (midnight - before).total_seconds() + 1
    assert (partial.status_code, len(partial.content)) == (206, 2_000_000)
    assert one_more.status_code == 429
    assert someone_else.status_code == 200
    records = site.audit("product.download")
    assert [(r["actor"], r["outcome"], r["details"]["bytes"]) for r in records] == [
        ("bob", "success", 6_000_000),
        ("bob", "refused", 0),
        ("bob", "success", 2_000_000),
        ("bob", "refused", 0),
        ("carol", "success", 6_000_000),
    ]
    assert records[1]["details"]["bytes_requested"] == 6_000_000
    assert records[1]["details"]["reason"] == "quota"


def test_quarantined_held_evicted_and_unknown_products_send_no_bytes(site: Site) -> None:
    infected = site.publish("infected.zip", b"...INFECTED...")
    site.scanner.down = True
    held = site.publish("held.zip", b"fine")
    site.scanner.down = False
    evicted = site.publish("evicted.zip", b"old")
    with site.services.engine.begin() as connection:
        connection.execute(
            products.update()
            .where(products.c.id == evicted.id)
            .values(published_at=datetime(2020, 1, 1, tzinfo=UTC))
        )
    site.catalog.retention.days = {"S2MSI2A": 1}
    assert site.catalog.evict_expired(datetime.now(UTC)) == 1
    auth = site.headers(Role.OPERATOR)

    answers = {
        name: site.client.get(f"/api/v1/products/{product_id}/download", headers=auth)
        for name, product_id in (
            ("infected", infected.id), ("held", held.id), ("evicted", evicted.id), ("unknown", "nope"),
        )
    }  # fmt: skip

    assert {name: answer.status_code for name, answer in answers.items()} == {
        "infected": 409, "held": 409, "evicted": 404, "unknown": 404,
    }  # fmt: skip
    assert "quarantined" in answers["infected"].json()["detail"]
    assert "held until it is scanned" in answers["held"].json()["detail"]
    assert "evicted" in answers["evicted"].json()["detail"]
    for answer in answers.values():
        assert answer.headers["content-type"] == "application/problem+json"
        assert b"INFECTED" not in answer.content
    refusals = site.audit("product.download")
    assert [(r["target"], r["outcome"], r["details"]["state"]) for r in refusals] == [
        (infected.id, "refused", "quarantined"), (held.id, "refused", "unscanned"), (evicted.id, "refused", "evicted"),
    ]  # fmt: skip


def test_search_filters_pages_and_never_lists_quarantined_products_as_downloadable(site: Site) -> None:
    names = [f"S2_{number}.zip" for number in range(5)]
    published = [site.publish(name, name.encode()) for name in names]
    infected = site.publish("bad.zip", b"INFECTED")
    auth = site.headers(Role.OPS_MANAGER)

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"type": "S2MSI2A", "mission": "S2", "limit": 2} | (
            {"cursor": cursor} if cursor else {}
        )
        page = site.client.get("/api/v1/products", params=params, headers=auth).json()
        seen += [item["id"] for item in page["items"]]
        assert all(item["downloadable"] and item["state"] == "published" for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(product.id for product in published)

    everything = site.client.get("/api/v1/products", params={"state": "any"}, headers=auth).json()["items"]
    [bad] = [item for item in everything if item["id"] == infected.id]
    assert (bad["state"], bad["downloadable"], bad["reason"]) == (
        "quarantined",
        False,
        "malware: Test.Marker",
    )
    assert site.client.get("/api/v1/products", params={"mission": "S1"}, headers=auth).json()["items"] == []

    one = site.client.get(f"/api/v1/products/{published[0].id}", headers=auth).json()
    assert one["lineage"] == {
        "run_id": "run-1",
        "step": "process",
        "chain_id": "s2-l2a",
        "chain_version": "1.0",
        "inputs": [],
    }
    assert one["sha256"] == published[0].sha256 and "uri" not in one

    for params in ({"state": "lost"}, {"cursor": "garbage"}, {"sensing_from": "2026-11-25T00:00:00"}):
        bad_request = site.client.get("/api/v1/products", params=params, headers=auth)
        assert bad_request.status_code == 400, params
        assert bad_request.headers["content-type"] == "application/problem+json"


def test_sensing_time_window(site: Site, tmp_path: Path) -> None:
    directory = tmp_path / "sensed"
    directory.mkdir()
    for day in (20, 22, 24):
        (directory / f"S2_{day}.zip").write_bytes(str(day).encode())
    (directory / "manifest.json").write_text(
        '{"products": ['
        + ",".join(
            f'{{"file": "S2_{d}.zip", "sensing_start": "2026-11-{d}T10:00:00Z"}}' for d in (20, 22, 24)
        )
        + "]}"
    )
    site.catalog.publish_outputs(run=RUN, step="process", output_dir=directory, outputs=[L2A])

    items = site.client.get(
        "/api/v1/products",
        params={"sensing_from": "2026-11-21T00:00:00Z", "sensing_to": "2026-11-24T10:00:00Z"},
        headers=site.headers(Role.OPERATOR),
    ).json()["items"]

    assert [item["name"] for item in items] == ["S2_22.zip"]


def test_roles(site: Site) -> None:
    product = site.publish("roles.zip", b"r")
    for path in (
        "/api/v1/products",
        f"/api/v1/products/{product.id}",
        f"/api/v1/products/{product.id}/download",
    ):
        assert site.client.get(path).status_code == 401
        assert site.client.get(path, headers=site.headers(Role.INGEST)).status_code == 403
        assert site.client.get(path, headers=site.headers(Role.SECURITY_OFFICER)).status_code == 403
        assert site.client.get(path, headers=site.headers(Role.OPS_MANAGER)).status_code == 200


def test_an_operator_releases_held_products_by_a_rescan(site: Site) -> None:
    site.scanner.down = True
    held = site.publish("held.zip", b"fine")
    infected = site.publish("late.zip", b"INFECTED")
    url = "/api/v1/products/rescan"

    still_down = site.client.post(url, headers=site.headers(Role.OPERATOR))
    site.scanner.down = False
    refused = site.client.post(url, headers=site.headers(Role.OPS_MANAGER))
    released = site.client.post(url, headers=site.headers(Role.OPERATOR))

    assert [item["state"] for item in still_down.json()["items"]] == ["unscanned", "unscanned"]
    assert refused.status_code == 403
    assert {item["id"]: item["state"] for item in released.json()["items"]} == {
        held.id: "published", infected.id: "quarantined",
    }  # fmt: skip
    download = site.client.get(f"/api/v1/products/{held.id}/download", headers=site.headers(Role.OPERATOR))
    assert download.content == b"fine"
    assert [(r["outcome"], r["details"]) for r in site.audit("product.rescan")] == [
        ("failure", {"products": 2, "unscanned": 2}),
        ("success", {"products": 2, "published": 1, "quarantined": 1}),
    ]
    assert site.audit("product.publish")[0]["actor"] == "alice"

    site.catalog.scanner = None
    assert site.client.post(url, headers=site.headers(Role.OPERATOR)).status_code == 409
