"""The Wazuh adapter on real alerts: wazuh/wazuh's integratord cases and one alert from the Wazuh indexer."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from security.ecs import get
from security.intake.framing import frame
from security.sources.base import Line, Parsed, Rejected, Rejection
from security.sources.registry import adapter_for
from security.sources.wazuh import WazuhAdapter
from tests.shared_data import shared_file

INTEGRATORD = "wazuh-ruleset-tests/EXTRACTED_integratord_alert_samples.jsonl"
INDEXED = "wazuh-indexer/integrations/amazon-security-lake/ocsf/wazuh-event.sample.json"


def _framed(body: bytes) -> tuple[list[Line], list[Rejection]]:
    """``body`` framed by the intake's own JSON framing: lines for the adapter, and what framing refused."""
    lines: list[Line] = []
    refused: list[Rejection] = []
    for framed in frame(body, "json"):
        if isinstance(framed, Rejection):
            refused.append(framed)
        else:
            lines.append(framed.line)
    return lines, refused


def _integratord_lines() -> tuple[list[Line], list[Rejection]]:
    """The samples' ``raw`` alerts as one NDJSON body: the line that is not JSON (the file holds one on
    purpose) is rejected by framing, before the adapter sees it, as in a real ingestion."""
    samples = shared_file(INTEGRATORD).read_text().splitlines()
    return _framed(b"\n".join(json.loads(sample)["raw"].encode() for sample in samples))


def _parse(lines: list[Line]) -> tuple[list[Parsed], list[Rejection]]:
    outcomes = list(WazuhAdapter().parse(lines))
    return (
        [outcome for outcome in outcomes if isinstance(outcome, Parsed)],
        [outcome for outcome in outcomes if isinstance(outcome, Rejection)],
    )


def _indexed_line() -> Line:
    lines, refused = _framed(shared_file(INDEXED).read_bytes())
    assert len(lines) == 1 and not refused
    return lines[0]


class TestIntegratordSamples:
    def test_counts(self) -> None:
        lines, refused_by_framing = _integratord_lines()
        parsed, rejected = _parse(lines)
        assert (len(parsed), len(rejected), len(refused_by_framing)) == (3, 0, 1)
        assert refused_by_framing[0].line.number == 2
        assert refused_by_framing[0].reason.startswith("invalid JSON")

    def test_sshd_brute_force_alert(self) -> None:
        lines, _ = _integratord_lines()
        doc = WazuhAdapter().normalise(lines[0])[0]
        assert doc["@timestamp"] == "2022-05-11T12:29:19.905000Z"
        assert get(doc, "event.kind") == "alert"
        assert get(doc, "event.module") == "wazuh"
        assert get(doc, "event.original") == lines[0].text
        assert get(doc, "rule.id") == "5712"
        assert (
            get(doc, "rule.name")
            == "sshd: brute force trying to get access to the system. Non existent user."
        )
        assert get(doc, "rule.ruleset") == "wazuh"
        assert get(doc, "event.severity") == 10
        assert get(doc, "event.category") == ["authentication"]
        assert get(doc, "event.type") == ["start"]
        assert get(doc, "event.outcome") == "failure"
        assert get(doc, "threat.technique.id") == ["T1110"]
        assert get(doc, "threat.tactic.name") == ["Credential Access"]
        assert get(doc, "host.name") == "localhost.localdomain"
        assert get(doc, "source.ip") == "172.17.1.1"
        assert get(doc, "source.port") == 56404
        assert get(doc, "user.name") == "paco"
        assert (
            get(doc, "message")
            == "May 11 12:29:18 localhost sshd[17584]: Invalid user paco from 172.17.1.1 port 56404"
        )
        assert get(doc, "log.file.path") == "/var/log/secure"

    def test_native_fields_keep_the_whole_alert(self) -> None:
        lines, _ = _integratord_lines()
        doc = WazuhAdapter().normalise(lines[0])[0]
        assert get(doc, "wazuh.rule.groups") == ["syslog", "sshd", "authentication_failures"]
        assert get(doc, "wazuh.rule.level") == 10
        assert get(doc, "wazuh.rule.firedtimes") == 1
        assert get(doc, "wazuh.rule.pci_dss") == ["11.4", "10.2.4", "10.2.5"]
        assert get(doc, "wazuh.rule.gdpr") == ["IV_35.7.d", "IV_32.2"]
        assert get(doc, "wazuh.rule.hipaa") == ["164.312.b"]
        assert get(doc, "wazuh.rule.nist_800_53") == ["SI.4", "AU.14", "AC.7"]
        assert get(doc, "wazuh.rule.tsc") == ["CC6.1", "CC6.8", "CC7.2", "CC7.3"]
        assert get(doc, "wazuh.agent.id") == "000"
        assert get(doc, "wazuh.data.srcip") == "172.17.1.1"
        assert get(doc, "wazuh.decoder.name") == "sshd"
        assert get(doc, "wazuh.predecoder.program_name") == "sshd"

    def test_event_id_is_the_alert_id_on_its_manager_and_stable(self) -> None:
        lines, _ = _integratord_lines()
        first = WazuhAdapter().normalise(lines[0])[0]
        again = WazuhAdapter().normalise(lines[0])[0]
        assert get(first, "event.id") == get(again, "event.id") == "localhost.localdomain:1652272159.1549653"
        # The samples repeat one alert (same manager, same id): re-ingestion deduplicates them, by design.
        assert {get(WazuhAdapter().normalise(line)[0], "event.id") for line in lines} == {
            "localhost.localdomain:1652272159.1549653"
        }

    def test_same_alert_id_from_another_manager_is_another_event(self) -> None:
        lines, _ = _integratord_lines()
        other = copy.deepcopy(lines[0].value)
        other["manager"]["name"] = "wazuh-worker2"
        doc = WazuhAdapter().normalise(Line(9, b"{}", other))[0]
        assert get(doc, "event.id") == "wazuh-worker2:1652272159.1549653"


