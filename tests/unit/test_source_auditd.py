"""The auditd adapter on the upstream auparse samples, with auparse's own output as the oracle.

``auparse_test.ref`` is what ``auparse_test`` prints for ``test.log``, ``test2.log`` and ``test4.log``: events,
records in order, their fields (raw) and, in its Test 2, interpreted values. Grouping, record splitting and the
interpretations made here are checked against it; ``test3.log`` (interleaved records with ``node=``) is not in
it and is checked by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from security.sources.auditd import AuditdAdapter
from security.sources.base import Line, Parsed, Rejection
from security.sources.registry import adapter_for
from tests.shared_data import shared_file

SAMPLES = "linux-audit-userspace/auparse/test"

# Project-own sample: an EXECVE event with hex-encoded argument, working directory and proctitle, closed by EOE.
HEX_EXECVE = """\
type=SYSCALL msg=audit(1700000000.123:4242): arch=c000003e syscall=59 success=yes exit=0 a0=55d0c0a0 a1=55d0c0b0 a2=55d0c0c0 a3=0 items=1 ppid=1200 pid=1300 auid=1000 uid=1001 gid=1001 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=pts0 ses=3 comm="bash" exe="/usr/bin/bash" key="exec"
type=EXECVE msg=audit(1700000000.123:4242): argc=3 a0="bash" a1="-c" a2=6563686F20276869206D6F6D27
type=CWD msg=audit(1700000000.123:4242): cwd=2F686F6D652F616C6963652F6D7920646F6373
type=PATH msg=audit(1700000000.123:4242): item=0 name="/usr/bin/bash" inode=1 dev=08:01 mode=0100755 ouid=0 ogid=0 rdev=00:00 nametype=NORMAL
type=PROCTITLE msg=audit(1700000000.123:4242): proctitle=62617368002D63006563686F20276869206D6F6D27
type=EOE msg=audit(1700000000.123:4242):
"""


def _frame(text: str) -> list[Line]:
    """Text framing as the intake does it: one Line per line, 1-based (private until tests/source_samples.py)."""
    return [Line(number, raw.rstrip(b"\r")) for number, raw in enumerate(text.encode().splitlines(), start=1)]


def _sample(name: str) -> list[Line]:
    return _frame(shared_file(f"{SAMPLES}/{name}").read_text())


def _events(lines: list[Line], adapter: AuditdAdapter | None = None) -> tuple[list[Parsed], list[Rejection]]:
    outcomes = list((adapter or AuditdAdapter()).parse(lines))
    return [o for o in outcomes if isinstance(o, Parsed)], [o for o in outcomes if isinstance(o, Rejection)]


def _raw_fields(record: dict[str, str]) -> list[tuple[str, str]]:
    """A kept record's raw fields in order, without interpretations and with ``_2`` repeat suffixes removed."""
    return [(re.sub(r"_\d+$", "", key), value) for key, value in record.items() if not key.isupper()]


# --- the auparse oracle ------------------------------------------------------------------------------------


@dataclass
class OracleRecord:
    type: str
    field_count: int
    line: int = 0
    fields: list[tuple[str, str, str | None]] = field(default_factory=list)
    """(name, raw value as auparse prints it, interpretation when the test prints one)."""


@dataclass
class OracleEvent:
    time: str = ""
    records: list[OracleRecord] = field(default_factory=list)


def _oracle(test: int, *, interpreted: bool = False) -> list[OracleEvent]:
    text = shared_file(f"{SAMPLES}/auparse_test.ref").read_text()
    section = text.split(f"Starting Test {test},", 1)[1].split(f"Test {test} Done", 1)[0]
    events: list[OracleEvent] = []
    for line in section.splitlines():
        if re.fullmatch(r"event (\d+ )?has \d+ records", line):
            events.append(OracleEvent())
        elif match := re.fullmatch(r" {4}record \d+ of type \d+\((\w+)\) has (\d+) fields", line):
            events[-1].records.append(OracleRecord(match[1], int(match[2])))
        elif match := re.fullmatch(r" {4}line=(\d+) file=\S+", line):
            events[-1].records[-1].line = int(match[1])
        elif match := re.fullmatch(r" {4}event time: (\S+), host=\S+", line):
            events[-1].time = match[1]
        elif match := re.fullmatch(r" {8}([^=]+)=(.*)", line):
            name, rest = match[1], match[2]
            split = re.fullmatch(r"(.*) \((.*)\)", rest) if interpreted else None
            raw, meaning = (split[1], split[2]) if split else (rest, None)
            events[-1].records[-1].fields.append((name, raw, meaning))
    for event in events:
        for record in event.records:
            assert len(record.fields) == record.field_count, "the oracle parser lost a field"
    return events


