"""The ingest benchmark's corpus: raw telemetry in each source's native format, built from the shared samples.

Every sample line (or auditd event) becomes a *template*: it is normalised once by its own adapter, and the
values the adapter reads from it (addresses, users, command lines, paths, ports, times, ids) are located in its
raw text. Rendering an event fills those places with new values, so each event differs where real traffic
differs while keeping the exact shape of a line some sensor really wrote:

- addresses: any IPv4 address the adapter mapped (``source.ip``, ``destination.ip``, ``host.ip``, ...) becomes
  a random address (60 % in 10.0.0.0/8, 40 % public), the same one wherever the template repeats it (an IP in
  Wazuh's ``full_log`` and in its ``data.srcip``);
- users, paths and command lines: a new account name (``system:serviceaccount:ns:`` prefixes kept), the same
  directory with a new file name (extension kept), the same program with new arguments; hex-encoded copies in
  auditd records are re-encoded;
- source ports of 1024 and above, UUIDs, Suricata flow ids, Kubernetes audit ids, auditd serials and Wazuh
  alert ids get new values;
- every time in the text (RFC 3339 and its variants, syslog's ``Mmm dd hh:mm:ss``, ``audit(s.ms:serial)``,
  Falco's epoch nanoseconds) moves with the event, keeping its offset from the event's own time and its format.

Events of one source come in time order, spread evenly (with jitter) over the window they are generated for.

Sources and their samples (``../shared/data``, see PROVENANCE.md): Suricata EVE (Stamus Networks, DCSO fever);
Falco alerts (falco's regression output, falco-website examples); Kubernetes audit (falco's k8s_audit traces,
Panther's EKS test events without Panther's own ``p_*`` fields); auditd (audit-userspace's auparse test logs, the
single-record lines of Wazuh's auditd logtest suite); syslog (Wazuh's logtest suites for sshd, PAM, sudo, su,
syslog, systemd, named and postfix; half of them rendered with rsyslog's high-precision ISO header instead of
``Mmm dd hh:mm:ss``); Wazuh (the integratord alerts, the indexer's alert, and alerts for the sshd/PAM/sudo/su
suite lines built with the rule id, level, description and groups of Wazuh's own rule files). Two additions
from the project's demo generator (``security.demo``), whose formats follow the samples: Keycloak events (the
shared data has no Keycloak sample) and auditd execve events of processing jobs (the samples hold one EXECVE).
The ``ecs`` source is left out: its input is another tool's normalised output, not a sensor's.
"""

from __future__ import annotations

import itertools
import random
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from control_plane.core.clock import parse_rfc3339
from security.intake.framing import FramedLine, frame
from security.sources.base import Line, Parsed
from security.sources.registry import adapter_for

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MIX_WEIGHTS = {
    "suricata": 40.0,
    "k8s_audit": 25.0,
    "auditd": 12.0,
    "syslog": 8.0,
    "keycloak": 7.0,
    "falco": 4.0,
    "wazuh": 4.0,
}
"""Events per source in the mix, in percent: close to the demo's background traffic (``security.demo.traffic``),
with Wazuh added."""
SOURCES = tuple(MIX_WEIGHTS)

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBERS = {name: number for number, name in enumerate(_MONTHS, start=1)}
_ISO = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})(?P<sep>[T ])(?P<clock>\d{2}:\d{2}:\d{2})(?:(?P<dot>[.,])(?P<frac>\d{1,9}))?"
    r"(?P<zone>Z|[+-]\d{2}:?\d{2})?(?![\d:])"
)
_BSD = re.compile(
    r"(?<![\w:])(?P<month>[A-Z][a-z]{2}) (?P<day>[ \d]\d) (?P<clock>\d{2}:\d{2}:\d{2})(?![\d.:])"
)
_AUDIT = re.compile(r"audit\((?P<seconds>\d{9,10})\.(?P<millis>\d{3}):(?P<serial>\d+)\)")
_EPOCH_NS = re.compile(r"(?<![\d.])1[4-8]\d{17}(?![\d.])")
_CLOCK_NS = re.compile(r"(?<![\d:T ])(?P<clock>\d{2}:\d{2}:\d{2})\.(?P<frac>\d{9})(?=: )")
_UUID = re.compile(
    r"(?<![\w-])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-])"
)
_FIELD_IDS = {
    "flow_id": re.compile(r'"flow_id": ?(?P<value>\d+)'),
    "audit_id": re.compile(r'"auditID": ?"(?P<value>[^"]+)"'),
    "wazuh_id": re.compile(r'"id": ?"(?P<value>\d{9,10}\.\d+)"'),
}
_IPV4 = re.compile(r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}")
_SAFE = re.compile(r"[\w./:@=\-]+(?: [\w./:@=\-]+)*")
"""Values that can be substituted: no quotes, backslashes or control characters (JSON and text stay valid)."""

