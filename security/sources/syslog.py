"""Syslog lines (RFC 3164 and RFC 5424, with or without ``<PRI>``) as ECS events.

Headers understood: RFC 5424 (``<PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG``); and the BSD form of
RFC 3164 and of ``/var/log`` files (``[<PRI>]TIMESTAMP HOST TAG: MSG``), where TIMESTAMP is ``Mmm dd hh:mm:ss``,
``YYYY Mmm dd hh:mm:ss`` or an ISO 8601 time (rsyslog's high-precision format), and TAG is ``app``,
``app[pid]`` or the old PAM ``app(pam_unix)[pid]``. The message after the tag is then read by
``syslog_messages`` (sshd, sudo, su, PAM) into authentication, session and process fields.

Year of RFC 3164 times: they have none. The adapter takes a reference time (``reference_time``, default: the
clock when the line is read) and picks the year that puts the event closest to it and not more than a day
after it, so December lines read in January land in the previous year, and a sender whose clock is a few hours
ahead is not pushed a year back. Times without an offset are read in ``timezone`` (default UTC).

Lines that match no header are still messages someone logged (a continuation line, a bare program output): they
are kept as generic events with ``message`` set to the whole text and no ``@timestamp`` (the intake's ingest
time is the only time known for them). Only empty lines are rejected.

No ``event.id``: syslog has no identity of its own, and two identical lines are two events, so the intake
derives the id from the file offset or the idempotency key and line number (DESIGN.md section 4).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from control_plane.core.clock import rfc3339, utcnow
from security.ecs import put
from security.sources import syslog_messages
from security.sources.base import Adapter, Line, Rejected

FACILITIES = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp",
    "ntp", "security", "console", "solaris-cron", "local0", "local1", "local2", "local3", "local4", "local5",
    "local6", "local7",
)  # fmt: skip
"""RFC 5424 facility codes 0-23, named as ECS ``log.syslog.facility.name`` expects."""
SEVERITIES = ("Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational", "Debug")

_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {month: number for number, month in enumerate(_MONTH_NAMES, start=1)}
_PRI = re.compile(r"<(?P<pri>\d{1,3})>")
_RFC5424 = re.compile(
    r"(?P<version>[1-9]\d{0,2}) (?P<timestamp>\S+) (?P<hostname>\S+) (?P<appname>\S+) (?P<procid>\S+)"
    r" (?P<msgid>\S+) (?P<rest>.*)",
    re.S,
)
_SD_ELEMENT = re.compile(r"\[(?P<id>[^\s\]=\"]+)(?P<params>(?: [^\s=\]\"]+=\"(?:[^\"\\]|\\.)*\")*)\]")
_SD_PARAM = re.compile(r"(?P<name>[^\s=\]\"]+)=\"(?P<value>(?:[^\"\\]|\\.)*)\"")
_BSD = re.compile(
    r"(?:(?P<iso>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?)"
    r"|(?:(?P<year>\d{4}) )?(?P<month>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<time>\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d{1,6}))?)"
    r"\s+(?P<rest>.*)",
    re.S,
)
_TAG = re.compile(
    r"(?P<app>[^\s\[\]:()]+)(?:\((?P<pam>[^)\s]*)\))?(?:\[(?P<pid>[^\]\s]*)\])?:(?: |$)(?P<message>.*)", re.S
)


class SyslogAdapter(Adapter):
    """One ECS event per syslog line; the message read for sshd, sudo, su and PAM."""

    name = "syslog"
    dataset = "syslog.messages"
    framing = "text"

    def __init__(self, *, reference_time: datetime | None = None, timezone: tzinfo = UTC) -> None:
        if reference_time is not None and reference_time.tzinfo is None:
            raise ValueError("reference_time must be timezone-aware")
        self.reference_time = reference_time
        self.timezone = timezone

    def normalise(self, line: Line) -> list[dict[str, Any]]:
        text = line.text.rstrip("\r\n")
        if not text.strip():
            raise Rejected("empty line")
        doc: dict[str, Any] = {}
        put(doc, "event.kind", "event")
        put(doc, "event.module", "syslog")
        put(doc, "event.original", text)
        pri = _PRI.match(text)
        if pri is not None and int(pri["pri"]) >= len(FACILITIES) * 8:
            pri = None  # not a priority: the line is read as if it had none
        rest = text if pri is None else text[pri.end() :]
        if pri is not None:
            _priority(doc, int(pri["pri"]))
            rfc5424 = _RFC5424.match(rest)
            if rfc5424 is not None and self._rfc5424(doc, rfc5424):
                return [doc]
        bsd = _BSD.match(rest)
        if bsd is None or (bsd["iso"] is None and bsd["month"] not in _MONTHS):
            put(doc, "message", rest.strip())
            return [doc]
        stamp = self._bsd_time(bsd)
        put(doc, "@timestamp", rfc3339(stamp) if stamp is not None else None)
        self._bsd_body(doc, bsd["rest"])
        return [doc]

    def _rfc5424(self, doc: dict[str, Any], match: re.Match[str]) -> bool:
        """Fill an RFC 5424 header; False (nothing written) when its timestamp or SD is not valid."""
        stamp = None
        if match["timestamp"] != "-":
            try:
                stamp = self._aware(datetime.fromisoformat(match["timestamp"]))
            except ValueError:
                return False
        structured, message = _structured_data(match["rest"])
        if message is None:
            return False
        put(doc, "@timestamp", rfc3339(stamp) if stamp is not None else None)
        put(doc, "log.syslog.version", match["version"])
        header = {
            name: None if match[name] == "-" else match[name]
            for name in ("hostname", "appname", "procid", "msgid")
        }
        for name, value in header.items():
            put(doc, f"log.syslog.{name}", value)
        put(doc, "log.syslog.structured_data", structured)
        put(doc, "host.hostname", header["hostname"])
        self._message(doc, header["appname"], None, header["procid"], message)
        return True

    def _bsd_body(self, doc: dict[str, Any], rest: str) -> None:
        """``HOST TAG: MSG`` after the time; the host is absent when the first word is already the tag."""
        first, _, after = rest.partition(" ")
        hostname, tagged = (None, rest) if first.endswith(":") else (first, after)
        put(doc, "log.syslog.hostname", hostname)
        put(doc, "host.hostname", hostname)
        tag = _TAG.match(tagged)
        if tag is None:
            put(doc, "message", tagged.strip())
            return
        put(doc, "log.syslog.appname", tag["app"])
        put(doc, "log.syslog.procid", tag["pid"])
        self._message(doc, tag["app"], tag["pam"], tag["pid"], tag["message"])

    def _message(
        self, doc: dict[str, Any], app: str | None, pam: str | None, pid: str | None, text: str
    ) -> None:
        text = text.removeprefix("\ufeff").strip()
        put(doc, "message", text)
        put(doc, "process.name", app)
        put(doc, "process.pid", int(pid) if pid and pid.isdigit() else None)
        if app is None:
            return
        for path, value in (syslog_messages.interpret(app, pam, text) or {}).items():
            put(doc, path, value)

    def _bsd_time(self, match: re.Match[str]) -> datetime | None:
        """The header's time, or None for an impossible date (30 February): the rest of the line is still read."""
        month, day = _MONTHS.get(match["month"] or "", 0), int(match["day"] or 0)
        try:
            if match["iso"] is not None:
                return self._aware(datetime.fromisoformat(match["iso"]))
            hour, minute, second = (int(part) for part in match["time"].split(":"))
            micros = int((match["fraction"] or "").ljust(6, "0"))
            if match["year"] is not None:
                return datetime(
                    int(match["year"]), month, day, hour, minute, second, micros, tzinfo=self.timezone
                )
            reference = self.reference_time or utcnow()  # the one clock read: RFC 3164 leaves out the year
            return infer_year(month, day, hour, minute, second, micros, tz=self.timezone, reference=reference)
        except ValueError:
            return None

    def _aware(self, moment: datetime) -> datetime:
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=self.timezone)