@pytest.mark.parametrize(
    ("test", "files"),
    [
        (4, ["test.log"]),  # walk events, records of 1 file
        (5, ["test2.log", "test.log"]),  # walk events, records of 2 files
        (11, ["test4.log"]),  # walk LONG event records from a file
    ],
)
def test_grouping_and_fields_match_auparse(test: int, files: list[str]) -> None:
    oracle = _oracle(test)
    events = [event for name in files for event in _events(_sample(name))[0]]
    assert len(events) == len(oracle)
    for mine, expected in zip(events, oracle, strict=True):
        assert mine.doc["event"]["id"] == expected.time
        assert mine.line.number == expected.records[0].line
        records = mine.doc["auditd"]["records"]
        assert [record["type"] for record in records] == [record.type for record in expected.records]
        for record, expected_record in zip(records, expected.records, strict=True):
            raw = [(name, value.strip('"')) for name, value, _ in expected_record.fields]
            assert _raw_fields(record) == raw


def test_interpretations_agree_with_auparse() -> None:
    """Test 2 prints each field with auparse's interpretation; records rebuilt from it are read back here."""
    resolved_elsewhere = {"uid", "gid", "euid", "suid", "fsuid", "egid", "sgid", "fsgid", "auid", "a0", "a1"}
    resolved_elsewhere |= {"a2", "a3"}  # user names need the host's passwd; auparse prints args as 0x...
    compared: set[str] = set()
    for event in _oracle(2, interpreted=True):
        for expected in event.records:
            pairs = " ".join(f"{name}={raw}" for name, raw, _ in expected.fields[1:])
            line = f"type={expected.type} msg=audit({event.time}): {pairs}"
            (parsed,), _ = _events(_frame(line))
            record = parsed.doc["auditd"]["records"][0]
            keys = [key for key in record if not key.isupper()]
            for key, (name, _, meaning) in zip(keys, expected.fields, strict=True):
                if key.upper() in record:
                    assert record[key.upper()] == meaning, key
                    compared.add(key.upper())
                elif name not in resolved_elsewhere:
                    assert record[key] == meaning, key
    assert {"ARCH", "SYSCALL", "AUID"} <= compared


# --- counts and grouping -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "events", "records", "rejected"),
    [
        ("test.log", 7, 12, 0),
        ("test2.log", 7, 12, 0),
        ("test3.log", 8, 15, 0),  # 7 interleaved SYSCALL+PROCTITLE pairs and one ADD_GROUP
        ("test4.log", 2, 13, 0),
    ],
)
def test_counts_per_file(name: str, events: int, records: int, rejected: int) -> None:
    parsed, rejections = _events(_sample(name))
    assert (len(parsed), sum(len(p.doc["auditd"]["records"]) for p in parsed), len(rejections)) == (
        events,
        records,
        rejected,
    )


def test_interleaved_records_are_grouped_by_node_time_and_serial() -> None:
    parsed, _ = _events(_sample("test3.log"))
    ids = [p.doc["event"]["id"] for p in parsed]
    assert ids[:2] == [
        "auditdtest.a1959.org:1451781471.394:194435",
        "auditdtest.a1959.org:1451781471.394:194433",
    ]
    assert len(set(ids)) == 8
    sshd = parsed[0].doc
    assert sshd["host"]["name"] == "auditdtest.a1959.org"
    assert sshd["process"]["title"] == "sshd: burn [priv]"  # hex proctitle decoded
    assert sshd["auditd"]["records"][1]["PROCTITLE"] == "sshd: burn [priv]"
    assert sshd["auditd"]["records"][0]["SYSCALL"] == "select"
    group = parsed[-1].doc
    assert (group["event"]["category"], group["event"]["type"]) == (["iam"], ["group", "creation"])
    assert group["group"]["name"] == "frodo"
    assert group["event"]["outcome"] == "success"


