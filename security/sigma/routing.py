"""Log-source routing and field mapping: which refsys dataset a Sigma rule watches, and where its fields live.

Why a table per log source: Sigma rules name fields as their log source writes them (``CommandLine``,
``objectRef.resource``, Zeek's ``query``), while refsys stores one normalised document per event: ECS plus the
source's native fields under its namespace (DESIGN.md section 4). A route says which dataset (and, within it,
which events) a ``logsource`` means, and maps each Sigma field to a native namespaced field first, else to an
ECS field the source's adapter actually writes. A field nothing maps is an error in strict mode
(``map_rule``), because a rule silently reading an absent field can never fire and nobody would notice.

Each rule is classed by ``classify``: routable and fully mapped, routable with unmapped fields (listed), or
unroutable (no route for its ``logsource``). Mapping rewrites a copy of the rule's field names, so the compiler
then evaluates it over the flattened document (``security.ecs.flatten``) with no per-event renaming.

auditd rules select on one record (``type: EXECVE`` and ``a0: chmod``), so their fields map to
``auditd.records.<key>``; evaluating them record by record over ``auditd.records[]`` is the detection
engine's job (not done here): a route says so with ``per_record``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaRule
from sigma.types import SigmaFieldReference

from security.sigma.compiler import CompiledRule, compile_rule, rule_name
from security.sigma.errors import SigmaCompileError
from security.sigma.values import Placeholders

LogSource = tuple[str | None, str | None, str | None]
"""A rule's ``logsource`` as (product, category, service); routes match it exactly."""

SIGMA_TO_ECS: Mapping[str, str] = {
    # Sysmon-style names SigmaHQ's Linux rules use, and the Zeek/firewall names of its network rules.
    "CommandLine": "process.command_line",
    "Image": "process.executable",
    "ParentImage": "process.parent.executable",
    "ParentCommandLine": "process.parent.command_line",
    "ProcessId": "process.pid",
    "ParentProcessId": "process.parent.pid",
    "CurrentDirectory": "process.working_directory",
    "User": "user.name",
    "TargetFilename": "file.path",
    "DestinationIp": "destination.ip",
    "DestinationPort": "destination.port",
    "DestinationHostname": "destination.domain",
    "SourceIp": "source.ip",
    "SourcePort": "source.port",
    "id.orig_h": "source.ip",
    "id.orig_p": "source.port",
    "id.resp_h": "destination.ip",
    "id.resp_p": "destination.port",
    "src_ip": "source.ip",
    "src_port": "source.port",
    "dst_ip": "destination.ip",
    "dst_port": "destination.port",
}
"""Sigma field -> ECS field; used only where the route's source writes that ECS field (``Route.ecs``)."""


@dataclass(frozen=True)
class Route:
    """One log source: the dataset (and events within it) a Sigma ``logsource`` means, and its field table."""

    name: str
    logsources: frozenset[LogSource]
    dataset: str
    """The ``event.dataset`` the intake stamps on this source's documents."""
    where: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Flat field -> accepted values, narrowing the dataset (Zeek ``dns`` -> EVE ``event_type: dns``)."""
    native: Mapping[str, str] = field(default_factory=dict)
    """Sigma field -> native namespaced field, tried before ECS."""
    native_prefix: tuple[re.Pattern[str], str] | None = None
    """Fields matching the pattern keep their name under the prefix (open key sets: audit records, k8s Event)."""
    ecs: frozenset[str] = frozenset()
    """ECS fields the source's adapter writes: the ECS fallback only maps to these."""
    per_record: str | None = None
    """The list field whose items a rule must be evaluated on one at a time (auditd), else None."""

    def resolve(self, sigma_field: str) -> str | None:
        """The document field a Sigma field reads, or None when nothing on this source carries it."""
        native = self.native.get(sigma_field)
        if native is not None:
            return native
        if self.native_prefix is not None and self.native_prefix[0].fullmatch(sigma_field):
            return self.native_prefix[1] + sigma_field
        ecs = SIGMA_TO_ECS.get(sigma_field)
        if ecs is not None and ecs in self.ecs:
            return ecs
        if sigma_field in self.ecs:  # the rule already writes ECS names
            return sigma_field
        return None

    def accepts(self, flat_event: Mapping[str, object]) -> bool:
        """Whether an event (flattened) belongs to this route: its dataset, then the ``where`` narrowing."""
        if flat_event.get("event.dataset") != self.dataset:
            return False
        for name, values in self.where.items():
            value = flat_event.get(name)
            candidates = value if isinstance(value, list) else [value]
            if not any(isinstance(v, str) and v in values for v in candidates):
                return False
        return True


