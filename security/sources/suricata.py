"""Suricata EVE JSON (``eve.json``): one JSON object per line, one line per event Suricata logged.

The whole EVE object is kept under ``suricata.eve`` so that rules written against Suricata's own field names
(``suricata.eve.alert.signature_id``, ``suricata.eve.dns.rrname``) keep working; the ECS fields are filled from
it for rules and dashboards that span sources. App-layer objects are mapped wherever they appear, not only in
their own event type: an alert on an HTTP transaction carries the ``http`` object too, and so gets ``url.*``.

A line must be an EVE record: an object with a ``timestamp`` and an ``event_type``. Suricata writes both on
every record, so a line without an ``event_type`` is rejected rather than guessed at (an object with neither is
not EVE at all, such as a fragment pasted from the docs); an ``event_type`` refsys does not know (``mqtt``,
``pgsql``, ...) is kept generically, as a network event with its native fields.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson

from control_plane.core.clock import parse_rfc3339, rfc3339
from security.ecs import ip as ecs_ip
from security.ecs import put
from security.sources.base import Adapter, Line, Rejected

ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:refsys:event-id:suricata.eve")
"""UUIDv5 namespace of Suricata event ids; fixed forever, or re-ingested events would stop deduplicating."""
_NAMESPACE_BYTES = ID_NAMESPACE.bytes

_CATEGORISATION: dict[str, tuple[str, list[str], list[str]]] = {
    # event_type: (event.kind, event.category, event.type); alerts get their type from alert.action.
    "alert": ("alert", ["network", "intrusion_detection"], []),
    "anomaly": ("event", ["network"], ["info"]),
    "dcerpc": ("event", ["network"], ["protocol"]),
    "dns": ("event", ["network"], ["protocol"]),
    "fileinfo": ("event", ["network", "file"], ["info"]),
    "flow": ("event", ["network"], ["connection", "end"]),
    "http": ("event", ["network", "web"], ["protocol", "access"]),
    "smb": ("event", ["network"], ["protocol"]),
    "ssh": ("event", ["network"], ["protocol"]),
    "stats": ("metric", [], ["info"]),
    "tls": ("event", ["network"], ["protocol"]),
}
_GENERIC = ("event", ["network"], ["info"])

_NOT_A_PROTOCOL = frozenset({"alert", "anomaly", "drop", "fileinfo", "flow", "netflow", "stats"})
"""Event types that are not named after an application protocol (so cannot stand in for ``app_proto``)."""

_ALERT_ACTION_TYPES = {"allowed": "allowed", "blocked": "denied"}
"""Suricata's ``alert.action`` (``blocked`` in IPS mode) -> ``event.type``."""

_DNS_FLAGS = {"aa": "AA", "tc": "TC", "rd": "RD", "ra": "RA", "ad": "AD", "cd": "CD"}


class SuricataAdapter(Adapter):
    """EVE JSON lines from Suricata's ``eve-log`` output (file, Redis or syslog, shipped as NDJSON)."""

    name: ClassVar[str] = "suricata"
    dataset: ClassVar[str] = "suricata.eve"

    def normalise(self, line: Line) -> list[dict[str, Any]]:
        eve = line.value
        if not isinstance(eve, dict):
            raise Rejected(f"an EVE record is a JSON object, not a JSON {type(eve).__name__}")
        event_type, timestamp = eve.get("event_type"), eve.get("timestamp")
        if event_type is None and timestamp is None:
            raise Rejected("not an EVE record: it has neither timestamp nor event_type")
        if not isinstance(event_type, str) or not event_type:
            raise Rejected("EVE record without an event_type")
        if not isinstance(timestamp, str):
            raise Rejected(f"EVE {event_type} record without a timestamp")
        try:
            moment = _utc_text(timestamp)
        except ValueError:
            raise Rejected(f"EVE timestamp {timestamp!r} is not an RFC 3339 time") from None
        if event_type == "alert" and not isinstance(eve.get("alert"), dict):
            raise Rejected("EVE alert record without an alert object")

        doc: dict[str, Any] = {"@timestamp": moment}
        kind, categories, types = _CATEGORISATION.get(event_type, _GENERIC)
        # What ``put`` would write, without its per-call checks: these values are known, and this runs for
        # every event of the busiest source.
        event: dict[str, Any] = {"kind": kind}
        doc["event"] = event
        if categories:
            event["category"] = list(categories)  # copies: no document may share the table's lists
        if types:
            event["type"] = list(types)
        event["action"] = event_type
        event["module"] = "suricata"
        identity = event_id(eve, event_type, moment)
        if identity is not None:
            event["id"] = identity
        original = line.text
        if original:
            event["original"] = original
        _map_network(doc, eve, event_type)
        for key, mapper in _APP_LAYER.items():
            if isinstance(eve.get(key), dict):
                mapper(doc, eve[key])
        put(doc, "suricata.eve", eve)
        return [doc]