def test_the_bound_on_open_events_closes_the_oldest() -> None:
    """With one open event at a time, every switch of serial in test3.log closes an event (13 partial ones)."""
    parsed, _ = _events(_sample("test3.log"), AuditdAdapter(max_open_events=1))
    assert len(parsed) == 13
    assert sum(len(p.doc["auditd"]["records"]) for p in parsed) == 15
    ids = [p.doc["event"]["id"] for p in parsed]
    assert ids.count("auditdtest.a1959.org:1451781471.394:194435") == 2  # two partial events, one id


def test_a_batch_boundary_splits_an_event_into_partial_events_with_one_id() -> None:
    lines = _sample("test.log")
    first, _ = _events(lines[:2])
    rest, _ = _events(lines[2:])
    assert first[0].doc["event"]["id"] == rest[0].doc["event"]["id"] == "1170021493.977:293"
    assert [len(first[0].doc["auditd"]["records"]), len(rest[0].doc["auditd"]["records"])] == [2, 2]


def test_eoe_closes_an_event_and_is_not_a_record() -> None:
    lines = _frame(HEX_EXECVE + HEX_EXECVE.splitlines()[0])  # the same SYSCALL again after the EOE
    parsed, rejections = _events(lines)
    assert ([len(p.doc["auditd"]["records"]) for p in parsed], rejections) == ([5, 1], [])
    assert "EOE" not in parsed[0].doc["event"]["original"]
    assert parsed[0].doc["event"]["id"] == parsed[1].doc["event"]["id"] == "1700000000.123:4242"


def test_same_event_normalised_twice_has_the_same_id() -> None:
    lines = _sample("test4.log")
    once, _ = _events(lines)
    again, _ = _events(lines)
    assert [p.doc["event"]["id"] for p in once] == [p.doc["event"]["id"] for p in again]
    assert once[0].doc["event"]["id"] == "1655465398.534:25618"
    single = AuditdAdapter().normalise(lines[0])
    assert (
        single[0]["event"]["id"]
        == AuditdAdapter().normalise(lines[0])[0]["event"]["id"]
        == "1655465398.534:25618"
    )


# --- ECS fields --------------------------------------------------------------------------------------------


def test_execve_event_is_a_process_start_with_its_records() -> None:
    """Acceptance: executable, arguments, uid/auid and cwd of an EXECVE event, with every record kept."""
    (event, _), _ = _events(_sample("test4.log"))
    doc = event.doc
    assert (doc["event"]["category"], doc["event"]["type"], doc["event"]["outcome"]) == (
        ["process"],
        ["start"],
        "success",
    )
    process = doc["process"]
    assert process["executable"] == "/bin/sh4"
    assert process["args"][:4] == ["/bin/sh", "-efu", "/usr/bin/ld", "-plugin"]
    assert process["args_count"] == 48
    assert process["args"][-1] == "/usr/lib64/gcc/aarch64-alt-linux/8/../../../../lib64/crtn.o"
    assert process["command_line"] == " ".join(process["args"])
    assert (process["pid"], process["parent"]["pid"]) == (105183, 105182)
    assert process["working_directory"] == "/usr/src/RPM/BUILD/zlib-1.2.11-alt1"
    assert (doc["user"]["id"], doc["user"]["audit"]["id"]) == ("583", "573")
    assert doc["@timestamp"] == "2022-06-17T11:29:58.534000Z"
    records = doc["auditd"]["records"]
    assert [r["type"] for r in records] == ["SYSCALL", "EXECVE", "CWD", "PATH", "PATH", "PATH", "PROCTITLE"]
    assert records[1]["a2"] == "/usr/bin/ld"  # flat and raw, as SigmaHQ's auditd rules select
    assert records[0]["SYSCALL"] == "execve"
    assert process["command_line"].startswith(records[-1]["PROCTITLE"])  # the kernel cuts proctitle at 128
    assert len(doc["event"]["original"].splitlines()) == 7


