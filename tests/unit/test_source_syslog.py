"""The syslog adapter on the raw Linux log lines of Wazuh's logtest suites, and on RFC 5424's own examples.

Each suite section gives log lines and the Wazuh rule they must (``pass``) or must not (``fail``) trigger; the
rule's groups in Wazuh's ruleset (``authentication_failed``, ``invalid_login``...) are a second opinion on
whether a line is a failed or successful authentication.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from security import ecs
from security.sources.base import Line, Parsed, Rejection
from security.sources.registry import adapter_for
from security.sources.syslog import SyslogAdapter, infer_year
from tests.shared_data import shared_file

SUITES = "wazuh-ruleset-tests/ruleset/testing/tests"
RULES = "wazuh-ruleset-tests/ruleset/rules"
REFERENCE = datetime(2026, 8, 1, tzinfo=UTC)
FAILURE_GROUPS = {"authentication_failed", "authentication_failures", "invalid_login"}


@dataclass(frozen=True)
class SuiteLine:
    expect: str
    """``pass``: the section's rule must fire on this line; ``fail``: it must not."""
    rule: str
    text: str


def _suite(name: str) -> list[SuiteLine]:
    """The log lines of one logtest suite with the rule of their section (an INI where keys repeat)."""
    lines: list[tuple[str, str]] = []
    out: list[SuiteLine] = []
    for row in shared_file(f"{SUITES}/{name}.ini").read_text().splitlines():
        if row.startswith("["):
            lines = []
        elif match := re.fullmatch(r"log \d+ (pass|fail) = (.*)", row):
            lines.append((match[1], match[2]))
        elif match := re.fullmatch(r"rule = (\d+)", row):
            out += [SuiteLine(expect, match[1], text) for expect, text in lines]
    return out


def _rule_groups() -> dict[str, set[str]]:
    groups: dict[str, set[str]] = {}
    for name in ("0020-syslog", "0085-pam", "0095-sshd"):
        root = ET.fromstring(f"<rules>{shared_file(f'{RULES}/{name}_rules.xml').read_text()}</rules>")
        for rule in root.iter("rule"):
            groups[rule.get("id", "")] = set(filter(None, (rule.findtext("group") or "").split(",")))
    return groups


def _doc(text: str, **options: Any) -> dict[str, Any]:
    options.setdefault("reference_time", REFERENCE)
    (doc,) = SyslogAdapter(**options).normalise(Line(1, text.encode()))
    return doc


def _find(suite: str, fragment: str) -> dict[str, Any]:
    (line,) = {line.text for line in _suite(suite) if fragment in line.text}
    return _doc(line)


# --- the Wazuh suites --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suite", "lines", "authentication", "session", "process", "failures", "successes"),
    [
        ("sshd", 71, 45, 1, 0, 45, 1),  # 24 sshd diagnostics (MAC, DH, negotiation...) stay plain messages
        ("pam", 5, 3, 2, 0, 3, 2),
        ("sudo", 8, 2, 0, 6, 3, 5),  # 2 wrong passwords, 1 user not in sudoers, 5 commands run
        ("su", 5, 5, 1, 0, 4, 1),
    ],
)
def test_suite_counts(
    suite: str, lines: int, authentication: int, session: int, process: int, failures: int, successes: int
) -> None:
    framed = [Line(number, line.text.encode()) for number, line in enumerate(_suite(suite), start=1)]
    outcomes = list(SyslogAdapter(reference_time=REFERENCE).parse(framed))
    docs = [o.doc for o in outcomes if isinstance(o, Parsed)]
    assert (len(framed), len(docs), sum(isinstance(o, Rejection) for o in outcomes)) == (lines, lines, 0)

    def count(category: str) -> int:
        return sum(category in doc["event"].get("category", []) for doc in docs)

    outcomes_seen = [doc["event"].get("outcome") for doc in docs]
    assert (count("authentication"), count("session"), count("process")) == (authentication, session, process)
    assert (outcomes_seen.count("failure"), outcomes_seen.count("success")) == (failures, successes)
    assert all("@timestamp" in doc and doc["host"]["hostname"] for doc in docs)
    assert all("id" not in doc["event"] for doc in docs)  # no identity of its own: the intake derives one


