"""Generic ECS documents (dotted keys nested, reserved datasets refused), and the control plane's own audit
records and access-log entries as ECS documents in ``refsys.audit`` / ``refsys.access``."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from control_plane.core import schema
from control_plane.core.audit.tables import records
from control_plane.core.audit.trail import Actor, AuditFilter, AuditTrail
from control_plane.core.config import Settings
from control_plane.core.logs import ACCESS_LOGGER, JsonFormatter
from control_plane.core.services import open_audit, open_engine
from security.ecs import get
from security.intake.framing import FramedLine, frame
from security.sources.base import Line, Parsed, Rejected, Rejection
from security.sources.control_plane import (
    ACCESS_DATASET,
    AUDIT_DATASET,
    access_entry_to_ecs,
    audit_record_to_ecs,
)
from security.sources.ecs_source import EcsAdapter, nest
from security.sources.registry import adapter_for


def _normalise(value: Any) -> dict[str, Any]:
    docs = EcsAdapter().normalise(Line(1, json.dumps(value).encode(), value))
    assert len(docs) == 1
    return docs[0]


class TestEcsDocuments:
    def test_dotted_keys_are_nested_and_merged(self) -> None:
        doc = _normalise(
            {
                "@timestamp": "2024-05-02T11:15:07.123+02:00",
                "event.kind": "event",
                "event": {"category": ["process"], "type": ["start"]},
                "process.pid": 4242,
                "process": {"name": "l1-processor", "args": ["--tile", "T31TCJ"]},
                "host.name": "proc-node-1",
                "labels": {"mission.name": "S2"},
            }
        )
        assert doc["@timestamp"] == "2024-05-02T09:15:07.123000Z"
        assert doc["event"]["kind"] == "event"
        assert doc["event"]["category"] == ["process"]
        assert doc["process"] == {"pid": 4242, "name": "l1-processor", "args": ["--tile", "T31TCJ"]}
        assert doc["host"] == {"name": "proc-node-1"}
        assert doc["labels"] == {"mission": {"name": "S2"}}
        assert "process.pid" not in doc

    def test_event_original_is_the_line_and_the_sender_id_is_kept(self) -> None:
        value = {"@timestamp": "2024-05-02T09:15:07Z", "event": {"id": "sender-42", "original": "raw syslog"}}
        line = Line(7, json.dumps(value).encode(), value)
        doc = EcsAdapter().normalise(line)[0]
        assert get(doc, "event.original") == line.text
        assert get(doc, "event.id") == "sender-42"
        assert EcsAdapter().normalise(line) == EcsAdapter().normalise(line)

    def test_epoch_milliseconds(self) -> None:
        assert _normalise({"@timestamp": 1714641307123})["@timestamp"] == "2024-05-02T09:15:07.123000Z"

    def test_what_the_intake_stamps_is_dropped(self) -> None:
        doc = _normalise(
            {
                "@timestamp": "2024-05-02T09:15:07Z",
                "observer": {"name": "forged-sensor", "vendor": "x"},
                "observer.product": "suricata",
                "event.ingested": "2030-01-01T00:00:00Z",
                "event.module": "nginx",
            }
        )
        assert "observer" not in doc
        assert get(doc, "event.ingested") is None
        assert get(doc, "event.module") == "nginx"

    def test_requested_dataset_is_left_for_the_intake(self) -> None:
        doc = _normalise({"@timestamp": "2024-05-02T09:15:07Z", "event.dataset": "nginx.access"})
        assert get(doc, "event.dataset") == "nginx.access"

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            ({"@timestamp": "2024-05-02T09:15:07Z", "event.dataset": "refsys.audit"}, "reserved for the control plane"),
            ({"@timestamp": "2024-05-02T09:15:07Z", "event": {"dataset": "refsys.access"}}, "reserved"),
            ({"@timestamp": "2024-05-02T09:15:07Z", "event.dataset": " Refsys.Audit"}, "reserved"),
            ({"@timestamp": "2024-05-02T09:15:07Z", "event.dataset": "../../etc"}, "not a dataset name"),
            ({"@timestamp": "2024-05-02T09:15:07Z", "event.dataset": 7}, "must be a string"),
            ({"event.kind": "event"}, "without @timestamp"),
            ({"@timestamp": "yesterday"}, "not an RFC 3339 time"),
            ({"@timestamp": 10**20}, "epoch milliseconds"),
            ({"@timestamp": "2024-05-02T09:15:07Z", "user": "x", "user.name": "y"}, "ambiguous"),
            ({"@timestamp": "2024-05-02T09:15:07Z", "source": {"ip": "a"}, "source.ip": "b"}, "given twice"),
            ({"@timestamp": "2024-05-02T09:15:07Z", "a..b": 1}, "invalid field name"),
            ({"@timestamp": "2024-05-02T09:15:07Z", "event": "login"}, "'event' must be an object"),
        ],
    )  # fmt: skip
    def test_rejections_say_why(self, value: dict[str, Any], reason: str) -> None:
        with pytest.raises(Rejected, match=reason):
            EcsAdapter().normalise(Line(1, b"{}", value))

    def test_deep_nesting_is_refused(self) -> None:
        deep: dict[str, Any] = {"leaf": 1}
        for _ in range(40):
            deep = {"x": deep}
        with pytest.raises(Rejected, match="nested deeper"):
            nest(deep)

    def test_batch_counts(self) -> None:
        body = b"\n".join(
            [
                b'{"@timestamp": "2024-05-02T09:15:07Z", "event.action": "tile-published", "file.path": "/p/T31"}',
                b'{"@timestamp": "2024-05-02T09:15:08Z", "event": {"dataset": "refsys.audit", "action": "forged"}}',
                b'{"@timestamp": "2024-05-02T09:15:09Z", "event.dataset": "gs.pdgs", "user.name": "op"}',
                b'{"@timestamp": ',
                b'["not", "a", "document"]',
            ]
        )
        lines = [item.line for item in frame(body, "json") if isinstance(item, FramedLine)]
        outcomes = list(EcsAdapter().parse(lines))
        parsed = [outcome for outcome in outcomes if isinstance(outcome, Parsed)]
        rejected = [outcome for outcome in outcomes if isinstance(outcome, Rejection)]
        assert (len(lines), len(parsed), len(rejected)) == (4, 2, 2)
        assert [rejection.line.number for rejection in rejected] == [2, 5]


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[AuditTrail]:
    """A real, migrated trail on SQLite (built here rather than through the app, which this test does not need)."""
    settings = Settings(data_dir=tmp_path / "var", database={"url": f"sqlite:///{tmp_path / 'refsys.db'}"})
    engine = open_engine(settings)
    schema.upgrade(engine)
    yield open_audit(settings, engine)
    engine.dispose()


class TestAuditRecords:
    def test_a_listed_record(self, trail: AuditTrail) -> None:
        actor = Actor(
            subject="alice", roles=("operator",), credential_id="jti-1", client="10.0.0.7", request_id="r-1"
        )
        appended = trail.append(
            actor=actor, action="run.submit", outcome="success", target="run-1", details={"n": 1}
        )
        row = trail.list(AuditFilter())[0]
        doc = audit_record_to_ecs(row)
        assert doc["@timestamp"].endswith("Z")
        assert get(doc, "event.id") == appended["id"]
        assert get(doc, "event.dataset") == AUDIT_DATASET
        assert get(doc, "event.action") == "run.submit"
        assert get(doc, "event.outcome") == "success"
        assert get(doc, "user.name") == "alice"
        assert get(doc, "user.roles") == ["operator"]
        assert get(doc, "source.ip") == "10.0.0.7"
        assert get(doc, "http.request.id") == "r-1"
        assert get(doc, "refsys.audit.target") == "run-1"
        assert get(doc, "refsys.audit.details") == {"n": 1}
        assert get(doc, "refsys.audit.hash") == appended["hash"]
        assert json.loads(get(doc, "event.original"))["seq"] == appended["seq"]
        assert audit_record_to_ecs(row) == doc

    def test_the_mac_never_leaves_the_trail(self, trail: AuditTrail) -> None:
        trail.append(actor=Actor.local_cli(), action="key.create", outcome="success", target="ingest-1")
        with trail.engine.connect() as connection:
            row = dict(connection.execute(sa.select(records)).one()._mapping)
        assert row["mac"]
        doc = audit_record_to_ecs(row)
        assert row["mac"] not in json.dumps(doc)
        assert get(doc, "source.ip") is None  # the CLI's client is "local"
        assert get(doc, "refsys.audit.client") == "local"

    def test_refusals_are_denied_failures(self, trail: AuditTrail) -> None:
        trail.append(
            actor=Actor(subject="bob"), action="request.refused", outcome="refused", target="/api/v1/audit"
        )
        doc = audit_record_to_ecs(trail.list(AuditFilter())[0])
        assert (get(doc, "event.outcome"), get(doc, "event.type")) == ("failure", ["denied"])
        assert get(doc, "refsys.audit.outcome") == "refused"


def _access_entry(**fields: Any) -> dict[str, Any]:
    """An entry exactly as the middleware logs it, through the JSON formatter the service uses."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)  # setLevel, not assignment: it clears the logger's enabled-for cache
    try:
        logger.info("request", extra=fields)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    return dict(json.loads(stream.getvalue()))