_AUDITD_PROCESS_ECS = frozenset(
    {
        "process.command_line",
        "process.executable",
        "process.name",
        "process.pid",
        "process.parent.pid",
        "process.working_directory",
        "process.title",
        "process.args",
        "user.name",
        "user.id",
        "user.effective.id",
        "group.name",
    }
)
_NETWORK_ECS = frozenset(
    {"source.ip", "source.port", "destination.ip", "destination.port", "network.transport"}
)
_K8S_AUDIT_KEYS = (
    "level|auditID|stage|requestURI|verb|user|impersonatedUser|sourceIPs|userAgent|objectRef|responseStatus"
    "|requestObject|responseObject|requestReceivedTimestamp|stageTimestamp|annotations"
)
_SYSLOG_ECS = frozenset({"process.name", "host.hostname", "log.syslog.appname"})
_SUDO_ECS = _SYSLOG_ECS | {
    "event.action", "event.outcome", "user.name", "user.effective.name", "process.command_line",
    "process.working_directory",
}  # fmt: skip
_EVE_NATIVE = (
    "event_type|proto|app_proto|flow_id|tx_id|community_id|in_iface|direction|host|metadata|alert|flow|http|dns"
    "|tls|fileinfo|ssh|smb|anomaly"
)
"""EVE keys read natively; the addresses and ports are not, so that ``src_ip`` reads the normalised ECS field."""
_EVE_ECS = _NETWORK_ECS | {
    "event.action", "event.severity", "network.protocol", "rule.id", "rule.name", "rule.category", "url.original",
    "user_agent.original",
}  # fmt: skip
"""ECS fields of EVE records; not ``http.*``, ``dns.*``, ``tls.*``, which read EVE's own objects of those names."""

_KEYCLOAK_ECS = frozenset({
    "source.ip", "user.id", "user.name", "user.domain", "event.action", "event.outcome", "event.reason",
    "user.target.id", "user.target.name", "user.target.roles", "user.target.group.name", "group.name",
})  # fmt: skip
_FALCO_ECS = frozenset({
    "host.name", "event.severity", "process.name", "process.executable", "process.command_line",
    "process.parent.name", "user.name", "container.id", "container.name", "container.image.name",
    "orchestrator.namespace", "orchestrator.resource.name", "source.ip", "destination.ip", "destination.port",
    "file.path",
})  # fmt: skip


def _native(keys: str) -> re.Pattern[str]:
    """Top-level native keys (``a|b|c``) and anything below them."""
    return re.compile(rf"(?:{keys})(?:\.[A-Za-z0-9_\-\[\]]+)*")


def _eve(event_type: str, *more: str) -> Mapping[str, frozenset[str]]:
    return {"suricata.eve.event_type": frozenset({event_type, *more})}


def _zeek(
    name: str,
    service: str,
    event_type: str,
    native: Mapping[str, str] | None = None,
    ecs: frozenset[str] = _NETWORK_ECS,
) -> Route:
    """A Zeek log, served by the EVE records of the same protocol."""
    return Route(
        name,
        frozenset({("zeek", None, service)}),
        "suricata.eve",
        _eve(event_type),
        native=native or {},
        ecs=ecs,
    )