class TestIndexedAlert:
    def test_indexer_hit_is_unwrapped(self) -> None:
        line = _indexed_line()
        parsed, rejected = _parse([line])
        assert (len(parsed), len(rejected)) == (1, 0)
        doc = parsed[0].doc
        # 11:35:14.334-0300 is the indexer's own UTC "fields.timestamp" value.
        assert doc["@timestamp"] == "2024-02-08T14:35:14.334000Z"
        assert json.loads(line.raw)["fields"]["timestamp"] == ["2024-02-08T14:35:14.334Z"]
        assert get(doc, "event.original") == line.text
        assert get(doc, "event.id") == "redacted.com:1707402914.872885"
        assert get(doc, "rule.id") == "31166"
        assert get(doc, "event.severity") == 6
        assert get(doc, "event.category") == ["web", "intrusion_detection"]
        assert get(doc, "threat.technique.id") == ["T1068", "T1190"]
        assert get(doc, "url.original") == "/cgi-bin/jarrewrite.sh"
        assert get(doc, "wazuh.rule.groups") == ["web", "accesslog", "attack"]
        assert get(doc, "wazuh.rule.pci_dss") == ["11.4"]
        assert get(doc, "wazuh.decoder.name") == "web-accesslog"
        assert get(doc, "host.name") == "redacted.com"

    def test_redacted_source_ip_stays_native_only(self) -> None:
        doc = WazuhAdapter().normalise(_indexed_line())[0]
        # "000.111.222.10" is not an IP address (leading zeros): it would break an ip-typed source.ip.
        assert get(doc, "source.ip") is None
        assert get(doc, "wazuh.data.srcip") == "000.111.222.10"


def _alert(**changes: Any) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "timestamp": "2024-03-01T08:00:00.000+0000",
        "rule": {"id": "5501", "level": 3, "description": "PAM: Login session opened.", "groups": ["pam"]},
        "agent": {"id": "007", "name": "proc-node-1", "ip": "10.1.2.3"},
        "manager": {"name": "wazuh-master"},
        "id": "1709280000.42",
        "data": {"srcuser": "ops", "dstuser": "root"},
    }
    alert.update(changes)
    return {key: value for key, value in alert.items() if value is not None}


class TestFieldMapping:
    def test_agent_ip_and_effective_user(self) -> None:
        doc = WazuhAdapter().normalise(Line(1, b"{}", _alert()))[0]
        assert get(doc, "host.ip") == ["10.1.2.3"]
        assert get(doc, "user.name") == "ops"
        assert get(doc, "user.effective.name") == "root"
        assert get(doc, "event.category") is None  # "pam" alone says nothing about success or failure

    def test_syscheck_group_gives_the_file_event_type(self) -> None:
        alert = _alert(
            rule={"id": "550", "level": 7, "groups": ["ossec", "syscheck", "syscheck_entry_modified"]},
            syscheck={"path": "/etc/passwd", "event": "modified"},
        )
        doc = WazuhAdapter().normalise(Line(1, b"{}", alert))[0]
        assert (get(doc, "event.category"), get(doc, "event.type")) == (["file"], ["change"])
        assert get(doc, "event.action") == "modified"

    def test_alert_without_id_leaves_the_id_to_the_intake(self) -> None:
        doc = WazuhAdapter().normalise(Line(1, b"{}", _alert(id=None)))[0]
        assert get(doc, "event.id") is None

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            (_alert(rule=None), "without a rule"),
            (_alert(rule={}), "without a rule"),
            (_alert(timestamp=None), "without a timestamp"),
            (_alert(timestamp=" "), "without a timestamp"),
            (_alert(timestamp="yesterday"), "unreadable Wazuh alert timestamp"),
            (["not", "an", "alert"], "must be a JSON object"),
        ],
    )
    def test_rejections_say_why(self, value: Any, reason: str) -> None:
        with pytest.raises(Rejected, match=reason):
            WazuhAdapter().normalise(Line(1, b"{}", value))


def test_registered() -> None:
    assert isinstance(adapter_for("wazuh"), WazuhAdapter)
