"""Framing, identity and file batches: how bytes become lines, and lines get ids that survive re-cutting."""

from __future__ import annotations

import gzip
from datetime import timedelta
from pathlib import Path

import pytest

from control_plane.core import clock
from security.intake.files import file_batches
from security.intake.framing import FramedLine, FramingError, decompress, frame
from security.intake.identity import FileSlice, RequestKey, derived_event_id, fingerprint, line_basis
from security.intake.stamping import Stamp, stamp
from security.sources.auditd import AuditdAdapter
from security.sources.base import Rejection
from security.sources.k8s_audit import KubernetesAuditAdapter
from security.sources.syslog import SyslogAdapter


def _framed(body: bytes, framing: str = "json") -> list[FramedLine | Rejection]:
    return list(frame(body, framing))  # type: ignore[arg-type]


def test_one_object_one_array_or_ndjson() -> None:
    (single,) = _framed(b'  {"a": 1}\n')
    assert isinstance(single, FramedLine) and single.line.value == {"a": 1} and single.offset == 2
    array = _framed(b'[{"a": 1}, {"a": 2}]')
    assert [item.line.value for item in array if isinstance(item, FramedLine)] == [{"a": 1}, {"a": 2}]
    assert [item.line.number for item in array] == [1, 2]
    ndjson = _framed(b'{"a": 1}\r\n\n{"a": 2}\n')
    assert [(item.line.number, item.offset) for item in ndjson if isinstance(item, FramedLine)] == [
        (1, 0),
        (3, 11),
    ]


def test_a_broken_line_is_rejected_alone() -> None:
    items = _framed(b'{"a": 1}\n{"a": \n{"a": 3}\n')
    assert [type(item).__name__ for item in items] == ["FramedLine", "Rejection", "FramedLine"]
    rejection = items[1]
    assert isinstance(rejection, Rejection)
    assert rejection.line.number == 2 and rejection.reason.startswith("invalid JSON")
    assert rejection.line.raw == b'{"a": '


def test_text_framing_keeps_offsets_and_raw_bytes() -> None:
    items = _framed(b"first\nsecond line\r\n\nthird", "text")
    assert [(item.line.number, item.offset, item.line.raw) for item in items if isinstance(item, FramedLine)] == [
        (1, 0, b"first"), (2, 6, b"second line"), (4, 20, b"third"),
    ]  # fmt: skip


def test_gzip_is_undone_within_a_limit() -> None:
    assert decompress(gzip.compress(b"hello"), "gzip", limit=100) == b"hello"
    with pytest.raises(FramingError, match="expands beyond"):
        decompress(gzip.compress(b"0" * 10_000), "gzip", limit=1000)
    with pytest.raises(FramingError, match="not valid gzip"):
        decompress(b"plain", "gzip", limit=1000)
    with pytest.raises(FramingError, match="unsupported Content-Encoding"):
        decompress(b"x", "br", limit=1000)


def test_file_slice_header_round_trip_and_validation() -> None:
    origin = FileSlice("ab" * 16, 4096)
    assert FileSlice.parse(origin.header()) == origin
    with pytest.raises(ValueError, match="FINGERPRINT@OFFSET"):
        FileSlice.parse("../../etc@1")


def test_ids_depend_on_where_a_line_came_from() -> None:
    fp = "cd" * 16
    assert line_basis(FileSlice(fp, 100), number=3, offset=20) == f"file:{fp}@120"
    assert line_basis(RequestKey("k1"), number=3, offset=20) == "key:k1#3"
    assert line_basis(None, number=3, offset=20) is None
    assert derived_event_id("syslog", "key:k1#3", 0) == derived_event_id("syslog", "key:k1#3", 0)
    assert derived_event_id("syslog", "key:k1#3", 0) != derived_event_id("syslog", "key:k1#3", 1)
    assert derived_event_id("syslog", None, 0) != derived_event_id("syslog", None, 0)