_IP_FIELDS = ("source.ip", "destination.ip", "host.ip", "related.ip", "client.ip", "server.ip")
_USER_FIELDS = ("user.name", "user.effective.name", "user.target.name")
_PATH_FIELDS = ("file.path", "process.executable", "process.working_directory", "url.path")
_CMD_FIELDS = ("process.command_line", "process.title")
_PORT_FIELDS = ("source.port",)

_WORDS = (
    "sentinel", "orbit", "granule", "swath", "tile", "ingest", "archive", "quicklook", "manifest", "calib",
    "geoloc", "mosaic", "radiance", "cloudmask", "ortho", "aux", "ephemeris", "attitude", "telemetry", "l0",
    "l1b", "l1c", "l2a", "dem", "catalog", "index", "report", "export", "backup", "session",
)  # fmt: skip
_GIVEN = (
    "anna", "ben", "carla", "david", "eva", "felix", "greta", "hugo", "ines", "jonas", "karin", "lukas", "marta",
    "nils", "olga", "paul", "rita", "sven", "tina", "uwe", "vera", "willem", "xenia", "yann", "zoe", "svc",
    "ops", "ci", "backup", "deploy",
)  # fmt: skip
_FLAGS = ("-v", "-q", "-f", "--config", "--input", "--output", "-n", "--check", "--dry-run", "-c")
_EXTENSIONS = (".log", ".json", ".xml", ".tif", ".nc", ".sh", ".py", ".conf", ".safe", ".zip")


# -- values ------------------------------------------------------------------------------------------------


class Values:
    """New values for one event; what the template repeats gets the same value (one per original)."""

    def __init__(self, rng: random.Random, serials: Iterator[int]) -> None:
        self.rng = rng
        self.serials = serials

    def ip(self, _original: str) -> str:
        bits = self.rng.getrandbits(32)
        if bits & 0xFF < 154:  # 60 %
            return f"10.{bits >> 24 & 0xFF}.{bits >> 16 & 0xFF}.{bits >> 8 & 0xFF}"
        first = (185, 45, 91, 203, 198, 151, 77, 37, 62, 80, 93, 176, 188, 212, 213, 217)[bits & 0xF]
        return f"{first}.{bits >> 24 & 0xFF}.{bits >> 16 & 0xFF}.{bits >> 8 & 0xFF}"

    def user(self, original: str) -> str:
        prefix = original.rpartition(":")[0] + ":" if original.startswith("system:") else ""
        rng = self.rng
        return f"{prefix}{rng.choice(_GIVEN)}.{chr(97 + rng.randrange(26))}{rng.randrange(100_000)}"

    def path(self, original: str) -> str:
        directory, _, name = original.rstrip("/").rpartition("/")
        extension = name[name.rfind(".") :] if "." in name[1:] else ""
        return f"{directory}/{self.rng.choice(_WORDS)}-{self.rng.getrandbits(28):07x}{extension}"

    def command(self, original: str) -> str:
        program = original.split(" ", 1)[0]
        rng = self.rng
        target = f"/data/{rng.choice(_WORDS)}/{rng.getrandbits(28):07x}{rng.choice(_EXTENSIONS)}"
        return f"{program} {rng.choice(_FLAGS)} {target}"

    def port(self, _original: str) -> str:
        return str(self.rng.randrange(1024, 65536))

    def uuid(self, _original: str) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def flow_id(self, _original: str) -> str:
        return str(self.rng.getrandbits(51))

    def serial(self, _original: str) -> str:
        return str(next(self.serials))


