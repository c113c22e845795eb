"""Acceptance: on a fresh copy of the repository, `make run` alone brings refsys up on SQLite, health and
readiness answer, and the demo token file it prints works against the API; a clean stop leaves a verifiable,
checkpointed audit trail."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.apps import free_port

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 600


def _fresh_copy(target: Path) -> None:
    """What a clone would hold: tracked files plus new files not yet ignored (the working tree under test)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.mark.timeout(DEADLINE_S + 60)
def test_make_run_on_a_fresh_copy(tmp_path: Path) -> None:
    if shutil.which("make") is None or not (REPO / ".git").exists():
        pytest.skip("needs make and a git checkout")
    checkout = tmp_path / "refsys"
    checkout.mkdir()
    _fresh_copy(checkout)
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REFSYS_", "VIRTUAL_ENV"))}
    log = (tmp_path / "make-run.log").open("w+")
    process = subprocess.Popen(
        ["make", "run", f"PORT={port}"], cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + DEADLINE_S
        token_file: Path | None = None
        while time.monotonic() < deadline:
            assert process.poll() is None, Path(log.name).read_text()[-3000:]
            found = re.search(r"demo admin token \(12 h\) written to (\S+)", Path(log.name).read_text())
            if found:
                token_file = Path(found.group(1))
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            time.sleep(0.5)
        else:
            pytest.fail("make run did not come up:\n" + Path(log.name).read_text()[-3000:])
        assert token_file == checkout / "var" / "demo-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert httpx.get(f"{base}/readyz").status_code == 200
        token = token_file.read_text().strip()
        assert token not in Path(log.name).read_text(), "the token itself must never be printed"
        response = httpx.get(f"{base}/api/v1/audit", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        assert any(item["action"] == "token.issue" for item in response.json()["items"])
        assert (checkout / "var" / "refsys.db").exists(), "the embedded default is SQLite under ./var"
        # --demo feeds live sensor traffic through the real intake.
        deadline = time.monotonic() + 60
        observers: set[str] = set()
        while time.monotonic() < deadline and len(observers) < 3:
            sources = httpx.get(f"{base}/api/v1/ingest/sources", headers={"Authorization": f"Bearer {token}"})
            observers = {
                item["observer"] for item in sources.json()["items"] if item["observer"].startswith("demo:")
            }
            time.sleep(0.5)
        assert len(observers) >= 3, f"demo traffic did not arrive: {observers}"
        # --demo runs the bundled chains on their cron triggers (each fired once at start): products appear.
        deadline = time.monotonic() + 90
        published: list[dict[str, object]] = []
        while time.monotonic() < deadline and not published:
            answer = httpx.get(f"{base}/api/v1/products", headers={"Authorization": f"Bearer {token}"})
            published = answer.json()["items"]
            time.sleep(1)
        assert published, "the demo's production published nothing"
        runs = httpx.get(f"{base}/api/v1/runs", headers={"Authorization": f"Bearer {token}"}).json()["items"]
        assert {run["trigger"] for run in runs} >= {"cron"}
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
    verify = subprocess.run(
        [str(checkout / ".venv" / "bin" / "refsys"), "audit", "verify"], cwd=checkout, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    report = json.loads(verify.stdout)
    assert report["ok"] and report["checkpoint_seq"] == report["head_seq"] >= 1