def _syslog(name: str, products: Iterable[LogSource], apps: Iterable[str] = ()) -> Route:
    """Linux services that log through syslog: keyword rules over the message, narrowed to the program."""
    where = {"log.syslog.appname": frozenset(apps)} if apps else {}
    return Route(name, frozenset(products), "syslog.messages", where=where, ecs=_SYSLOG_ECS)


ROUTES: tuple[Route, ...] = (
    Route(
        "linux-auditd",
        frozenset({("linux", None, "auditd")}),
        "auditd.log",
        # Audit field names, raw lower-case and enriched upper-case (``SYSCALL``): an open set, kept as written.
        native_prefix=(re.compile(r"[A-Za-z][A-Za-z0-9_\-]*"), "auditd.records."),
        per_record="auditd.records",
    ),
    Route(
        "linux-process-creation",
        frozenset({("linux", "process_creation", None)}),
        "auditd.log",
        where={"event.category": frozenset({"process"}), "event.type": frozenset({"start"})},
        ecs=_AUDITD_PROCESS_ECS,
    ),
    # auditd records no file or socket fields in ECS yet: these rules route, and list what is missing.
    Route(
        "linux-file-event", frozenset({("linux", "file_event", None)}), "auditd.log", ecs=_AUDITD_PROCESS_ECS
    ),
    Route(
        "linux-network-connection",
        frozenset({("linux", "network_connection", None)}),
        "auditd.log",
        ecs=_AUDITD_PROCESS_ECS,
    ),
    _syslog("linux-syslog", [("linux", None, None), ("linux", None, "syslog")]),
    _syslog("linux-sshd", [("linux", None, "sshd")], ["sshd"]),
    _syslog("linux-cron", [("linux", None, "cron")], ["cron", "CRON", "crond"]),
    _syslog("linux-vsftpd", [("linux", None, "vsftpd")], ["vsftpd"]),
    _syslog("linux-clamav", [("linux", None, "clamav")], ["clamd", "freshclam", "clamav"]),
    _syslog("linux-guacamole", [("linux", None, "guacamole")], ["guacd", "guacamole"]),
    Route(
        "kubernetes-audit",
        frozenset({("kubernetes", None, "audit"), ("kubernetes", "application", "audit")}),
        "kubernetes.audit",
        native={"apiGroup": "kubernetes.audit.objectRef.apiGroup"},
        native_prefix=(re.compile(rf"(?:{_K8S_AUDIT_KEYS})(?:\.[A-Za-z0-9_\-]+)*"), "kubernetes.audit."),
        ecs=frozenset({"source.ip", "user_agent.original", "url.original", "http.response.status_code"}),
    ),
    Route(
        "network-dns",
        frozenset({(None, "dns", None), ("zeek", None, "dns")}),
        "suricata.eve",
        where=_eve("dns"),
        native={
            "query": "dns.question.name",
            "qtype_name": "dns.question.type",
            "record_type": "dns.question.type",
            "answer": "dns.resolved_ip",
            "answers": "dns.resolved_ip",
            "rcode_name": "dns.response_code",
        },
        ecs=_NETWORK_ECS | {"dns.question.name", "dns.question.type", "dns.resolved_ip", "dns.response_code"},
    ),
    _zeek(
        "network-http",
        "http",
        "http",
        {
            "c-uri": "url.original",
            "uri": "url.original",
            "c-useragent": "user_agent.original",
            "user_agent": "user_agent.original",
            "host": "url.domain",
            "method": "http.request.method",
            "status_code": "http.response.status_code",
            "resp_mime_types": "http.response.mime_type",
        },
    ),
    _zeek(
        "network-smb",
        "smb_files",
        "smb",
        {"name": "suricata.eve.smb.filename", "path": "suricata.eve.smb.share"},
    ),
    # Zeek names DCE-RPC endpoints and operations; EVE has interface UUIDs and opnums: no mapping on purpose.
    _zeek("network-dcerpc", "dce_rpc", "dcerpc"),
    _zeek(
        "network-x509",
        "x509",
        "tls",
        {"certificate.serial": "suricata.eve.tls.serial", "certificate.subject": "tls.server.subject"},
        ecs=_NETWORK_ECS | {"tls.server.subject"},
    ),
    _zeek("network-rdp", "rdp", "rdp"),
    _zeek(
        "network-kerberos",
        "kerberos",
        "krb5",
        {
            "request_type": "suricata.eve.krb5.msg_type",
            "cipher": "suricata.eve.krb5.encryption",
            "service": "suricata.eve.krb5.sname",
            "client": "suricata.eve.krb5.cname",
        },
    ),
    Route(
        "network-firewall",
        frozenset({(None, "firewall", None)}),
        "suricata.eve",
        where=_eve("alert", "drop", "flow"),
        native={"action": "suricata.eve.alert.action"},
        ecs=_NETWORK_ECS,
    ),
    # Sources SigmaHQ has no log source for: refsys's own records and the sensors it ingests whole. Their
    # rules (security/rules) name native fields as the source writes them, or the ECS fields listed.
    Route(
        "refsys-audit",
        frozenset({("refsys", None, "audit")}),
        "refsys.audit",
        native_prefix=(
            _native("seq|id|time|actor|roles|jti|client|user_agent|request_id|action|target|outcome|details"),
            "refsys.audit.",
        ),
        ecs=frozenset(
            {"source.ip", "user.name", "user.roles", "event.action", "event.outcome", "event.type"}
        ),
    ),
    Route(
        "refsys-access",
        frozenset({("refsys", None, "access")}),
        "refsys.access",
        native_prefix=(
            _native("time|request_id|client_request_id|method|route|status|latency_ms|sub|jti|client"),
            "refsys.access.",
        ),
        ecs=frozenset(
            {"source.ip", "user.name", "event.action", "event.outcome", "http.response.status_code"}
        ),
    ),
    Route(
        "refsys-health",
        frozenset({("refsys", None, "health")}),
        "refsys.health",
        native_prefix=(_native("source"), "refsys."),
        ecs=frozenset({"event.action", "event.kind", "observer.name", "observer.product"}),
    ),
    Route(
        "keycloak",
        frozenset({("keycloak", None, None)}),
        "keycloak.events",
        native_prefix=(
            _native(
                "id|time|type|realmId|realmName|clientId|userId|sessionId|ipAddress|error|details|operationType"
                "|resourceType|resourcePath|representation|authDetails"
            ),
            "keycloak.",
        ),
        ecs=_KEYCLOAK_ECS,
    ),
    Route(
        "falco",
        frozenset({("falco", None, None)}),
        "falco.alerts",
        # Not Falco's ``source`` (``syscall``, ``k8s_audit``): the name would hide ECS ``source.ip``.
        native_prefix=(_native("uuid|time|rule|priority|output|output_fields|tags|hostname"), "falco."),
        ecs=_FALCO_ECS,
    ),
    Route(
        "wazuh",
        frozenset({("wazuh", None, None)}),
        "wazuh.alerts",
        native_prefix=(
            _native("id|timestamp|rule|agent|manager|decoder|data|syscheck|location|full_log|predecoder"),
            "wazuh.",
        ),
        ecs=frozenset(
            {"host.name", "source.ip", "destination.ip", "user.name", "event.action", "event.severity"}
        ),
    ),
    Route(
        "suricata-eve",
        frozenset({("suricata", None, None)}),
        "suricata.eve",
        native_prefix=(_native(_EVE_NATIVE), "suricata.eve."),
        ecs=_EVE_ECS,
    ),
    Route(
        "network-ids",
        frozenset({(None, "ids", None), ("suricata", "ids", None)}),
        "suricata.eve",
        where=_eve("alert"),
        native_prefix=(_native(_EVE_NATIVE), "suricata.eve."),
        ecs=_EVE_ECS,
    ),
    Route(
        "linux-sudo",
        frozenset({("linux", None, "sudo")}),
        "syslog.messages",
        where={"log.syslog.appname": frozenset({"sudo"})},
        native_prefix=(_native("sudo"), "syslog."),
        ecs=_SUDO_ECS,
    ),
)
"""Every log source refsys ingests that SigmaHQ writes rules for, then the log sources only refsys's bundled rules
name. Cisco, Fortinet, Huawei and Juniper device logs are not ingested, so their rules are unroutable."""