@dataclass(frozen=True)
class Slot:
    """A place in a template's text to fill: ``kind`` says how, ``original`` is the value it had."""

    kind: str
    original: str
    encoding: str = "plain"
    """``plain``, ``hex`` (auditd's hex-encoded strings) or ``hexnul`` (a proctitle: arguments split by NUL)."""
    offset_us: int = 0
    """For times: how far from the event's own time the original was."""
    style: tuple[Any, ...] = ()
    """For times: how to write one (see ``_render_time``)."""


@dataclass(frozen=True)
class Template:
    source: str
    pieces: tuple[str | Slot, ...]
    weight: float = 1.0

    def render(self, moment_us: int, values: Values) -> str:
        """The template's text for an event at ``moment_us`` (µs since the epoch), with new values."""
        chosen: dict[tuple[str, str], str] = {}
        out = []
        for piece in self.pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            if piece.kind == "time":
                out.append(_render_time(moment_us + piece.offset_us, piece.style))
                continue
            key = (piece.kind, piece.original)
            value = chosen.get(key)
            if value is None:
                value = chosen[key] = getattr(values, piece.kind)(piece.original)
            if piece.encoding == "hex":
                value = value.encode().hex().upper()
            elif piece.encoding == "hexnul":
                value = value.replace(" ", "\0").encode().hex().upper()
            out.append(value)
        return "".join(out)


# -- times -------------------------------------------------------------------------------------------------


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _render_time(us: int, style: tuple[Any, ...]) -> str:
    kind = style[0]
    if kind == "iso":
        _, sep, dot, digits, zone, zone_minutes = style
        local = _EPOCH + timedelta(microseconds=us + zone_minutes * 60_000_000)
        text = f"{local:%Y-%m-%d}{sep}{local:%H:%M:%S}"
        if digits:
            text += dot + f"{local.microsecond:06d}000"[:digits].ljust(digits, "0")
        return text + zone
    moment = _EPOCH + timedelta(microseconds=us)
    if kind == "bsd":
        return f"{_MONTHS[moment.month - 1]} {moment.day:{style[1]}} {moment:%H:%M:%S}"
    if kind == "audit":
        return f"{us // 1_000_000}.{us // 1000 % 1000:03d}"
    if kind == "epoch_ns":
        return str(us * 1000)
    if kind == "clock_ns":
        return f"{moment:%H:%M:%S}.{moment.microsecond:06d}000"
    raise ValueError(kind)