def event_id(eve: dict[str, Any], event_type: str, moment: str) -> str | None:
    """Suricata's own identity of an event, as a UUIDv5; None when the record has no flow (``stats``, some
    decoder anomalies), so that the intake derives one from where the line came from.

    DESIGN.md section 4: flow id + event type + transaction id + timestamp. The transaction id is the top-level
    ``tx_id`` or, for loggers that nest it (``dns``, ``fileinfo``, ``pgsql``), the one in the event's own
    object. What still tells apart two records of one type on one packet of one transaction is added: the rule
    (gid, signature id) of an alert, the file id of a fileinfo record, the anomaly's type and event.
    """
    flow_id = eve.get("flow_id")
    if flow_id is None:
        return None
    own = eve.get(event_type)
    own = own if isinstance(own, dict) else {}
    tx_id = eve.get("tx_id", own.get("tx_id"))
    parts: list[Any] = [flow_id, event_type, tx_id, moment]
    if event_type == "alert":
        parts += [own.get("gid"), own.get("signature_id")]
    elif event_type == "fileinfo":
        parts.append(own.get("file_id"))
    elif event_type == "anomaly":
        parts += [own.get("type"), own.get("event")]
    # uuid.uuid5(ID_NAMESPACE, name) without the UUID object: SHA-1 of namespace + name, version and variant
    # bits set, in the canonical text form.
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + orjson.dumps(parts)).digest()[:16])  # noqa: S324
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


_EVE_TIME = re.compile(r"[1-9]\d{3}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+0000")
"""How Suricata writes times: UTC, microseconds, ``+0000``."""


def _utc_text(value: str) -> str:
    """``rfc3339(parse_rfc3339(value))``; Suricata's own form needs no parsing and rendering, only checking."""
    if _EVE_TIME.fullmatch(value):
        datetime.fromisoformat(value[:26])  # a valid date and time, or ValueError as parsing would raise
        return value[:26] + "Z"
    return rfc3339(parse_rfc3339(value))


def _map_network(doc: dict[str, Any], eve: dict[str, Any], event_type: str) -> None:
    _endpoint(doc, "source", eve.get("src_ip"), eve.get("src_port"))
    _endpoint(doc, "destination", eve.get("dest_ip"), eve.get("dest_port"))
    ip = doc.get("source", {}).get("ip") or doc.get("destination", {}).get("ip")
    if ip:
        put(doc, "network.type", f"ipv{ipaddress.ip_address(ip).version}")
    proto = eve.get("proto")
    if isinstance(proto, str | int) and not isinstance(proto, bool):
        put(doc, "network.transport", str(proto).lower())
    app_proto = eve.get("app_proto")
    if isinstance(app_proto, str) and app_proto != "failed":  # "failed": Suricata could not tell the protocol
        put(doc, "network.protocol", app_proto.lower())
    elif event_type not in _NOT_A_PROTOCOL:
        put(doc, "network.protocol", event_type)
    put(doc, "network.community_id", eve.get("community_id"))
    vlan = eve.get("vlan")
    vlan = vlan[0] if isinstance(vlan, list) and vlan else vlan
    if isinstance(vlan, int):
        put(doc, "network.vlan.id", str(vlan))
    ether = eve.get("ether")
    if isinstance(ether, dict):
        put(doc, "source.mac", _mac(ether.get("src_mac")))
        put(doc, "destination.mac", _mac(ether.get("dest_mac")))


