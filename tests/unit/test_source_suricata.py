"""The Suricata EVE adapter on real EVE output (Stamus Networks, DCSO fever, the OISF docs) and on edge cases."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import orjson
import pytest

from security.ecs import get
from security.sources.base import Line, Rejected
from security.sources.registry import ADAPTERS, adapter_for
from security.sources.suricata import SuricataAdapter
from tests.shared_data import shared_file
from tests.source_samples import json_line, run_sample

STAMUS = "suricata-stamus-analytics/jupyter/Notebooks"
FEVER = "suricata-dcso-fever"
OISF_EXAMPLES = "suricata-oisf/EXTRACTED_eve_examples_from_eve-json-format.rst.jsonl"
HTTP_ALERTS = f"{STAMUS}/events/suricon-2024/http-alert-sample.json"


@pytest.mark.parametrize(
    ("sample", "unwrap", "accepted", "rejected"),
    [
        (f"{STAMUS}/training/data/02/eve.json", None, 290, 0),
        (f"{STAMUS}/training/data/03/eve.json", None, 858, 0),
        (HTTP_ALERTS, None, 4, 0),
        (f"{FEVER}/util/testdata/jsonparse_eve.json", None, 3, 0),
        (f"{FEVER}/util/testdata/jsonparse_eve_broken1.json", None, 2, 1),  # line 2 is cut: invalid JSON
        (f"{FEVER}/util/testdata/jsonparse_eve_empty.json", None, 0, 0),
        (f"{FEVER}/util/testdata/jsonparse_eve_nulls.json", None, 1, 0),
        (f"{FEVER}/cmd/fever/cmds/testdata/alertify_input.json", None, 3, 0),
        (OISF_EXAMPLES, "event", 9, 1),  # one docs example is a bare pgsql fragment: not an EVE record
    ],
)
def test_every_sample_line_is_accepted_or_rejected_with_a_reason(
    sample: str, unwrap: str | None, accepted: int, rejected: int
) -> None:
    run = run_sample(SuricataAdapter(), shared_file(sample), unwrap=unwrap)
    assert run.counts == (accepted, rejected)
    assert all(rejection.reason for rejection in run.rejections)
    for doc in run.docs:
        assert doc["@timestamp"].endswith("Z")
        assert get(doc, "event.module") == "suricata"
        assert get(doc, "event.action") == get(doc, "suricata.eve.event_type")
        assert orjson.loads(get(doc, "event.original")) == get(doc, "suricata.eve")


def test_the_rejections_say_why() -> None:
    broken = run_sample(SuricataAdapter(), shared_file(f"{FEVER}/util/testdata/jsonparse_eve_broken1.json"))
    assert [(r.line.number, r.reason) for r in broken.rejections] == [(2, "invalid JSON")]
    oisf = run_sample(SuricataAdapter(), shared_file(OISF_EXAMPLES), unwrap="event")
    assert [r.reason for r in oisf.rejections] == [
        "not an EVE record: it has neither timestamp nor event_type"
    ]


def test_each_event_type_is_kept_with_its_category() -> None:
    run = run_sample(SuricataAdapter(), shared_file(f"{STAMUS}/training/data/02/eve.json"))
    assert Counter(get(doc, "event.action") for doc in run.docs) == {
        "flow": 80, "dns": 80, "http": 39, "tls": 38, "alert": 36, "fileinfo": 17
    }  # fmt: skip
    kinds = {
        get(doc, "event.action"): (get(doc, "event.kind"), get(doc, "event.category")) for doc in run.docs
    }
    assert kinds["alert"] == ("alert", ["network", "intrusion_detection"])
    assert kinds["http"] == ("event", ["network", "web"])
    assert kinds["fileinfo"] == ("event", ["network", "file"])
    assert kinds["flow"] == ("event", ["network"])


def test_an_alert_maps_rule_severity_addresses_and_flow() -> None:
    alert = run_sample(SuricataAdapter(), shared_file(HTTP_ALERTS)).docs[0]
    assert alert["@timestamp"] == "2024-08-12T17:06:46.358506Z"
    assert get(alert, "event.kind") == "alert"
    assert get(alert, "event.type") == ["allowed"]
    assert get(alert, "event.severity") == 1
    assert get(alert, "rule.id") == "2050745"
    assert get(alert, "rule.name") == "ET MALWARE FormBook CnC Checkin (GET) M5"
    assert get(alert, "rule.category") == "Malware Command and Control Activity Detected"
    assert (get(alert, "source.ip"), get(alert, "source.port")) == ("10.8.12.101", 50172)
    assert (get(alert, "destination.ip"), get(alert, "destination.port")) == ("85.159.66.93", 80)
    assert get(alert, "network.transport") == "tcp"
    assert get(alert, "network.protocol") == "http"
    assert get(alert, "network.community_id") == "1:cd3u+S1DKFQy3MW4oj1zKuW/WlU="
    assert get(alert, "url.domain") == "www.dressroza.com"
    assert get(alert, "url.path") == "/4av1/"
    assert get(alert, "http.response.status_code") == 404
    # Native fields stay addressable by Suricata's own names.
    assert get(alert, "suricata.eve.alert.signature_id") == 2050745
    assert get(alert, "suricata.eve.flow_id") == 1444408083924162
    assert get(alert, "suricata.eve.community_id") == "1:cd3u+S1DKFQy3MW4oj1zKuW/WlU="


def test_a_timestamp_with_an_offset_becomes_utc() -> None:
    alert = run_sample(SuricataAdapter(), shared_file(OISF_EXAMPLES), unwrap="event").docs[0]
    assert get(alert, "suricata.eve.timestamp") == "2017-04-07T22:24:37.251547+0100"
    assert alert["@timestamp"] == "2017-04-07T21:24:37.251547Z"
    assert get(alert, "event.severity") == 2


def test_two_alerts_on_one_packet_get_distinct_ids() -> None:
    first, second, *_ = run_sample(SuricataAdapter(), shared_file(HTTP_ALERTS)).docs
    same = ("suricata.eve.flow_id", "suricata.eve.tx_id", "suricata.eve.pcap_cnt", "@timestamp")
    assert [get(first, path) for path in same] == [get(second, path) for path in same]
    assert get(first, "rule.id") != get(second, "rule.id")
    assert get(first, "event.id") != get(second, "event.id")


@pytest.mark.parametrize(
    "sample", [f"{STAMUS}/training/data/02/eve.json", f"{STAMUS}/training/data/03/eve.json"]
)
def test_every_event_of_a_capture_has_its_own_id(sample: str) -> None:
    docs = run_sample(SuricataAdapter(), shared_file(sample)).docs
    assert len({get(doc, "event.id") for doc in docs}) == len(docs)


def test_the_same_line_normalised_twice_gets_the_same_id() -> None:
    path = shared_file(HTTP_ALERTS)
    raw = path.read_bytes().splitlines()[0]
    value = orjson.loads(raw)
    once = SuricataAdapter().normalise(Line(1, raw, value))[0]
    twice = SuricataAdapter().normalise(Line(7, raw, value))[0]
    reserialised = SuricataAdapter().normalise(
        Line(1, orjson.dumps(value, option=orjson.OPT_INDENT_2), value)
    )[0]
    assert get(once, "event.id") == get(twice, "event.id") == get(reserialised, "event.id")


def test_a_record_without_flow_leaves_the_id_to_the_intake() -> None:
    (doc,) = run_sample(
        SuricataAdapter(), shared_file(f"{FEVER}/util/testdata/jsonparse_eve_nulls.json")
    ).docs
    assert get(doc, "event.id") is None
    assert get(doc, "source.ip") is None  # src_ip is null
    assert get(doc, "url.domain") == "api.icndb.com"


def test_dns_tls_fileinfo_and_flow_fields() -> None:
    docs = run_sample(
        SuricataAdapter(), shared_file(f"{FEVER}/cmd/fever/cmds/testdata/alertify_input.json")
    ).docs
    dns = next(doc for doc in docs if get(doc, "event.action") == "dns")
    assert get(dns, "dns.question.name") == "static.programme-tv.net"
    assert get(dns, "dns.response_code") == "NOERROR"
    assert get(dns, "dns.answers")[0] == {
        "name": "static.programme-tv.net", "type": "CNAME", "ttl": 630, "data": "programme-tv.net.edgesuite.net"
    }  # fmt: skip
    tls = next(doc for doc in docs if get(doc, "event.action") == "tls")
    assert get(tls, "tls.client.server_name") == "example.com"
    assert get(tls, "tls.version") == "1.2"
    assert get(tls, "tls.server.hash.sha1") == "7BB698386970363D2919CC5772846984FFD4A889"
    assert get(tls, "source.ip") == "2a03:b0c0:2:d0::bd3:4001"  # canonical form of the zero-padded address
    assert get(tls, "network.type") == "ipv6"

    eve = run_sample(SuricataAdapter(), shared_file(f"{STAMUS}/training/data/02/eve.json")).docs
    fileinfo = next(doc for doc in eve if get(doc, "event.action") == "fileinfo")
    assert get(fileinfo, "file.name") == "Desktop.ini"
    assert (
        get(fileinfo, "file.hash.sha256")
        == "00cac17b3c2c94f5f5591a6238c2087f89366827b3a4ae8b14b754ac2ccfcc97"
    )
    flow = next(doc for doc in eve if get(doc, "event.action") == "flow")
    assert get(flow, "network.bytes") == get(flow, "source.bytes") + get(flow, "destination.bytes")
    assert get(flow, "event.type") == ["connection", "end"]
    answer = next(doc for doc in eve if get(doc, "dns.type") == "answer")
    assert get(answer, "dns.resolved_ip") == ["13.107.246.57", "13.107.213.57"]


def test_an_event_type_without_a_mapping_is_kept_generically() -> None:
    docs = run_sample(SuricataAdapter(), shared_file(OISF_EXAMPLES), unwrap="event").docs
    mqtt = next(doc for doc in docs if get(doc, "event.action") == "mqtt")
    assert (get(mqtt, "event.kind"), get(mqtt, "event.category")) == ("event", ["network"])
    assert get(mqtt, "network.protocol") == "mqtt"
    assert get(mqtt, "suricata.eve.mqtt.publish.topic") == "house/bulbs/bulb1"
    assert get(mqtt, "event.id") is not None


def _eve(**changes: Any) -> dict[str, Any]:
    eve = {"timestamp": "2024-01-02T03:04:05.000006+0000", "flow_id": 1, "event_type": "flow", "proto": "TCP"}
    eve.update(changes)
    return {key: value for key, value in eve.items() if value is not None}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([1, 2], "an EVE record is a JSON object, not a JSON list"),
        ({"pgsql": {"tx_id": 3}}, "not an EVE record: it has neither timestamp nor event_type"),
        (_eve(event_type=None), "EVE record without an event_type"),
        (_eve(timestamp=None), "EVE flow record without a timestamp"),
        (_eve(timestamp="yesterday"), "EVE timestamp 'yesterday' is not an RFC 3339 time"),
        (_eve(timestamp="2024-01-02T03:04:05"), "is not an RFC 3339 time"),  # no zone: its instant is unknown
        (_eve(event_type="alert"), "EVE alert record without an alert object"),
    ],
)
def test_what_is_not_eve_is_rejected_with_a_reason(value: Any, reason: str) -> None:
    with pytest.raises(Rejected, match=re.escape(reason)):
        SuricataAdapter().normalise(json_line(value))


def test_the_registry_knows_the_suricata_adapter() -> None:
    assert isinstance(adapter_for("suricata"), SuricataAdapter)
    assert all(name == adapter.name for name, adapter in ADAPTERS.items())
    with pytest.raises(KeyError, match=r"unknown telemetry source 'snort'; known sources: .*suricata"):
        adapter_for("snort")


@pytest.mark.parametrize(
    ("eve", "event_type"),
    [
        ({"flow_id": 1234567890123, "tx_id": 3}, "http"),
        ({"flow_id": 42, "alert": {"gid": 1, "signature_id": 2019401}}, "alert"),
        ({"flow_id": 7, "fileinfo": {"file_id": 9, "tx_id": 0}}, "fileinfo"),
        ({"flow_id": 8, "anomaly": {"type": "decode", "event": "ipv4.trunc_pkt"}}, "anomaly"),
    ],
)
def test_event_ids_are_the_uuid5_they_always_were(eve: dict[str, Any], event_type: str) -> None:
    """The id is computed without ``uuid.uuid5`` for speed; it must stay exactly that UUID, or re-ingested
    events would stop deduplicating against those stored before."""
    import uuid

    from security.sources.suricata import ID_NAMESPACE, event_id

    moment = "2026-11-25T10:00:00.123456Z"
    own = eve.get(event_type, {})
    parts: list[Any] = [eve["flow_id"], event_type, eve.get("tx_id", own.get("tx_id")), moment]
    parts += {
        "alert": [own.get("gid"), own.get("signature_id")],
        "fileinfo": [own.get("file_id")],
        "anomaly": [own.get("type"), own.get("event")],
    }.get(event_type, [])
    assert event_id(eve, event_type, moment) == str(uuid.uuid5(ID_NAMESPACE, orjson.dumps(parts).decode()))