def _time_slots(text: str, reference: datetime) -> list[tuple[int, int, Slot]]:
    """Every time in ``text`` as ``(start, end, slot)``; offsets are from ``reference`` (the event time)."""
    found: list[tuple[int, int, Slot]] = []
    ref_us = _us(reference)
    for match in _ISO.finditer(text):
        zone = match["zone"] or ""
        minutes = 0
        if zone and zone != "Z":
            sign = -1 if zone[0] == "-" else 1
            digits = zone[1:].replace(":", "")
            minutes = sign * (int(digits[:2]) * 60 + int(digits[2:]))
        fraction = (match["frac"] or "").ljust(6, "0")[:6]
        naive = datetime.fromisoformat(f"{match['date']}T{match['clock']}.{fraction}")
        moment = naive.replace(tzinfo=timezone(timedelta(minutes=minutes)))
        style = ("iso", match["sep"], match["dot"] or ".", len(match["frac"] or ""), zone, minutes)
        found.append(
            (match.start(), match.end(), Slot("time", match[0], offset_us=_us(moment) - ref_us, style=style))
        )
    for match in _BSD.finditer(text):
        if match["month"] not in _MONTH_NUMBERS:
            continue
        hours, minutes, seconds = map(int, match["clock"].split(":"))
        moment = datetime(reference.year, _MONTH_NUMBERS[match["month"]], int(match["day"]), hours, minutes,
                          seconds, tzinfo=UTC)  # fmt: skip
        width = "2d" if match["day"].startswith(" ") else "02d"
        found.append(
            (
                match.start(),
                match.end(),
                Slot("time", match[0], offset_us=_us(moment) - ref_us, style=("bsd", width)),
            )
        )
    for match in _AUDIT.finditer(text):
        us = int(match["seconds"]) * 1_000_000 + int(match["millis"]) * 1000
        start, end = match.span("seconds")[0], match.span("millis")[1]
        found.append((start, end, Slot("time", text[start:end], offset_us=us - ref_us, style=("audit",))))
        found.append((*match.span("serial"), Slot("serial", match["serial"])))
    for match in _EPOCH_NS.finditer(text):
        us = int(match[0]) // 1000
        found.append(
            (match.start(), match.end(), Slot("time", match[0], offset_us=us - ref_us, style=("epoch_ns",)))
        )
    for match in _CLOCK_NS.finditer(text):
        hours, minutes, seconds = map(int, match["clock"].split(":"))
        day = reference.replace(
            hour=hours, minute=minutes, second=seconds, microsecond=int(match["frac"][:6])
        )
        start, end = match.span()
        found.append((start, end, Slot("time", match[0], offset_us=_us(day) - ref_us, style=("clock_ns",))))
    return found


# -- templates -----------------------------------------------------------------------------------------------


def _values(doc: dict[str, Any], path: str) -> list[str]:
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict):
            return []
        node = node.get(part)
    items = node if isinstance(node, list) else [node]
    return [str(item) for item in items if isinstance(item, str | int) and not isinstance(item, bool)]


def _originals(doc: dict[str, Any], source: str) -> list[tuple[str, str]]:
    """``(kind, original value)`` for what this event's adapter read and the template may vary."""
    wanted: list[tuple[str, str]] = []
    for path in _IP_FIELDS:
        wanted += [("ip", value) for value in _values(doc, path) if _IPV4.fullmatch(value)]
    for path in _USER_FIELDS:
        wanted += [
            ("user", value) for value in _values(doc, path) if len(value) >= 2 and value not in ("root",)
        ]
    for path in _PATH_FIELDS:
        wanted += [
            ("path", value) for value in _values(doc, path) if value.startswith("/") and len(value) > 4
        ]
    for path in _CMD_FIELDS:
        wanted += [("command", value) for value in _values(doc, path) if len(value) >= 3]
    if source == "auditd":  # EXECVE arguments are quoted one by one: vary those that are paths
        args = _values(doc, "process.args")
        wanted += [("path", value) for value in args[1:] if value.startswith("/") and len(value) > 4]
    for path in _PORT_FIELDS:
        wanted += [("port", value) for value in _values(doc, path) if int(value) >= 1024]
    return [(kind, value) for kind, value in dict.fromkeys(wanted) if _SAFE.fullmatch(value)]


def _spans(pattern: str, text: str) -> Iterator[tuple[int, int]]:
    for match in re.finditer(rf"(?<![\w.\-/]){pattern}(?![\w\-/]|\.\d)", text):
        yield match.span()


