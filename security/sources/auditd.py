"""Linux audit (``audit.log``) records, grouped into one ECS event per audit event.

The kernel and user-space tools write one event as several records (SYSCALL, EXECVE, CWD, PATH, PROCTITLE...)
that share ``msg=audit(seconds.millis:serial)`` and, with ``name_format`` set, a ``node=`` prefix. Records of
different events interleave (``test3.log`` upstream), so ``parse`` keeps several events open at once and closes
one:

- at its ``EOE`` record (end of event; the EOE line itself is a delimiter and is dropped);
- when a new event would make more than ``max_open_events`` open at once: the oldest is closed, so memory stays
  bounded whatever the input;
- at the end of the ``parse`` call: the intake's batch is the unit, and nothing is carried to the next batch.

So an event whose records are split across two batches (or whose oldest records were closed by the bound)
yields two partial events with the same ``event.id``. An idempotent store then keeps only the one written last;
the collector avoids this by cutting batches after an ``EOE`` or a pause in the file, not in the middle of an
event. Records without EOE (user-space events, most kernels' single-record events) close with the batch.

Each event keeps every record, flat and raw, under ``auditd.records[]`` (see ``auditd_fields``), because
SigmaHQ's auditd rules select on the fields of one record (``type: EXECVE`` and ``a0: chmod``). ECS fields come
on top: EXECVE events are process starts; user-space PAM records (USER_LOGIN, USER_AUTH, CRED_*...) are
authentication or session events with ``event.outcome`` from ``res=``; account records are ``iam`` events.
``event.id`` is the audit identity (``node:seconds.millis:serial``), so re-ingesting a file is idempotent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from security.ecs import ip as ecs_ip
from security.ecs import put
from security.sources.auditd_fields import UNSET_ID, AuditRecord, parse_record
from security.sources.base import Adapter, Line, Outcome, Parsed, Rejected, Rejection

DEFAULT_MAX_OPEN_EVENTS = 256
"""auditd writes an event's records within microseconds; hundreds open at once means they never end."""

_CATEGORIES: dict[str, tuple[list[str], list[str]]] = {
    "EXECVE": (["process"], ["start"]),
    "USER_CMD": (["process"], ["start"]),
    "USER_LOGIN": (["authentication", "session"], ["start"]),
    "USER_LOGOUT": (["session"], ["end"]),
    "LOGIN": (["authentication"], ["start"]),
    "USER_AUTH": (["authentication"], ["info"]),
    "USER_ACCT": (["authentication"], ["info"]),
    "USER_ERR": (["authentication"], ["info"]),
    "CRED_ACQ": (["authentication"], ["info"]),
    "CRED_REFR": (["authentication"], ["info"]),
    "CRED_DISP": (["authentication"], ["info"]),
    "USER_START": (["session"], ["start"]),
    "USER_END": (["session"], ["end"]),
    "ADD_USER": (["iam"], ["user", "creation"]),
    "DEL_USER": (["iam"], ["user", "deletion"]),
    "USER_MGMT": (["iam"], ["user", "change"]),
    "USER_CHAUTHTOK": (["iam"], ["user", "change"]),
    "ADD_GROUP": (["iam"], ["group", "creation"]),
    "DEL_GROUP": (["iam"], ["group", "deletion"]),
    "GRP_MGMT": (["iam"], ["group", "change"]),
}
_GROUP_RECORDS = frozenset({"ADD_GROUP", "DEL_GROUP", "GRP_MGMT"})
"""Account records whose ``acct`` names a group rather than a user."""
_OUTCOMES = {
    "yes": "success",
    "success": "success",
    "1": "success",
    "no": "failure",
    "failed": "failure",
    "0": "failure",
}


@dataclass
class _OpenEvent:
    lines: list[Line] = field(default_factory=list)
    records: list[AuditRecord] = field(default_factory=list)

    def parsed(self) -> Parsed:
        return Parsed(self.lines[0], event_document(self.lines, self.records))


_EVENT_ID = re.compile(rb"msg=audit\(\d+\.\d+:\d+\)")
"""The (time:serial) of a record, as bytes: enough to tell where one event's records end."""


