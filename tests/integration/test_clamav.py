"""Acceptance 5 against a real clamd (Debian's clamav-daemon) with a signature database this test writes itself
(the public database cannot be downloaded here): an infected output is quarantined and raises a security
event, a clean one is published and announced; with clamd down, products are held until a rescan."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from control_plane.core.audit.trail import Actor, AuditFilter
from control_plane.core.bus import topics
from control_plane.core.services import Services, open_services
from pipelines import tables
from pipelines.catalog import Catalog, OutputContext
from pipelines.catalog.scanner import ClamdScanner, ScannerError
from pipelines.engine import RunRequest
from pipelines.spec import OutputSpec
from tests.apps import make_settings, prepare_database
from tests.integration.production_harness import Harness, chain_yaml, step
from tests.services import unavailable

MARKER = b"REFSYS-TEST-MALWARE-MARKER-7f3a9c"
# The EICAR anti-virus test file, assembled here so this source file is not itself a detection.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
STARTUP_DEADLINE_S = 120.0
RUN = OutputContext(run_id="run-clamav", chain_id="s2-l2a", chain_version="1.0", mission="S2")
OUTPUT = OutputSpec(product_type="S2MSI2A", step="process", pattern="*.zip", timeliness="NRT")


def _clamd_binary() -> str | None:
    return shutil.which("clamd") or next((p for p in ("/usr/sbin/clamd",) if Path(p).is_file()), None)


@dataclass
class Clamd:
    binary: str
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.directory / "clamd.sock"

    def write_config(self) -> Path:
        database = self.directory / "db"
        database.mkdir()
        # A body signature (.ndb: name, any file type, any offset, hex bytes) for the test's own marker, and a
        # hash signature (.hdb: MD5, size, name) for EICAR.
        (database / "refsys-test.ndb").write_text(f"Refsys.Test.Marker:0:*:{MARKER.hex()}\n")
        (database / "refsys-test.hdb").write_text(
            f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:Refsys.Test.EICAR\n"
        )
        config = self.directory / "clamd.conf"
        config.write_text(
            f"LocalSocket {self.socket}\nDatabaseDirectory {database}\nTemporaryDirectory {self.directory}\n"
            "Foreground yes\nLogTime yes\n"
            # Small limits, reported rather than silently skipped, so the test can cross them.
            "AlertExceedsMax yes\nMaxFileSize 1M\nMaxScanSize 1M\nStreamMaxLength 4M\n"
        )
        return config

    def start(self, config: Path) -> None:
        log = (self.directory / "clamd.log").open("ab")
        self.process = subprocess.Popen([self.binary, "-c", str(config)], stdout=log, stderr=log)
        scanner = ClamdScanner(self.socket, timeout_s=5)
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while True:
            try:
                scanner.ping()
                return
            except ScannerError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(
                        f"clamd did not come up:\n{(self.directory / 'clamd.log').read_text()[-2000:]}"
                    )
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.socket.unlink(missing_ok=True)


@pytest.fixture
def clamd() -> Iterator[Clamd]:
    binary = _clamd_binary()
    if binary is None:
        unavailable("clamd is not installed (Debian package clamav-daemon)")
        return
    # A short directory: Unix socket paths are limited to 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="clamd-"))
    daemon = Clamd(binary, directory)
    daemon.start(daemon.write_config())
    yield daemon
    daemon.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def services(tmp_path: Path, clamd: Clamd) -> Iterator[Services]:
    settings = make_settings(tmp_path / "var", production={"scanner": {"clamd_socket": str(clamd.socket)}})
    prepare_database(settings)
    opened = open_services(settings)
    yield opened
    opened.close()


def _records(services: Services, topic: str) -> list[dict[str, Any]]:
    with services.bus.consumer(topic, "test") as consumer:
        return [record.value for record in consumer.poll(max_records=1000, timeout_s=0.2)]


def _outputs(directory: Path, files: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True)
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return directory


def test_clamd_quarantines_infected_outputs_and_publishes_clean_ones(
    services: Services, tmp_path: Path
) -> None:
    catalog = Catalog(services.settings, services.engine, services.bus, services.audit)
    out = _outputs(
        tmp_path / "out",
        {
            "S2A_infected.zip": b"header " + MARKER + b" trailer",
            "S2A_eicar.zip": EICAR,
            "S2A_clean.zip": b"an honest L2A product " * 1000,
        },
    )

    result = {
        p.name: p for p in catalog.publish_outputs(run=RUN, step="process", output_dir=out, outputs=[OUTPUT])
    }

    assert {name: p.state for name, p in result.items()} == {
        "S2A_clean.zip": "published", "S2A_eicar.zip": "quarantined", "S2A_infected.zip": "quarantined",
    }  # fmt: skip
    assert catalog.get(result["S2A_infected.zip"].id)["reason"] == "malware: Refsys.Test.Marker.UNOFFICIAL"
    assert catalog.get(result["S2A_eicar.zip"].id)["reason"] == "malware: Refsys.Test.EICAR.UNOFFICIAL"
    infected = result["S2A_infected.zip"]
    assert catalog.storage.exists(f"quarantine/{infected.id}/S2A_infected.zip")

    announced = _records(services, topics.PRODUCT_AVAILABLE)
    assert [event["name"] for event in announced] == ["S2A_clean.zip"]

    alerts = {alert["file"]["name"]: alert for alert in _records(services, topics.TELEMETRY)}
    assert sorted(alerts) == ["S2A_eicar.zip", "S2A_infected.zip"]
    alert = alerts["S2A_infected.zip"]
    assert (alert["event"]["kind"], alert["event"]["category"], alert["event"]["dataset"]) == (
        "alert", ["malware"], "refsys.scanner",
    )  # fmt: skip
    assert alert["file"]["hash"]["sha256"] == hashlib.sha256(b"header " + MARKER + b" trailer").hexdigest()
    assert alert["rule"]["name"] == "Refsys.Test.Marker.UNOFFICIAL"
    assert alert["labels"]["run_id"] == "run-clamav"
    assert alert["observer"]["version"].startswith("ClamAV ")
    quarantines = services.audit.list(AuditFilter(action="product.quarantine"))
    assert sorted(record["target"] for record in quarantines) == sorted(
        [infected.id, result["S2A_eicar.zip"].id]
    )


def test_with_clamd_down_products_are_held_until_an_operator_rescans(
    services: Services, clamd: Clamd, tmp_path: Path
) -> None:
    catalog = Catalog(services.settings, services.engine, services.bus, services.audit)
    clamd.stop()

    [held] = catalog.publish_outputs(
        run=RUN,
        step="process",
        output_dir=_outputs(tmp_path / "out", {"S2A_clean.zip": b"clean"}),
        outputs=[OUTPUT],
    )

    assert held.state == "unscanned"
    assert _records(services, topics.PRODUCT_AVAILABLE) == []
    clamd.start(clamd.directory / "clamd.conf")
    [released] = catalog.rescan_held(actor=Actor(subject="operator-on-call"))
    assert released.state == "published"
    assert [event["product_id"] for event in _records(services, topics.PRODUCT_AVAILABLE)] == [held.id]


def test_a_product_past_clamd_s_limits_is_held_not_published(services: Services, tmp_path: Path) -> None:
    catalog = Catalog(services.settings, services.engine, services.bus, services.audit)
    files = {"S2A_large.zip": b"z" * (2 * 1024 * 1024), "S2A_huge.zip": b"z" * (5 * 1024 * 1024)}

    held = catalog.publish_outputs(
        run=RUN, step="process", output_dir=_outputs(tmp_path / "out", files), outputs=[OUTPUT]
    )

    reasons = {product.name: catalog.get(product.id)["reason"] for product in held}
    assert [product.state for product in held] == ["unscanned", "unscanned"]
    assert "Heuristics.Limits.Exceeded.MaxFileSize" in reasons["S2A_large.zip"]
    assert "INSTREAM size limit exceeded" in reasons["S2A_huge.zip"]
    assert _records(services, topics.PRODUCT_AVAILABLE) == []


def test_a_run_output_released_by_a_rescan_gets_its_published_trace(clamd: Clamd, tmp_path: Path) -> None:
    harness = Harness(tmp_path, None, scanner={"clamd_socket": str(clamd.socket)})
    harness.write_chain(
        "scanned",
        chain_yaml(
            "scanned", steps=[step("make", args=harness.args(output="S2A_product.zip"))],
            outputs=[{"product_type": "T_S", "step": "make", "pattern": "*.zip", "timeliness": "NRT"}],
        ),
    )  # fmt: skip
    with harness.production() as (production, services):
        clamd.stop()
        run_id, _ = production.engine.submit(RunRequest(chain_id="scanned"), Actor(subject="ops"))
        assert production.engine.run_until_idle(120)
        assert _published_traces(services, run_id) == []  # held unscanned: not distributed, not traced
        clamd.start(clamd.directory / "clamd.conf")
        [released] = production.rescan_held(Actor(subject="operator-on-call"))
        assert released.state == "published"
        assert _published_traces(services, run_id) == [("make", "S2A_product.zip")]


def _published_traces(services: Services, run_id: str) -> list[tuple[str, str]]:
    with services.engine.connect() as connection:
        return [
            (row.step, row.body["outputs"][0])
            for row in connection.execute(
                sa.select(tables.trace_events).where(
                    tables.trace_events.c.run_id == run_id, tables.trace_events.c.event == "PUBLISHED"
                )
            )
        ]