@pytest.mark.parametrize("suite", ["sshd", "pam", "su"])  # Wazuh's sudo rules carry no authentication group
def test_what_wazuh_calls_an_authentication_failure_is_one(suite: str) -> None:
    groups = _rule_groups()
    checked = 0
    for line in _suite(suite):
        rule_groups = groups[line.rule]
        if line.expect != "pass" or not rule_groups & (FAILURE_GROUPS | {"authentication_success"}):
            continue
        event = _doc(line.text)["event"]
        expected = "failure" if rule_groups & FAILURE_GROUPS else "success"
        assert event.get("outcome") == expected, line.text
        if expected == "failure":
            assert "authentication" in event["category"], line.text
        checked += 1
    assert checked > 0


def test_sshd_failure() -> None:
    doc = _find("sshd", "Failed password for invalid user sammy")
    assert doc["@timestamp"] == "2026-07-03T21:44:07.000000Z"
    assert (doc["event"]["category"], doc["event"]["outcome"], doc["event"]["action"]) == (
        ["authentication"],
        "failure",
        "ssh_login",
    )
    assert doc["user"]["name"] == "sammy"
    assert doc["source"] == {"address": "82.202.219.155", "ip": "82.202.219.155", "port": 51676}
    assert (doc["process"]["name"], doc["process"]["pid"], doc["host"]["hostname"]) == (
        "sshd",
        26279,
        "vmi189193",
    )
    assert doc["syslog"]["sshd"] == {"method": "password", "invalid_user": True}
    assert doc["message"].startswith("Failed password")
    assert doc["event"]["original"] == (
        "Jul  3 21:44:07 vmi189193 sshd[26279]: Failed password for invalid user sammy from 82.202.219.155 port 51676 ssh2"
    )


def test_sshd_success() -> None:
    doc = _find("malicious-ioc", "Accepted none for root")
    assert (doc["event"]["category"], doc["event"]["type"], doc["event"]["outcome"]) == (
        ["authentication", "session"],
        ["start"],
        "success",
    )
    assert (doc["user"]["name"], doc["source"]["ip"], doc["source"]["port"]) == ("root", "218.92.0.222", 1066)


def test_sshd_invalid_user_with_an_iso_timestamp() -> None:
    doc = _find("sshd", "Invalid user opcione")
    assert doc["@timestamp"] == "2013-10-30T13:51:30.267401Z"  # rsyslog's high-precision time, offset applied
    assert (doc["event"]["action"], doc["event"]["outcome"], doc["user"]["name"]) == (
        "ssh_invalid_user",
        "failure",
        "opcione",
    )
    assert doc["source"]["ip"] == "192.241.237.101"
    assert "port" not in doc["source"]


def test_sshd_address_that_is_not_an_ip_stays_an_address() -> None:
    doc = _find("sshd", "183.106.179.x")
    assert doc["source"] == {"address": "183.106.179.x", "port": 34100}


def test_sudo_command() -> None:
    doc = _find("sudo", "COMMAND=/usr/bin/tail")
    assert (doc["event"]["category"], doc["event"]["type"], doc["event"]["outcome"]) == (
        ["process"],
        ["start"],
        "success",
    )
    assert (doc["user"]["name"], doc["user"]["effective"]["name"]) == ("dcid", "root")
    assert doc["process"]["command_line"] == "/usr/bin/tail /var/log/snort/alert.fast"
    assert doc["process"]["working_directory"] == "/home/dcid"
    assert (doc["process"]["name"], doc["log"]["syslog"]["appname"]) == ("sudo", "sudo")
    assert doc["syslog"]["sudo"] == {"tty": "pts/4"}


def test_sudo_wrong_password_and_refusal() -> None:
    wrong = _find("sudo", "3 incorrect password attempts")
    assert (wrong["event"]["category"], wrong["event"]["outcome"]) == (["authentication"], "failure")
    refused = _find("sudo", "NOT in sudoers")
    assert (refused["event"]["category"], refused["event"]["outcome"]) == (["process"], "failure")
    assert refused["syslog"]["sudo"]["error"] == "user NOT in sudoers"


def test_su_failure() -> None:
    doc = _find("su", "BAD SU")
    assert (doc["event"]["category"], doc["event"]["outcome"], doc["event"]["action"]) == (
        ["authentication"],
        "failure",
        "su",
    )
    assert (doc["user"]["name"], doc["user"]["effective"]["name"]) == ("ger", "fwmaster")