def test_file_batches_give_the_same_ids_however_the_file_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "auth.log"
    lines = [f"Nov 25 10:00:{second:02d} host sshd[1]: Failed password for root from 10.0.0.{second} port 22"
             for second in range(60)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")

    def ids(max_bytes: int) -> set[str]:
        found = set()
        for batch in file_batches(path, SyslogAdapter, max_bytes=max_bytes):
            assert path.read_bytes()[batch.origin.offset : batch.end] == batch.data
            for item in frame(batch.data, "text"):
                assert isinstance(item, FramedLine)
                found.add(line_basis(batch.origin, number=item.line.number, offset=item.offset))
        return found

    small, large = ids(300), ids(1 << 20)
    assert len(small) == len(lines) and small == large
    assert fingerprint(path) == next(iter(file_batches(path, SyslogAdapter))).origin.fingerprint


def test_a_whole_json_document_is_one_batch(tmp_path: Path) -> None:
    path = tmp_path / "event.json"
    path.write_text('{\n  "kind": "Event",\n  "auditID": "x"\n}\n')
    (batch,) = list(file_batches(path, KubernetesAuditAdapter))
    assert batch.origin.offset == 0 and batch.data == path.read_bytes()


def _stamp(**changes: object) -> Stamp:
    values: dict[str, object] = {
        "source": "falco", "dataset": "falco.alerts", "observer": "key:falco-1",
        "ingested": clock.parse_rfc3339("2026-11-25T12:00:00Z"),
        "max_future_skew": timedelta(minutes=5), "max_past_skew": None,
    }  # fmt: skip
    values.update(changes)
    return Stamp(**values)  # type: ignore[arg-type]


def test_the_server_sets_dataset_observer_ingest_time_and_missing_ids() -> None:
    doc = {
        "@timestamp": "2026-11-25T11:59:00Z",
        "observer": {"name": "forged", "vendor": "x"},
        "event": {"id": "own"},
    }
    assert stamp(doc, _stamp(), fallback_id="derived") is False
    assert doc["observer"] == {"name": "key:falco-1", "product": "falco"}
    assert doc["event"] == {
        "id": "own",
        "dataset": "falco.alerts",
        "ingested": "2026-11-25T12:00:00.000000Z",
        "module": "falco",
    }
    assert doc["@timestamp"] == "2026-11-25T11:59:00.000000Z"
    anonymous: dict[str, object] = {"@timestamp": "2026-11-25T11:59:00Z"}
    stamp(anonymous, _stamp(), fallback_id="derived")
    assert anonymous["event"]["id"] == "derived"  # type: ignore[index]


@pytest.mark.parametrize(
    ("claimed", "past_skew", "expected"),
    [
        ("2026-11-25T12:04:00Z", None, "2026-11-25T12:04:00.000000Z"),  # within the future skew
        ("2031-01-01T00:00:00Z", None, "2026-11-25T12:05:00.000000Z"),  # forged future: clamped
        ("2007-01-01T00:00:00Z", None, "2007-01-01T00:00:00.000000Z"),  # backfill kept by default
        (
            "2007-01-01T00:00:00Z",
            timedelta(days=1),
            "2026-11-24T12:00:00.000000Z",
        ),  # past clamp when configured
        ("not a time", None, "2026-11-25T12:00:00.000000Z"),  # unreadable: ingest time
    ],
)
def test_event_time_is_clamped_around_the_ingest_time(
    claimed: str, past_skew: timedelta | None, expected: str
) -> None:
    doc: dict[str, object] = {"@timestamp": claimed}
    clamped = stamp(doc, _stamp(max_past_skew=past_skew), fallback_id="x")
    assert doc["@timestamp"] == expected
    assert clamped == (expected != claimed.replace("Z", ".000000Z"))
    if clamped:
        assert doc["refsys"] == {"claimed_timestamp": claimed}


def test_auditd_batches_never_split_an_event(tmp_path: Path) -> None:
    records = []
    for serial in range(200):
        records += [f"type=SYSCALL msg=audit(1700000000.{serial:03d}:{serial}): syscall=59 success=yes exe=\"/bin/x\"",
                    f"type=EXECVE msg=audit(1700000000.{serial:03d}:{serial}): argc=1 a0=\"x\"",
                    f"type=CWD msg=audit(1700000000.{serial:03d}:{serial}): cwd=\"/\""]  # fmt: skip
        if serial % 2:
            records.append(f"type=EOE msg=audit(1700000000.{serial:03d}:{serial}): ")
    path = tmp_path / "audit.log"
    path.write_text("\n".join(records) + "\n")
    batches = list(file_batches(path, AuditdAdapter, max_bytes=1000))
    assert len(batches) > 10
    events = [doc for batch in batches for doc in _docs(AuditdAdapter(), batch.data)]
    assert len(events) == 200 and all(len(event["auditd"]["records"]) == 3 for event in events)


def _docs(adapter: AuditdAdapter, data: bytes) -> list[dict[str, object]]:
    lines = [item.line for item in frame(data, "text") if isinstance(item, FramedLine)]
    return [outcome.doc for outcome in adapter.parse(lines) if hasattr(outcome, "doc")]