def build_template(source: str, text: str, doc: dict[str, Any], weight: float = 1.0) -> Template | None:
    """``text`` (what the sensor wrote) cut where the values its document ``doc`` holds appear."""
    reference = parse_rfc3339(doc["@timestamp"])
    found = _time_slots(text, reference)
    for kind, original in _originals(doc, source):
        encodings = [("plain", original)]
        if source == "auditd":
            encodings += [("hex", original.encode().hex().upper())]
            if " " in original:
                encodings += [("hexnul", original.replace(" ", "\0").encode().hex().upper())]
        for encoding, written in encodings:
            found += [(s, e, Slot(kind, original, encoding)) for s, e in _spans(re.escape(written), text)]
    found += [(m.start(), m.end(), Slot("uuid", m[0])) for m in _UUID.finditer(text)]
    for kind, pattern in _FIELD_IDS.items():
        slot_kind = {"flow_id": "flow_id", "audit_id": "uuid", "wazuh_id": "serial"}[kind]
        found += [(*m.span("value"), Slot(slot_kind, m["value"])) for m in pattern.finditer(text)]
    found.sort(key=lambda item: (item[0], -(item[1] - item[0])))
    pieces: list[str | Slot] = []
    position = 0
    for start, end, slot in found:
        if start < position:
            continue  # overlaps a longer or earlier value
        pieces += [text[position:start], slot]
        position = end
    pieces.append(text[position:])
    if not any(isinstance(piece, Slot) and piece.kind == "time" for piece in pieces):
        return None  # a line whose time cannot move would pile up at one instant
    return Template(source, tuple(piece for piece in pieces if piece != ""), weight)


# -- samples per source ----------------------------------------------------------------------------------------


def _json_lines(relative: str, *, unwrap: str | None = None) -> list[str]:
    out = []
    for raw in (SHARED_DATA / relative).read_bytes().splitlines():
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue  # the samples' deliberately broken lines
        if unwrap is not None:
            value = value[unwrap]
        out.append(orjson.dumps(value).decode())
    return out


def _json_documents(paths: list[Path]) -> list[str]:
    out = []
    for path in paths:
        try:
            value = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            continue
        out.append(orjson.dumps(value).decode())
    return out


def _suite_lines(name: str) -> list[tuple[str, str]]:
    """``(log line, Wazuh rule id)`` of one logtest suite (an INI whose keys repeat)."""
    path = SHARED_DATA / "wazuh-ruleset-tests/ruleset/testing/tests" / f"{name}.ini"
    pending: list[str] = []
    out: list[tuple[str, str]] = []
    for row in path.read_text().splitlines():
        if row.startswith("["):
            pending = []
        elif match := re.fullmatch(r"log \d+ pass = (.*)", row):
            pending.append(match[1])
        elif match := re.fullmatch(r"rule = (\d+)", row):
            out += [(line, match[1]) for line in pending]
    return out


def _suricata() -> list[str]:
    stamus = "suricata-stamus-analytics/jupyter/Notebooks"
    files = [f"{stamus}/training/data/02/eve.json", f"{stamus}/training/data/03/eve.json",
             f"{stamus}/events/suricon-2024/http-alert-sample.json", "suricata-dcso-fever/util/testdata/jsonparse_eve.json",
             "suricata-dcso-fever/cmd/fever/cmds/testdata/alertify_input.json"]  # fmt: skip
    return [line for name in files for line in _json_lines(name)]


def _falco() -> list[str]:
    lines = _json_lines("falco-legacy-tests/test/output_files/single_rule_with_cat_write.json")
    return lines + _json_lines(
        "falco-website-examples/EXTRACTED_falco_json_alerts_from_docs.jsonl", unwrap="event"
    )


def _k8s_audit() -> list[str]:
    traces = sorted((SHARED_DATA / "falco-legacy-tests/test/trace_files/k8s_audit").glob("*.json"))
    lines = _json_documents(traces)
    for line in _json_lines(
        "panther-analysis/EXTRACTED_k8s_audit_test_events_with_expected_results.jsonl", unwrap="log"
    ):
        event = {key: value for key, value in orjson.loads(line).items() if not key.startswith("p_")}
        lines.append(orjson.dumps(event).decode())
    return lines