def test_pam_authentication_failure_with_rhost() -> None:
    doc = _find("pam", "2 more authentication failures")
    assert (doc["event"]["category"], doc["event"]["outcome"]) == (["authentication"], "failure")
    assert (doc["user"]["name"], doc["source"]["ip"]) == ("root", "10.0.3.1")
    assert doc["process"]["name"] == "sshd"
    assert doc["syslog"]["pam"] == {"module": "pam_unix", "service": "sshd", "tty": "ssh"}


def test_pam_failure_names_the_requesting_user() -> None:
    doc = _find("pam", "ruser=dcid rhost=  user=osaudit")
    assert (doc["user"]["name"], doc["user"]["effective"]["name"]) == ("dcid", "osaudit")
    assert "source" not in doc


# --- current formats and RFC 5424 (project-own samples; RFC examples from RFC 5424 section 6.5) -----------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "Mar  9 08:15:01 bastion sshd[4711]: Accepted publickey for alice from 10.0.0.5 port 50522 ssh2: ED25519 SHA256:q1w2e3",
            {
                "event.outcome": "success",
                "user.name": "alice",
                "source.ip": "10.0.0.5",
                "syslog.sshd.method": "publickey",
            },
        ),
        (
            "Mar  9 08:15:02 bastion sshd[4712]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=203.0.113.7  user=root",
            {
                "event.outcome": "failure",
                "user.name": "root",
                "source.ip": "203.0.113.7",
                "syslog.pam.type": "auth",
            },
        ),
        (
            "Mar  9 08:15:03 bastion sshd[4713]: Connection closed by authenticating user root 203.0.113.7 port 41122 [preauth]",
            {
                "event.category": ["authentication"],
                "event.outcome": "failure",
                "user.name": "root",
                "source.port": 41122,
            },
        ),
        (
            "Mar  9 08:15:04 bastion sshd[4711]: pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)",
            {"event.category": ["session"], "event.type": ["start"], "user.name": "alice"},
        ),
        (
            "Mar  9 08:15:05 bastion sudo: pam_unix(sudo:session): session opened for user root(uid=0) by alice(uid=1000)",
            {"event.category": ["session"], "user.name": "alice", "user.effective.name": "root"},
        ),
        (
            "Mar  9 08:15:06 bastion su[4800]: (to root) alice on pts/0",
            {
                "event.outcome": "success",
                "user.name": "alice",
                "user.effective.name": "root",
                "syslog.su.tty": "pts/0",
            },
        ),
        (
            "Mar  9 08:15:07 bastion su[4801]: FAILED SU (to root) alice on pts/0",
            {"event.outcome": "failure", "user.name": "alice", "user.effective.name": "root"},
        ),
        (
            "Mar  9 08:15:08 bastion sshd-session[4802]: Disconnected from user alice 10.0.0.5 port 50522",
            {"event.category": ["session"], "event.type": ["end"], "process.name": "sshd-session"},
        ),
        (
            "<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",  # RFC 3164 section 5.4
            {
                "log.syslog.facility.name": "auth",
                "log.syslog.severity.name": "Critical",
                "event.outcome": "failure",
            },
        ),
    ],
)
def test_current_formats(line: str, expected: dict[str, Any]) -> None:
    doc = _doc(line)
    assert {path: ecs.get(doc, path) for path in expected} == expected


def test_rfc5424_header_and_message() -> None:
    doc = _doc(
        "<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \ufeff'su root' failed for lonvick on /dev/pts/8"
    )
    assert doc["@timestamp"] == "2003-10-11T22:14:15.003000Z"
    assert doc["log"]["syslog"] == {
        "priority": 34,
        "facility": {"code": 4, "name": "auth"},
        "severity": {"code": 2, "name": "Critical"},
        "version": "1",
        "hostname": "mymachine.example.com",
        "appname": "su",
        "msgid": "ID47",
    }
    assert doc["message"] == "'su root' failed for lonvick on /dev/pts/8"
    assert (doc["user"]["name"], doc["event"]["outcome"]) == ("lonvick", "failure")


def test_rfc5424_structured_data_and_offsets() -> None:
    doc = _doc(
        '<165>1 2003-10-11T22:14:15.003-07:00 mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3"'
        ' eventSource="Appli\\"cation" eventID="1011"][examplePriority@32473 class="high"] An application event'
    )
    assert doc["@timestamp"] == "2003-10-12T05:14:15.003000Z"
    assert doc["log"]["syslog"]["structured_data"] == {
        "exampleSDID@32473": {"iut": "3", "eventSource": 'Appli"cation', "eventID": "1011"},
        "examplePriority@32473": {"class": "high"},
    }
    assert (doc["log"]["syslog"]["facility"]["name"], doc["log"]["syslog"]["severity"]["name"]) == (
        "local4",
        "Notice",
    )
    assert doc["message"] == "An application event"
    nil = _doc(
        "<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts."
    )
    assert (nil["process"]["pid"], nil["log"]["syslog"]["procid"], nil["message"]) == (
        8710,
        "8710",
        "%% It's time to make the do-nuts.",
    )