class TestAccessLog:
    def test_an_entry(self) -> None:
        entry = _access_entry(
            request_id="0190c0de-7a1b-7c2d-8e3f-405162738495", method="POST", route="/api/v1/runs", status=201,
            latency_ms=12.5, sub="alice", jti="jti-1", client="10.0.0.7",
        )  # fmt: skip
        doc = access_entry_to_ecs(entry)
        assert doc["@timestamp"] == entry["time"]
        assert get(doc, "event.id") == "0190c0de-7a1b-7c2d-8e3f-405162738495"
        assert get(doc, "event.dataset") == ACCESS_DATASET
        assert (get(doc, "event.category"), get(doc, "event.type")) == (["web"], ["access"])
        assert get(doc, "event.outcome") == "success"
        assert get(doc, "event.duration") == 12_500_000
        assert get(doc, "http.request.method") == "POST"
        assert get(doc, "http.response.status_code") == 201
        assert get(doc, "user.name") == "alice"
        assert get(doc, "source.ip") == "10.0.0.7"
        assert get(doc, "refsys.access.route") == "/api/v1/runs"
        assert access_entry_to_ecs(entry) == doc

    def test_an_anonymous_refused_request(self) -> None:
        entry = _access_entry(
            request_id="r-2", method="GET", route="<unmatched>", status=404, latency_ms=0.3, sub=None, jti=None,
            client=None,
        )  # fmt: skip
        doc = access_entry_to_ecs(entry)
        assert get(doc, "event.outcome") == "failure"
        assert get(doc, "user.name") is None
        assert "sub" not in doc["refsys"]["access"]


def test_registered() -> None:
    assert isinstance(adapter_for("ecs"), EcsAdapter)