def infer_year(
    month: int, day: int, hour: int, minute: int, second: int, micros: int, *, tz: tzinfo, reference: datetime
) -> datetime:
    """The latest date with this month/day/time that is at most one day after ``reference`` (see module doc).

    Years from four before the reference's to the one after are tried, so that 29 February still finds a leap
    year; ``ValueError`` when the date exists in none (30 February).
    """
    latest = reference + timedelta(days=1)
    year = reference.astimezone(tz).year
    candidates = []
    for candidate_year in range(year - 4, year + 2):
        try:
            moment = datetime(candidate_year, month, day, hour, minute, second, micros, tzinfo=tz)
        except ValueError:
            continue
        if moment <= latest:
            candidates.append(moment)
    if not candidates:
        raise ValueError(f"no year has {month:02d}-{day:02d}")
    return max(candidates)


def _priority(doc: dict[str, Any], priority: int) -> None:
    facility, severity = divmod(priority, 8)
    put(doc, "log.syslog.priority", priority)
    put(doc, "log.syslog.facility.code", facility)
    put(doc, "log.syslog.facility.name", FACILITIES[facility])
    put(doc, "log.syslog.severity.code", severity)
    put(doc, "log.syslog.severity.name", SEVERITIES[severity])


def _structured_data(rest: str) -> tuple[dict[str, dict[str, str]], str | None]:
    """RFC 5424 STRUCTURED-DATA and the MSG after it; MSG is None when the SD is malformed."""
    if rest == "-" or rest.startswith("- "):
        return {}, rest[2:]
    elements: dict[str, dict[str, str]] = {}
    position = 0
    while (element := _SD_ELEMENT.match(rest, position)) is not None:
        params = {
            m["name"]: re.sub(r"\\(.)", r"\1", m["value"]) for m in _SD_PARAM.finditer(element["params"])
        }
        elements[element["id"]] = params
        position = element.end()
    if position == 0 or rest[position : position + 1] not in ("", " "):
        return {}, None
    return elements, rest[position + 1 :]