def _auditd() -> list[str]:
    """One template per audit event (its records, newline-joined), as the adapter groups them."""
    events: dict[str, list[str]] = {}
    for name in ("test.log", "test2.log", "test3.log", "test4.log"):
        for line in (SHARED_DATA / "linux-audit-userspace/auparse/test" / name).read_text().splitlines():
            key = _AUDIT.search(line)
            if key is not None and "type=EOE" not in line:
                events.setdefault(f"{name}:{key[0]}", []).append(line)
    for line, _rule in _suite_lines("auditd"):
        if line.count("type=") == 1:  # the suite glues some events' records onto one line
            events[line] = [line]
    return ["\n".join(records) for records in events.values()]


_SYSLOG_SUITES = ("sshd", "pam", "sudo", "su", "syslog", "systemd", "named", "postfix")


def _syslog() -> list[str]:
    return [line for name in _SYSLOG_SUITES for line, _rule in _suite_lines(name)]


def _wazuh_rules() -> dict[str, dict[str, Any]]:
    rules: dict[str, dict[str, Any]] = {}
    for path in (SHARED_DATA / "wazuh-ruleset-tests/ruleset/rules").glob("*_rules.xml"):
        body = re.sub(r"<\?xml[^>]*>", "", path.read_text())
        root = ET.fromstring(f"<rules>{body}</rules>")
        for group in root.iter("group"):
            outer = [name for name in (group.get("name") or "").split(",") if name]
            for rule in group.iter("rule"):
                inner = [name for name in (rule.findtext("group") or "").split(",") if name]
                rules[rule.get("id", "")] = {
                    "level": int(rule.get("level", "0")),
                    "description": (rule.findtext("description") or "").strip(),
                    "groups": outer + inner,
                }
    return rules


def _wazuh() -> list[str]:
    """The shared alerts, plus an alert per sshd/PAM/sudo/su suite line shaped like the integratord samples
    (what a manager writes to ``alerts.json`` when that line fires its rule)."""
    raw = [
        orjson.loads(line)["raw"]
        for line in (SHARED_DATA / "wazuh-ruleset-tests/EXTRACTED_integratord_alert_samples.jsonl")
        .read_bytes()
        .splitlines()
    ]
    alerts = []
    for text in raw:
        try:
            alerts.append(orjson.dumps(orjson.loads(text)).decode())
        except orjson.JSONDecodeError:
            continue
    alerts += _json_documents(
        [SHARED_DATA / "wazuh-indexer/integrations/amazon-security-lake/ocsf/wazuh-event.sample.json"]
    )
    rules = _wazuh_rules()
    syslog = adapter_for("syslog")
    for number, (line, rule_id) in enumerate(
        item for name in ("sshd", "pam", "sudo", "su") for item in _suite_lines(name)
    ):
        rule = rules.get(rule_id)
        parsed = [o for o in syslog.parse([Line(1, line.encode())]) if isinstance(o, Parsed)]
        if rule is None or not parsed or "@timestamp" not in parsed[0].doc:
            continue
        doc = parsed[0].doc
        moment = parse_rfc3339(doc["@timestamp"])
        data = {key: value for key, value in (
            ("srcip", _first(doc, "source.ip")), ("srcport", _first(doc, "source.port")),
            ("srcuser", _first(doc, "user.name")), ("dstuser", _first(doc, "user.effective.name")),
        ) if value is not None}  # fmt: skip
        header = line.split(" ", 4)
        alert = {
            "timestamp": f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}+0000",
            "rule": {"level": rule["level"], "description": rule["description"], "id": rule_id,
                     "firedtimes": 1 + number % 7, "mail": False, "groups": rule["groups"]},
            "agent": {"id": f"{1 + number % 40:03d}", "name": header[3] if len(header) > 3 else "localhost"},
            "manager": {"name": "wazuh-manager-0"},
            "id": f"{int(moment.timestamp())}.{1000 + number * 977}",
            "full_log": line,
            "decoder": {"name": _first(doc, "log.syslog.appname") or "syslog"},
            "data": {key: str(value) for key, value in data.items()},
            "location": "/var/log/auth.log",
        }  # fmt: skip
        alerts.append(orjson.dumps(alert).decode())
    return alerts


