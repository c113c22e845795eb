"""The catalog on an embedded database: registration with checksums and lineage, idempotence (a crash between
copy and row insert included), quarantine and held products, external products, search, retention, quotas."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import sqlalchemy as sa

from control_plane.core.audit.trail import Actor, AuditFilter
from control_plane.core.bus import Bus, topics
from control_plane.core.services import Services, open_services
from pipelines.catalog import Catalog, CatalogError, OutputContext, OutputError, ProductUnavailable
from pipelines.catalog.quotas import DownloadQuota, seconds_to_midnight
from pipelines.catalog.scanner import ClamdScanner, ScannerError, Verdict
from pipelines.catalog.search import CursorError, ProductFilter
from pipelines.spec import OutputSpec
from pipelines.tables import products
from tests.apps import make_settings, prepare_database

MARKER = b"EVIL-TEST-MARKER"
RUN = OutputContext(
    run_id="0193a6d0-0000-7000-8000-000000000001",
    chain_id="s2-l2a",
    chain_version="1.0",
    mission="S2",
    baseline="05.10",
    inputs=["input-1"],
    t0=datetime(2026, 11, 25, 9, 0, tzinfo=UTC),
)
L2A = OutputSpec(product_type="S2MSI2A", step="process", pattern="*.SAFE.zip", timeliness="NRT")
OPERATOR = Actor(subject="alice", client="10.1.2.3")


class MarkerScanner:
    """A scanner double: infected when the bytes hold MARKER; ``down`` makes it fail like an absent clamd."""

    def __init__(self) -> None:
        self.down = False
        self.scanned = 0

    def scan(self, stream: BinaryIO) -> Verdict:
        if self.down:
            raise ScannerError("clamd unreachable (test)")
        self.scanned += 1
        return Verdict(infected=True, signature="Test.Marker") if MARKER in stream.read() else Verdict(False)

    def version(self) -> str:
        return "ClamAV test"


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    settings = make_settings(
        tmp_path / "var",
        production={"catalog": {"retention_days": {"S2MSI2A": 30}, "download_quota_bytes_per_day": 100}},
    )
    prepare_database(settings)
    opened = open_services(settings)
    yield opened
    opened.close()


@pytest.fixture
def scanner() -> MarkerScanner:
    return MarkerScanner()


@pytest.fixture
def catalog(services: Services, scanner: MarkerScanner) -> Catalog:
    return Catalog(services.settings, services.engine, services.bus, services.audit, scanner=scanner)


def _outputs(directory: Path, files: dict[str, bytes], manifest: dict[str, Any] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_bytes(content)
    if manifest is not None:
        (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def _records(bus: Bus, topic: str) -> list[tuple[str | None, dict[str, Any]]]:
    with bus.consumer(topic, f"test-{topic}") as consumer:
        return [(record.key, record.value) for record in consumer.poll(max_records=1000, timeout_s=0.2)]


def _stored_files(catalog: Catalog) -> list[str]:
    root = catalog.storage.local_path("x").parent
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())


def _audit(services: Services, action: str) -> list[dict[str, Any]]:
    return services.audit.list(AuditFilter(action=action), newest_first=False)


def test_outputs_are_registered_with_checksum_lineage_and_sensing_times(
    catalog: Catalog, services: Services, tmp_path: Path
) -> None:
    content = b"L2A product bytes " * 1000
    out = _outputs(
        tmp_path / "out",
        {"S2A_MSIL2A_20261125T090000.SAFE.zip": content, "ignored.txt": b"not an output"},
        {"products": [{"file": "S2A_MSIL2A_20261125T090000.SAFE.zip",
                       "sensing_start": "2026-11-25T09:00:00Z", "sensing_stop": "2026-11-25T09:00:05+00:00"}]},
    )  # fmt: skip

    [product] = catalog.publish_outputs(run=RUN, step="process", output_dir=out, outputs=[L2A])

    assert (product.name, product.product_type, product.state, product.timeliness) == (
        "S2A_MSIL2A_20261125T090000.SAFE.zip", "S2MSI2A", "published", "NRT",
    )  # fmt: skip
    assert (product.size, product.sha256) == (len(content), hashlib.sha256(content).hexdigest())
    assert product.t0 == RUN.t0 and product.published_at is not None
    row = catalog.get(product.id)
    assert row["sensing_start"] == datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    assert row["sensing_stop"] == datetime(2026, 11, 25, 9, 0, 5, tzinfo=UTC)
    assert (row["run_id"], row["step"], row["chain_id"], row["chain_version"], row["inputs"]) == (
        RUN.run_id, "process", "s2-l2a", "1.0", ["input-1"],
    )  # fmt: skip
    assert (row["baseline"], row["reprocessing"]) == ("05.10", False)
    assert catalog.path_of(product.id).read_bytes() == content
    assert _stored_files(catalog) == [f"products/{product.id}/{product.name}"]

    [(key, event)] = _records(services.bus, topics.PRODUCT_AVAILABLE)
    assert key == "S2MSI2A"
    assert event == {
        "product_id": product.id, "name": product.name, "product_type": "S2MSI2A", "mission": "S2",
        "t0": "2026-11-25T09:00:00.000000Z", "sensing_start": "2026-11-25T09:00:00.000000Z",
        "sensing_stop": "2026-11-25T09:00:05.000000Z", "baseline": "05.10", "reprocessing": False,
        "run_id": RUN.run_id, "published_at": event["published_at"],
    }  # fmt: skip
    [record] = _audit(services, "product.publish")
    assert record["target"] == product.id
    assert record["details"]["product_type"] == "S2MSI2A" and record["details"]["sha256"] == product.sha256


def test_the_same_output_registered_twice_is_one_product_announced_again(
    catalog: Catalog, services: Services, tmp_path: Path
) -> None:
    out = _outputs(tmp_path / "out", {"a.SAFE.zip": b"a"})
    first = catalog.publish_outputs(run=RUN, step="process", output_dir=out, outputs=[L2A])
    again = catalog.publish_outputs(run=RUN, step="process", output_dir=out, outputs=[L2A])

    assert [p.id for p in first] == [p.id for p in again]
    with services.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(products)).scalar() == 1
    # At-least-once: the second registration may follow a crash that came before the first announcement.
    assert len(_records(services.bus, topics.PRODUCT_AVAILABLE)) == 2
    other_run = OutputContext(run_id="another-run", chain_id="s2-l2a", chain_version="1.0", mission="S2")
    [other] = catalog.publish_outputs(run=other_run, step="process", output_dir=out, outputs=[L2A])
    assert other.id != first[0].id


def test_a_crash_between_copy_and_row_insert_leaves_one_product_and_no_orphan(
    catalog: Catalog, services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _outputs(tmp_path / "out", {"a.SAFE.zip": b"first bytes"})
    real_move = catalog.storage.move

    def move_then_die(key: str, new_key: str) -> None:
        real_move(key, new_key)
        raise SystemExit("control plane killed after the copy")

    monkeypatch.setattr(catalog.storage, "move", move_then_die)
    with pytest.raises(SystemExit):
        catalog.publish_outputs(run=RUN, step="process", output_dir=out, outputs=[L2A])
    with services.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(products)).scalar() == 0

    monkeypatch.setattr(catalog.storage, "move", real_move)
    [product] = catalog.publish_outputs(run=RUN, step="process", output_dir=out, outputs=[L2A])

    assert product.state == "published"
    assert _stored_files(catalog) == [f"products/{product.id}/a.SAFE.zip"]
    assert len(_records(services.bus, topics.PRODUCT_AVAILABLE)) == 1


def test_an_infected_output_is_quarantined_with_a_security_event_and_never_announced(
    catalog: Catalog, services: Services, tmp_path: Path
) -> None:
    out = _outputs(tmp_path / "out", {"bad.SAFE.zip": b"xx" + MARKER + b"yy", "good.SAFE.zip": b"clean"})

    bad, good = catalog.publish_outputs(run=RUN, step="process", output_dir=out, outputs=[L2A])

    assert (bad.state, good.state) == ("quarantined", "published")
    assert bad.published_at is None
    assert f"quarantine/{bad.id}/bad.SAFE.zip" in _stored_files(catalog)
    assert catalog.get(bad.id)["reason"] == "malware: Test.Marker"
    with pytest.raises(ProductUnavailable, match="quarantined"):
        catalog.path_of(bad.id)
    assert [event["product_id"] for _key, event in _records(services.bus, topics.PRODUCT_AVAILABLE)] == [
        good.id
    ]
    assert [row["id"] for row in catalog.search(ProductFilter()).rows] == [good.id]

    [(key, alert)] = _records(services.bus, topics.TELEMETRY)
    assert key == "refsys:scanner"
    assert alert["event"]["kind"] == "alert" and alert["event"]["category"] == ["malware"]
    assert alert["event"]["dataset"] == "refsys.scanner"
    assert alert["file"] == {"name": "bad.SAFE.zip", "size": bad.size, "hash": {"sha256": bad.sha256}}
    assert alert["rule"]["name"] == "Test.Marker"
    assert alert["labels"]["run_id"] == RUN.run_id and alert["refsys"]["product"]["id"] == bad.id
    [record] = _audit(services, "product.quarantine")
    assert record["target"] == bad.id and record["details"]["signature"] == "Test.Marker"


def test_an_unreachable_scanner_holds_products_until_a_rescan(services: Services, tmp_path: Path) -> None:
    absent = ClamdScanner(tmp_path / "no-clamd.sock", timeout_s=2)
    catalog = Catalog(services.settings, services.engine, services.bus, services.audit, scanner=absent)
    out = _outputs(tmp_path / "out", {"a.SAFE.zip": b"fine"})

    [held] = catalog.publish_outputs(run=RUN, step="process", output_dir=out, outputs=[L2A])

    assert held.state == "unscanned"
    assert "unreachable" in catalog.get(held.id)["reason"]
    assert _stored_files(catalog) == [f"held/{held.id}/a.SAFE.zip"]
    assert _records(services.bus, topics.PRODUCT_AVAILABLE) == []
    [record] = _audit(services, "product.hold")
    assert record["outcome"] == "failure"

    catalog.scanner = MarkerScanner()
    [released] = catalog.rescan_held(actor=OPERATOR)

    assert (released.id, released.state) == (held.id, "published")
    assert catalog.path_of(held.id).read_bytes() == b"fine"
    assert [event["product_id"] for _k, event in _records(services.bus, topics.PRODUCT_AVAILABLE)] == [
        held.id
    ]
    assert _audit(services, "product.publish")[0]["actor"] == "alice"


def test_bad_outputs_are_refused_naming_the_item(catalog: Catalog, tmp_path: Path) -> None:
    out = _outputs(
        tmp_path / "out",
        {"a.SAFE.zip": b"a"},
        {"products": [{"file": "a.SAFE.zip", "sensing_start": "yesterday"}]},
    )
    with pytest.raises(OutputError, match=r"manifest\.json: products\.0\.sensing_start: "):
        catalog.publish_outputs(run=RUN, step="process", output_dir=out, outputs=[L2A])

    (out / "manifest.json").write_text(json.dumps({"products": [
        {"file": "a.SAFE.zip", "sensing_start": "2026-11-25T10:00:00Z", "sensing_stop": "2026-11-25T09:00:00Z"}]}))  # fmt: skip
    with pytest.raises(OutputError, match=r"products\.0\.sensing_stop: before sensing_start"):
        catalog.publish_outputs(run=RUN, step="process", output_dir=out, outputs=[L2A])

    (out / "manifest.json").unlink()
    secret = tmp_path / "secret"
    secret.write_text("credentials")
    (out / "leak.SAFE.zip").symlink_to(secret)
    with pytest.raises(OutputError, match=r"leak\.SAFE\.zip: output S2MSI2A: resolves outside"):
        catalog.publish_outputs(run=RUN, step="process", output_dir=out, outputs=[L2A])
    assert _stored_files(catalog) == []


def test_outputs_of_other_steps_are_left_alone(catalog: Catalog, tmp_path: Path) -> None:
    out = _outputs(tmp_path / "out", {"a.SAFE.zip": b"a"})
    assert catalog.publish_outputs(run=RUN, step="format", output_dir=out, outputs=[L2A]) == []


def test_an_external_product_is_registered_once_per_name(
    catalog: Catalog, services: Services, tmp_path: Path
) -> None:
    arrival = tmp_path / "S2A_MSIL1C_20261125T090000.SAFE.zip"
    arrival.write_bytes(b"L1C")
    first = catalog.register_external(arrival, product_type="S2MSI1C", mission="S2", actor=OPERATOR)
    again = catalog.register_external(arrival, product_type="S2MSI1C", mission="S2", actor=OPERATOR)

    assert first.id == again.id and first.state == "published" and first.t0 is not None
    row = catalog.get(first.id)
    assert row["run_id"] is None and row["inputs"] == []
    assert _audit(services, "product.publish")[0]["actor"] == "alice"
    with pytest.raises(OutputError, match="not a file"):
        catalog.register_external(tmp_path / "absent", product_type="S2MSI1C", mission="S2", actor=OPERATOR)


def test_search_filters_and_pages_with_a_cursor(catalog: Catalog, tmp_path: Path) -> None:
    names = [f"p{number}.SAFE.zip" for number in range(5)]
    out = _outputs(
        tmp_path / "out",
        {name: name.encode() for name in names},
        {
            "products": [
                {"file": name, "sensing_start": f"2026-11-2{number}T00:00:00Z"}
                for number, name in enumerate(names)
            ]
        },
    )
    catalog.publish_outputs(run=RUN, step="process", output_dir=out, outputs=[L2A])

    seen, cursor = [], None
    while True:
        page = catalog.search(ProductFilter(product_type="S2MSI2A"), cursor=cursor, limit=2)
        seen += [row["name"] for row in page.rows]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(seen) == names and len(seen) == len(set(seen))

    window = ProductFilter(
        sensing_from=datetime(2026, 11, 21, tzinfo=UTC), sensing_to=datetime(2026, 11, 23, tzinfo=UTC)
    )
    assert sorted(row["name"] for row in catalog.search(window).rows) == ["p1.SAFE.zip", "p2.SAFE.zip"]
    assert catalog.search(ProductFilter(mission="S1")).rows == []
    assert catalog.search(ProductFilter(state="quarantined")).rows == []
    with pytest.raises(CursorError, match="not a cursor"):
        catalog.search(ProductFilter(), cursor="garbage")


def test_expired_products_are_evicted_and_audited(
    catalog: Catalog, services: Services, tmp_path: Path
) -> None:
    out = _outputs(tmp_path / "out", {"old.SAFE.zip": b"old", "new.SAFE.zip": b"new"})
    old, new = sorted(
        catalog.publish_outputs(run=RUN, step="process", output_dir=out, outputs=[L2A]),
        key=lambda p: p.name != "old.SAFE.zip",
    )
    external = tmp_path / "S1.zip"
    external.write_bytes(b"kept: no retention for its type")
    kept = catalog.register_external(external, product_type="S1_RAW", mission="S1", actor=OPERATOR)
    now = datetime.now(UTC)
    with services.engine.begin() as connection:
        connection.execute(
            products.update()
            .where(products.c.id.in_([old.id, kept.id]))
            .values(published_at=now - timedelta(days=31))
        )

    assert catalog.evict_expired(now) == 1
    assert catalog.evict_expired(now) == 0

    row = catalog.get(old.id)
    assert row["state"] == "evicted" and "30 days" in row["reason"]
    assert not catalog.storage.exists(catalog.key_of(row))
    assert catalog.get(new.id)["state"] == "published" and catalog.get(kept.id)["state"] == "published"
    [record] = _audit(services, "product.evict")
    assert record["target"] == old.id and record["details"]["product_type"] == "S2MSI2A"
    with pytest.raises(ProductUnavailable, match="evicted"):
        catalog.path_of(old.id)


def test_download_quota_counts_before_sending_and_resets_at_utc_midnight(services: Services) -> None:
    quota = DownloadQuota(services.engine, limit_bytes=100)
    noon = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    assert quota.reserve("bob", 60, noon).allowed
    refused = quota.reserve("bob", 41, noon)
    assert (refused.allowed, refused.used_bytes, refused.retry_after_s) == (False, 60, 12 * 3600)
    assert quota.reserve("bob", 40, noon).allowed
    assert quota.reserve("carol", 100, noon).allowed
    assert not quota.reserve("dave", 101, noon).allowed
    assert quota.reserve("bob", 100, noon + timedelta(hours=12)).allowed  # a new UTC day
    assert quota.used("bob", noon) == 100


def test_parallel_downloads_never_exceed_the_quota(services: Services) -> None:
    quota = DownloadQuota(services.engine, limit_bytes=1000)
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    granted: list[bool] = []

    def take() -> None:
        for _ in range(10):
            granted.append(quota.reserve("eve", 30, now).allowed)

    threads = [threading.Thread(target=take) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert granted.count(True) == 1000 // 30
    assert quota.used("eve", now) == 30 * (1000 // 30)


@pytest.mark.parametrize(
    "moment, expected",
    [
        (datetime(2026, 11, 25, 23, 59, 59, 500000, tzinfo=UTC), 1),  # rounds up, never 0
        (datetime(2026, 11, 25, 0, 0, tzinfo=UTC), 86400),  # a whole day at midnight
    ],
)
def test_retry_after_is_the_time_to_utc_midnight(moment: datetime, expected: int) -> None:
    assert seconds_to_midnight(moment) == expected


def test_held_products_are_only_released_by_a_scan(services: Services) -> None:
    unscanning = Catalog(services.settings, services.engine, services.bus, services.audit)
    with pytest.raises(CatalogError, match="no scanner is configured"):
        unscanning.rescan_held(actor=OPERATOR)