_BY_LOGSOURCE: dict[LogSource, Route] = {ls: route for route in ROUTES for ls in route.logsources}


class RuleClass(StrEnum):
    """The three outcomes acceptance 2 counts."""

    MAPPED = "routable and fully mapped"
    UNMAPPED = "routable with unmapped fields"
    UNROUTABLE = "unroutable"


@dataclass(frozen=True)
class Routing:
    """Where a rule reads: its route, the document field of each Sigma field, and what nothing maps."""

    rule_class: RuleClass
    route: Route | None
    fields: Mapping[str, str]
    unmapped: tuple[str, ...]

    @property
    def reason(self) -> str:
        """One line for reports: why a rule is not fully mapped."""
        if self.route is None:
            return "no route for its logsource"
        if self.unmapped:
            return f"route {self.route.name} maps no field for {', '.join(self.unmapped)}"
        return ""


def logsource_of(rule: SigmaRule) -> LogSource:
    return (rule.logsource.product, rule.logsource.category, rule.logsource.service)


def route_for(rule: SigmaRule) -> Route | None:
    return _BY_LOGSOURCE.get(logsource_of(rule))


def _items(detection: SigmaDetection) -> Iterator[SigmaDetectionItem]:
    for item in detection.detection_items:
        if isinstance(item, SigmaDetection):
            yield from _items(item)
        else:
            yield item