class AuditdAdapter(Adapter):
    """``audit.log`` lines in; one ECS event per (node, timestamp, serial) out."""

    name = "auditd"
    dataset = "auditd.log"
    framing = "text"

    def __init__(self, *, max_open_events: int = DEFAULT_MAX_OPEN_EVENTS) -> None:
        if max_open_events < 1:
            raise ValueError("max_open_events must be at least 1")
        self.max_open_events = max_open_events

    def parse(self, lines: Iterable[Line]) -> Iterator[Outcome]:
        """Group records into events; rejections come at once, events as they close (see the module doc)."""
        open_events: dict[tuple[str, str, int], _OpenEvent] = {}  # insertion order: oldest first
        for line in lines:
            try:
                record = parse_record(line.text)
            except Rejected as exc:
                yield Rejection(line, str(exc))
                continue
            key = record.event_key
            if record.type == "EOE":
                closed = open_events.pop(key, None)
                if closed is not None:
                    yield closed.parsed()
                continue
            event = open_events.get(key)
            if event is None:
                if len(open_events) >= self.max_open_events:
                    yield open_events.pop(next(iter(open_events))).parsed()
                event = open_events[key] = _OpenEvent()
            event.lines.append(line)
            event.records.append(record)
        for event in open_events.values():
            yield event.parsed()

    @classmethod
    def batch_end(cls, data: bytes) -> int:
        """End a batch after an ``EOE`` record, or before the last event's first record: auditd writes an
        event's records together, so only the last event of a stream slice can be incomplete."""
        end = data.rfind(b"\n") + 1
        if end == 0:
            return 0
        lines = data[:end].splitlines(keepends=True)
        if b"type=EOE " in lines[-1]:
            return end
        last = _EVENT_ID.search(lines[-1])
        cut = end
        for line in reversed(lines):
            found = _EVENT_ID.search(line)
            if last is None or found is None or found.group(0) != last.group(0):
                break
            cut -= len(line)
        return cut

    def normalise(self, line: Line) -> list[dict[str, Any]]:
        """One record as an event of its own, for callers that have a single line; ``parse`` groups."""
        record = parse_record(line.text)
        return [] if record.type == "EOE" else [event_document([line], [record])]


def event_document(lines: list[Line], records: list[AuditRecord]) -> dict[str, Any]:
    """The ECS document of one audit event from its records, in arrival order."""
    first = records[0]
    by_type: dict[str, AuditRecord] = {}
    for record in records:
        by_type.setdefault(record.type, record)
    primary = by_type.get("EXECVE", first)
    doc: dict[str, Any] = {}
    put(doc, "@timestamp", first.rfc3339())
    put(doc, "event.id", first.event_id)
    put(doc, "event.kind", "event")
    put(doc, "event.module", "auditd")
    put(doc, "event.action", primary.type.lower())
    categories, types = _CATEGORIES.get(primary.type, ([], []))
    put(doc, "event.category", categories)
    put(doc, "event.type", types)
    put(doc, "event.outcome", _outcome(records))
    put(doc, "event.original", "\n".join(line.text.rstrip("\r\n") for line in lines))
    put(doc, "host.name", first.node)
    if "SYSCALL" in by_type:
        _syscall(doc, by_type["SYSCALL"])
    elif primary.type in _CATEGORIES:
        _user_space(doc, primary)
    if "EXECVE" in by_type:
        args = by_type["EXECVE"].args()
        put(doc, "process.args", args)
        put(doc, "process.args_count", len(args))
        put(doc, "process.command_line", " ".join(args))
    if "CWD" in by_type:
        put(doc, "process.working_directory", by_type["CWD"].text("cwd"))
    if "PROCTITLE" in by_type:
        put(doc, "process.title", by_type["PROCTITLE"].text("proctitle"))
    put(doc, "auditd.sequence", first.serial)
    put(doc, "auditd.records", [record.as_dict() for record in records])
    return doc


def _outcome(records: list[AuditRecord]) -> str | None:
    """The syscall's ``success=`` or the user-space ``res=``, whichever record carries one first."""
    for record in records:
        for name in ("success", "res"):
            outcome = _OUTCOMES.get(record.fields.get(name, ""))
            if outcome is not None:
                return outcome
    return None


def _syscall(doc: dict[str, Any], record: AuditRecord) -> None:
    """The process that made the call and the ids it ran with."""
    put(doc, "process.pid", record.number("pid"))
    put(doc, "process.parent.pid", record.number("ppid"))
    put(doc, "process.executable", record.text("exe"))
    put(doc, "process.name", record.text("comm"))
    put(doc, "user.id", record.fields.get("uid"))
    put(doc, "user.effective.id", record.fields.get("euid"))
    put(doc, "user.group.id", record.fields.get("gid"))
    _audit_id(doc, record)


def _user_space(doc: dict[str, Any], record: AuditRecord) -> None:
    """A PAM or account-management record: the account it is about, the program and the remote address."""
    put(doc, "process.pid", record.number("pid"))
    put(doc, "process.executable", record.text("exe"))
    account = record.text("acct")
    if account not in (None, "?", "(unknown)"):
        if record.type in _GROUP_RECORDS:
            put(doc, "group.name", account)
        elif doc["event"].get("category") == ["iam"]:
            put(doc, "user.target.name", account)
        else:
            put(doc, "user.name", account)
    put(doc, "user.id", record.fields.get("id"))
    _audit_id(doc, record)
    address = record.fields.get("addr")
    if address not in (None, "?"):
        put(doc, "source.address", address)
        put(doc, "source.ip", ecs_ip(address))


def _audit_id(doc: dict[str, Any], record: AuditRecord) -> None:
    """The login uid (``auid``): who logged in, whatever they became since; absent when never set."""
    auid = record.fields.get("auid")
    if auid not in (None, UNSET_ID, "-1"):
        put(doc, "user.audit.id", auid)