def test_hex_encoded_arguments_cwd_and_proctitle_are_decoded() -> None:
    (event,), _ = _events(_frame(HEX_EXECVE))
    doc = event.doc
    assert doc["process"]["args"] == ["bash", "-c", "echo 'hi mom'"]
    assert doc["process"]["command_line"] == "bash -c echo 'hi mom'"
    assert doc["process"]["working_directory"] == "/home/alice/my docs"
    assert doc["process"]["title"] == "bash -c echo 'hi mom'"
    assert (doc["user"]["id"], doc["user"]["effective"]["id"], doc["user"]["audit"]["id"]) == (
        "1001",
        "0",
        "1000",
    )
    execve = doc["auditd"]["records"][1]
    assert (execve["a2"], execve["A2"]) == ("6563686F20276869206D6F6D27", "echo 'hi mom'")


def test_long_arguments_split_in_pieces_are_joined() -> None:
    """The kernel cuts long arguments in pieces, hex ones possibly inside a UTF-8 character (here the é)."""
    line = (
        'type=EXECVE msg=audit(1700000000.200:4243): argc=3 a0="printf" a1_len=12 a1[0]=68C3 a1[1]=A96C6C6F20'
        ' a2_len=6 a2[0]="wor" a2[1]="ld"'
    )
    (event,), _ = _events(_frame(line))
    assert event.doc["process"]["args"] == ["printf", "héllo ", "world"]
    record = event.doc["auditd"]["records"][0]
    assert (record["a1[0]"], record["A1"], record["A2"]) == ("68C3", "héllo ", "world")
    assert "A1[0]" not in record


def test_syscall_interpretations() -> None:
    (avc, *_), _ = _events(_sample("test.log"))
    syscall = avc.doc["auditd"]["records"][1]
    assert (syscall["ARCH"], syscall["SYSCALL"], syscall["EXIT"]) == (
        "x86_64",
        "open",
        "EACCES(Permission denied)",
    )
    assert syscall["AUID"] == "unset"
    assert avc.doc["event"]["outcome"] == "failure"
    assert "audit" not in avc.doc["user"]  # an unset auid is no user
    assert avc.doc["auditd"]["records"][0]["seperms"] == "read,write"


def test_user_space_records_are_authentication_and_session_events() -> None:
    parsed, _ = _events(_sample("test.log"))
    by_action = {p.doc["event"]["action"]: p.doc for p in parsed}
    start = by_action["user_start"]
    assert (start["event"]["category"], start["event"]["type"], start["event"]["outcome"]) == (
        ["session"],
        ["start"],
        "success",
    )
    assert (start["user"]["name"], start["process"]["executable"]) == ("root", "/usr/sbin/crond")
    assert by_action["user_acct"]["event"]["category"] == ["authentication"]
    failed = AuditdAdapter().normalise(
        _frame(
            "type=USER_LOGIN msg=audit(1700000100.500:5000): pid=2222 uid=0 auid=4294967295 ses=4294967295"
            ' msg=\'op=login acct=28696E76616C6964207573657229 exe="/usr/sbin/sshd" hostname=? addr=203.0.113.9'
            " terminal=sshd res=failed'"
        )[0]
    )[0]
    assert (failed["event"]["category"], failed["event"]["outcome"]) == (
        ["authentication", "session"],
        "failure",
    )
    assert failed["user"]["name"] == "(invalid user)"  # sshd's hex-encoded placeholder for unknown accounts
    assert failed["source"] == {"address": "203.0.113.9", "ip": "203.0.113.9"}


def test_lines_that_are_not_audit_records_are_rejected_alone() -> None:
    lines = _frame(
        "garbage from a broken pipe\n"
        + "type=SYSCALL arch=c000003e syscall=59\n"
        + "\n"
        + Path(shared_file(f"{SAMPLES}/test.log")).read_text().splitlines()[4]
    )
    parsed, rejections = _events(lines)
    assert [(r.line.number, r.reason) for r in rejections] == [
        (1, "not an audit record: no type= field at the start of the line"),
        (2, "not an audit record: no msg=audit(seconds.millis:serial) header after type="),
        (3, "empty line"),
    ]
    assert [p.doc["event"]["action"] for p in parsed] == ["user_acct"]


def test_registered_under_its_name() -> None:
    adapter = adapter_for("auditd")
    assert isinstance(adapter, AuditdAdapter)
    assert (adapter.dataset, adapter.framing, adapter.max_open_events) == ("auditd.log", "text", 256)