def detection_items(rule: SigmaRule) -> Iterator[SigmaDetectionItem]:
    """Every detection item of the rule, nested ones included."""
    for detection in rule.detection.detections.values():
        yield from _items(detection)


def rule_fields(rule: SigmaRule) -> list[str]:
    """Sigma field names the rule reads, in order, including ``fieldref`` targets; keywords have none."""
    seen: dict[str, None] = {}
    for item in detection_items(rule):
        if item.field is not None:
            seen[item.field] = None
        for value in item.value:
            if isinstance(value, SigmaFieldReference):
                seen[value.field] = None
    return list(seen)


def classify(rule: SigmaRule) -> Routing:
    """Class a rule without failing: reports and the rule list show why a rule would not run."""
    route = route_for(rule)
    if route is None:
        return Routing(RuleClass.UNROUTABLE, None, {}, ())
    fields: dict[str, str] = {}
    unmapped: list[str] = []
    for name in rule_fields(rule):
        target = route.resolve(name)
        if target is None:
            unmapped.append(name)
        else:
            fields[name] = target
    rule_class = RuleClass.UNMAPPED if unmapped else RuleClass.MAPPED
    return Routing(rule_class, route, fields, tuple(unmapped))


def map_rule(rule: SigmaRule) -> tuple[SigmaRule, Routing]:
    """A copy of the rule reading document fields; strict: unroutable or unmapped raises, naming the fields."""
    routing = classify(rule)
    if routing.rule_class is not RuleClass.MAPPED:
        raise SigmaCompileError(rule_name(rule), routing.reason)
    mapped = copy.deepcopy(rule)
    for item in detection_items(mapped):
        if item.field is not None:
            item.field = routing.fields[item.field]
        for value in item.value:
            if isinstance(value, SigmaFieldReference):
                value.field = routing.fields[value.field]
    return mapped, routing


@dataclass(frozen=True)
class RoutedRule:
    """A compiled rule over flattened documents of its route (per record for auditd, see the module doc)."""

    compiled: CompiledRule
    routing: Routing


def compile_routed(rule: SigmaRule, placeholders: Placeholders | None = None) -> RoutedRule:
    """Map then compile; both failures are SigmaCompileErrors naming the rule, so callers report them alike."""
    mapped, routing = map_rule(rule)
    return RoutedRule(compile_rule(mapped, placeholders), routing)