# --- year inference, time zones, generic lines ------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "month", "day", "time", "expected"),
    [
        ("2026-01-01T00:10:00", 12, 31, "23:59:00", "2025-12-31T23:59:00"),  # read just after New Year
        ("2025-12-31T23:00:00", 1, 1, "00:30:00", "2026-01-01T00:30:00"),  # sender ahead over New Year
        ("2026-03-10T12:00:00", 3, 11, "11:00:00", "2026-03-11T11:00:00"),  # < a day ahead: this year
        ("2026-03-10T12:00:00", 3, 11, "13:00:00", "2025-03-11T13:00:00"),  # > a day ahead: last year
        ("2026-03-10T12:00:00", 2, 29, "08:00:00", "2024-02-29T08:00:00"),  # leap day: the last leap year
    ],
)
def test_year_inference(reference: str, month: int, day: int, time: str, expected: str) -> None:
    hour, minute, second = (int(part) for part in time.split(":"))
    reference_time = datetime.fromisoformat(reference).replace(tzinfo=UTC)
    moment = infer_year(month, day, hour, minute, second, 0, tz=UTC, reference=reference_time)
    assert moment == datetime.fromisoformat(expected).replace(tzinfo=UTC)


def test_a_date_that_never_exists_has_no_year() -> None:
    with pytest.raises(ValueError, match="02-30"):
        infer_year(2, 30, 0, 0, 0, 0, tz=UTC, reference=REFERENCE)


def test_times_without_offset_are_read_in_the_configured_zone() -> None:
    paris_winter = timezone(timedelta(hours=1))
    doc = _doc("Mar 10 12:00:00 host cron[1]: job done", timezone=paris_winter)
    assert doc["@timestamp"] == "2026-03-10T11:00:00.000000Z"
    assert _doc("2015 Nov 13 13:40:01 ether rsyslogd-2177: imuxsock begins")["@timestamp"] == (
        "2015-11-13T13:40:01.000000Z"
    )


def test_unparseable_lines_are_kept_as_messages_and_only_empty_lines_rejected() -> None:
    lines = [
        Line(1, b"a continuation line without header"),
        Line(2, b""),
        Line(3, b"   \r"),
        Line(4, b"<13>no header"),
        Line(5, b"<999>Mar 10 12:00:00 host app: not a priority"),
    ]
    outcomes = list(SyslogAdapter(reference_time=REFERENCE).parse(lines))
    assert [(o.line.number, o.reason) for o in outcomes if isinstance(o, Rejection)] == [
        (2, "empty line"),
        (3, "empty line"),
    ]
    generic, with_priority, bad_priority = (o.doc for o in outcomes if isinstance(o, Parsed))
    assert generic["message"] == "a continuation line without header"
    assert "@timestamp" not in generic  # no time of its own: the intake's ingest time is all there is
    assert (with_priority["message"], with_priority["log"]["syslog"]["severity"]["name"]) == (
        "no header",
        "Notice",
    )
    assert bad_priority["message"] == "<999>Mar 10 12:00:00 host app: not a priority"


def test_a_line_without_hostname_still_has_its_tag() -> None:
    doc = _doc("<13>Mar 10 12:00:00 sshd[99]: Invalid user bob from 198.51.100.4 port 2222")
    assert "hostname" not in doc.get("host", {})
    assert (doc["process"]["name"], doc["user"]["name"], doc["source"]["port"]) == ("sshd", "bob", 2222)


def test_an_impossible_date_loses_only_the_time() -> None:
    doc = _doc("Feb 30 10:00:00 host sshd[7]: Invalid user eve from 198.51.100.9")
    assert "@timestamp" not in doc
    assert (doc["host"]["hostname"], doc["user"]["name"]) == ("host", "eve")


def test_registered_under_its_name() -> None:
    adapter = adapter_for("syslog")
    assert isinstance(adapter, SyslogAdapter)
    assert (adapter.dataset, adapter.framing) == ("syslog.messages", "text")