def _first(doc: dict[str, Any], path: str) -> Any:
    values = _values(doc, path)
    return values[0] if values else None


def _demo(source: str, want: Callable[[str], bool], count: int) -> list[str]:
    """Lines the demo generator renders for ``source`` (formats shaped after the shared samples)."""
    from security.demo.traffic import DemoTraffic

    fixed = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    traffic = DemoTraffic(events_per_s=200, attack_every_s=1e9, seed=11, clock=lambda: fixed)
    out: list[str] = []
    for _ in range(60):
        for batch in traffic.batches(60):
            if batch.source != source:
                continue
            text = batch.body.decode()
            chunks = (
                re.split(r"\n(?=node=\S+ type=SYSCALL)", text) if source == "auditd" else text.splitlines()
            )
            out += [chunk.strip("\n") for chunk in chunks if want(chunk)]
        if len(out) >= count:
            break
    return out[:count]


def _keycloak() -> list[str]:
    return _demo("keycloak", lambda line: bool(line.strip()), 60)


def _auditd_execve() -> list[str]:
    return _demo("auditd", lambda chunk: "type=EXECVE" in chunk, 30)


_SAMPLES: dict[str, Callable[[], list[str]]] = {
    "suricata": _suricata,
    "falco": _falco,
    "k8s_audit": _k8s_audit,
    "auditd": _auditd,
    "syslog": _syslog,
    "wazuh": _wazuh,
    "keycloak": _keycloak,
}


def _weight(source: str, text: str) -> float:
    if source == "falco" and "Falco internal" in text:
        return 0.05  # a metrics snapshot per interval, not per event
    return 1.0


def templates(source: str) -> list[Template]:
    """The source's templates: every sample its adapter accepts, cut where values vary."""
    adapter = adapter_for(source)
    texts = _SAMPLES[source]()
    if source == "auditd":
        texts += _auditd_execve() * 2  # execve events dominate a host's audit log under an -S execve rule
    if source == "syslog":  # rsyslog's high-precision format for half of them
        texts += [
            re.sub(r"^[A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2}", "2026-11-25T10:00:00.000000+00:00", t)
            for t in texts
        ]
    out = []
    for text in texts:
        body = text.encode() + b"\n"
        lines = [item.line for item in frame(body, adapter.framing) if isinstance(item, FramedLine)]
        docs = [outcome.doc for outcome in adapter.parse(lines) if isinstance(outcome, Parsed)]
        if len(docs) != 1 or "@timestamp" not in docs[0]:
            continue  # rejected, several events in one (an EventList), or no time of its own
        template = build_template(source, text, docs[0], _weight(source, text))
        if template is not None:
            out.append(template)
    return out


# -- the corpus ------------------------------------------------------------------------------------------------


def events(source: str, count: int, *, start: datetime, end: datetime, seed: int) -> Iterator[str]:
    """``count`` raw events of ``source`` in time order, spread evenly (with jitter) over ``[start, end)``."""
    rng = random.Random(f"{seed}:{source}")
    chosen = templates(source)
    weights = list(itertools.accumulate(template.weight for template in chosen))
    values = Values(rng, itertools.count(rng.randrange(10**6, 10**7)))
    start_us, step_us = _us(start), (_us(end) - _us(start)) / max(count, 1)
    picks = rng.choices(chosen, cum_weights=weights, k=min(count, 100_000))
    for number in range(count):
        if number and number % len(picks) == 0:
            picks = rng.choices(chosen, cum_weights=weights, k=min(count - number, 100_000))
        moment_us = start_us + int((number + rng.random()) * step_us)
        yield picks[number % len(picks)].render(moment_us, values)


def write_corpus(path: Path, source: str, count: int, *, start: datetime, end: datetime, seed: int) -> int:
    """Write ``count`` events to ``path`` (streaming); returns the bytes written."""
    written = 0
    with path.open("w", buffering=1 << 20) as handle:
        for text in events(source, count, start=start, end=end, seed=seed):
            written += handle.write(text)
            written += handle.write("\n")
    return written