def _endpoint(doc: dict[str, Any], side: str, address: Any, port: Any) -> None:
    """``side.address`` as written, ``side.ip`` only when it is an IP (in its canonical form, so that
    ``0000:...:0001`` and ``::1`` match), ``side.port`` only when it is a port."""
    if isinstance(address, str):
        put(doc, f"{side}.address", address)
        put(doc, f"{side}.ip", ecs_ip(address))
    if isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 65535:
        put(doc, f"{side}.port", port)


def _mac(value: Any) -> str | None:
    """ECS writes MAC addresses upper-case with hyphens."""
    return value.upper().replace(":", "-") if isinstance(value, str) else None


def _time(value: Any) -> str | None:
    try:
        return _utc_text(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _map_alert(doc: dict[str, Any], alert: dict[str, Any]) -> None:
    signature_id = alert.get("signature_id")
    put(doc, "rule.id", None if signature_id is None else str(signature_id))
    put(doc, "rule.name", alert.get("signature"))
    put(doc, "rule.category", alert.get("category"))
    rev = alert.get("rev")
    put(doc, "rule.version", None if rev is None else str(rev))
    put(doc, "event.severity", _number(alert.get("severity")))  # Suricata's own scale: 1 is the highest
    action = alert.get("action")
    put(doc, "event.type", [_ALERT_ACTION_TYPES.get(action, "info") if isinstance(action, str) else "info"])


def _map_flow(doc: dict[str, Any], flow: dict[str, Any]) -> None:
    """Times and counters of the flow: final in a ``flow`` record, so far in the alerts that carry them."""
    put(doc, "event.start", _time(flow.get("start")))
    put(doc, "event.end", _time(flow.get("end")))
    counters = {
        "source.packets": _number(flow.get("pkts_toserver")),
        "source.bytes": _number(flow.get("bytes_toserver")),
        "destination.packets": _number(flow.get("pkts_toclient")),
        "destination.bytes": _number(flow.get("bytes_toclient")),
    }
    for path, value in counters.items():
        put(doc, path, value)
    for unit in ("packets", "bytes"):
        to_server, to_client = counters[f"source.{unit}"], counters[f"destination.{unit}"]
        if to_server is not None and to_client is not None:
            put(doc, f"network.{unit}", to_server + to_client)


def _map_http(doc: dict[str, Any], http: dict[str, Any]) -> None:
    url = http.get("url")
    put(doc, "url.original", url)
    if isinstance(url, str) and url.startswith("/"):
        parts = urlsplit(url)
        put(doc, "url.path", parts.path)
        put(doc, "url.query", parts.query)
    put(doc, "url.domain", http.get("hostname"))
    put(doc, "url.port", _number(http.get("http_port")))
    put(doc, "http.request.method", http.get("http_method"))
    put(doc, "http.request.referrer", http.get("http_refer"))
    put(doc, "http.response.status_code", _number(http.get("status")))
    put(doc, "http.response.mime_type", http.get("http_content_type"))
    put(doc, "http.response.body.bytes", _number(http.get("length")))
    protocol = http.get("protocol")
    if isinstance(protocol, str) and protocol.upper().startswith("HTTP/"):
        put(doc, "http.version", protocol[5:])
    put(doc, "user_agent.original", http.get("http_user_agent"))


def _map_dns(doc: dict[str, Any], dns: dict[str, Any]) -> None:
    """EVE dns in its three versions: v1 (one line per answer, the answer at the top), v2 (``answers`` and
    ``grouped``) and v3 (``queries`` as a list)."""
    put(doc, "dns.type", dns.get("type"))
    dns_id = dns.get("id")
    put(doc, "dns.id", None if dns_id is None else str(dns_id))
    question = dns
    queries = dns.get("queries")
    if isinstance(queries, list) and queries and isinstance(queries[0], dict):
        question = queries[0]
    put(doc, "dns.question.name", question.get("rrname"))
    put(doc, "dns.question.type", question.get("rrtype"))
    put(doc, "dns.response_code", dns.get("rcode"))
    put(doc, "dns.header_flags", [flag for key, flag in _DNS_FLAGS.items() if dns.get(key) is True])
    answers = dns.get("answers")
    if not isinstance(answers, list):
        answers = [dns] if dns.get("type") == "answer" and "rdata" in dns else []
    ecs_answers = [_dns_answer(answer) for answer in answers if isinstance(answer, dict)]
    put(doc, "dns.answers", ecs_answers)
    addresses = [answer.get("data") for answer in ecs_answers if answer.get("type") in ("A", "AAAA")]
    put(doc, "dns.resolved_ip", [address for address in addresses if ecs_ip(address) is not None])


def _dns_answer(answer: dict[str, Any]) -> dict[str, Any]:
    names = {"name": "rrname", "type": "rrtype", "ttl": "ttl", "data": "rdata"}
    return {ecs: answer[eve] for ecs, eve in names.items() if answer.get(eve) is not None}


def _map_tls(doc: dict[str, Any], tls: dict[str, Any]) -> None:
    version = tls.get("version")
    if isinstance(version, str):
        protocol, _, number = version.partition(" ")  # "TLS 1.3"; "SSLv3" and "UNDETERMINED" stay native
        if protocol == "TLS" and number:
            put(doc, "tls.version_protocol", "tls")
            put(doc, "tls.version", number)
    put(doc, "tls.client.server_name", tls.get("sni"))
    for path, key in (("tls.client.ja3", "ja3"), ("tls.server.ja3s", "ja3s")):
        fingerprint = tls.get(key)
        if isinstance(fingerprint, dict):
            put(doc, path, fingerprint.get("hash"))
    put(doc, "tls.server.subject", tls.get("subject"))
    put(doc, "tls.server.issuer", tls.get("issuerdn"))
    sha1 = tls.get("fingerprint")
    if isinstance(sha1, str):
        put(doc, "tls.server.hash.sha1", sha1.replace(":", "").upper())
    put(doc, "tls.resumed", tls.get("session_resumed"))


def _map_fileinfo(doc: dict[str, Any], fileinfo: dict[str, Any]) -> None:
    _file_path(doc, fileinfo.get("filename"))
    put(doc, "file.size", _number(fileinfo.get("size")))
    put(doc, "file.mime_type", fileinfo.get("mimetype"))
    for algorithm in ("md5", "sha1", "sha256"):
        put(doc, f"file.hash.{algorithm}", fileinfo.get(algorithm))


def _map_smb(doc: dict[str, Any], smb: dict[str, Any]) -> None:
    ntlmssp = smb.get("ntlmssp")
    if isinstance(ntlmssp, dict):
        put(doc, "user.name", ntlmssp.get("user"))
        put(doc, "user.domain", ntlmssp.get("domain"))
    _file_path(doc, smb.get("filename"))


def _file_path(doc: dict[str, Any], path: Any) -> None:
    """``file.path`` as Suricata saw it (a URL path for HTTP, a share path for SMB), and its last part."""
    if isinstance(path, str):
        put(doc, "file.path", path)
        put(doc, "file.name", path.replace("\\", "/").rsplit("/", 1)[-1])


def _map_anomaly(doc: dict[str, Any], anomaly: dict[str, Any]) -> None:
    put(doc, "event.reason", anomaly.get("event"))


_APP_LAYER: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    "alert": _map_alert,
    "flow": _map_flow,
    "http": _map_http,
    "dns": _map_dns,
    "tls": _map_tls,
    "fileinfo": _map_fileinfo,
    "smb": _map_smb,
    "anomaly": _map_anomaly,
}
"""EVE objects with an ECS counterpart; the others (ssh, dcerpc, mqtt, ...) stay native only."""
