"""The collector's file handling, with a recording client: truncation, the auditd hold, and restarts."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from security.intake.collector import Collector
from security.intake.identity import FileSlice
from security.sources.auditd import AuditdAdapter


class RecordingClient:
    def __init__(self) -> None:
        self.sent: list[tuple[FileSlice, bytes]] = []

    def send(
        self, source: str, data: bytes, origin: FileSlice, *, heartbeat_s: int | None = None
    ) -> dict[str, Any]:
        self.sent.append((origin, data))
        return {"accepted": data.count(b"\n")}


def _run_until(collector: Collector, condition: Any, deadline_s: float = 20) -> None:
    thread = threading.Thread(target=collector.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + deadline_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    collector.stop.set()
    thread.join(timeout=10)
    assert condition(), "condition not reached before the deadline"


def _collector(path: Path, client: RecordingClient, tmp_path: Path, **options: Any) -> Collector:
    return Collector(path, source="auditd", client=client, state_file=tmp_path / "state.json",  # type: ignore[arg-type]
                     flush_interval_s=0.05, poll_interval_s=0.02, stop=threading.Event(), **options)  # fmt: skip


def test_an_open_auditd_event_is_held_back_then_shipped_after_a_bounded_wait(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(
        b"type=SYSCALL msg=audit(1.000:1): a=1\ntype=EOE msg=audit(1.000:1): \n"
        b"type=SYSCALL msg=audit(1.001:2): a=2\n"
    )
    client = RecordingClient()
    collector = _collector(path, client, tmp_path, batch_end=AuditdAdapter.batch_end)
    _run_until(collector, lambda: sum(len(data) for _, data in client.sent) == path.stat().st_size)
    first, second = client.sent
    assert first[1].endswith(b"type=EOE msg=audit(1.000:1): \n")
    assert second[0].offset == len(first[1]) and second[1] == b"type=SYSCALL msg=audit(1.001:2): a=2\n"


def test_restart_resumes_after_the_last_acknowledged_batch(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"one\ntwo\n")
    first_run = RecordingClient()
    _run_until(_collector(path, first_run, tmp_path), lambda: len(first_run.sent) == 1)
    with path.open("ab") as handle:
        handle.write(b"three\n")
    second_run = RecordingClient()
    _run_until(_collector(path, second_run, tmp_path), lambda: len(second_run.sent) == 1)
    ((origin, data),) = second_run.sent
    assert (origin.offset, data) == (8, b"three\n")
    assert origin.fingerprint == first_run.sent[0][0].fingerprint


def test_a_truncated_file_starts_over_with_a_new_identity(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"first line of a long file\n")
    client = RecordingClient()

    def truncate_once() -> bool:
        if len(client.sent) == 1 and path.stat().st_size > 10:
            path.write_bytes(b"new\n")  # copytruncate: same inode, shorter file
        return len(client.sent) == 2

    _run_until(_collector(path, client, tmp_path), truncate_once)
    (old, _), (new, data) = client.sent
    assert (new.offset, data) == (0, b"new\n") and new.fingerprint != old.fingerprint
