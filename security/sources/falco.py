"""Falco alerts as JSON: what Falco's ``json_output`` writes to ``file_output``/``stdout_output``/``http_output``,
and what Falcosidekick's webhook output posts (the same object: its ``FalcoPayload`` has ``uuid``, ``output``,
``priority``, ``rule``, ``time``, ``output_fields``, ``source``, ``tags``, ``hostname``; it renames no key, so
there is no ``outputfields`` variant to accept).

The whole alert is kept under ``falco`` with ``output_fields`` as Falco wrote them (dotted keys such as
``proc.cmdline`` stay keys of ``falco.output_fields``), so rules written against Falco's field names keep
working; the well-known fields are copied to ECS. A line must carry what makes it a Falco alert, as Falcosidekick
also checks: ``time``, ``rule`` and a known ``priority``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from control_plane.core.clock import parse_rfc3339, rfc3339
from security.ecs import ip as ecs_ip
from security.ecs import put
from security.sources.base import Adapter, Line, Rejected

SEVERITY = {
    "emergency": 0,
    "alert": 1,
    "critical": 2,
    "error": 3,
    "warning": 4,
    "notice": 5,
    "informational": 6,
    "info": 6,
    "debug": 7,
}
"""Falco priority -> ``event.severity``: Falco's priorities are the syslog severities, so their numbers (lower is
more severe, as Suricata's)."""

OUTPUT_FIELDS = {
    "evt.type": "event.action",
    "proc.name": "process.name",
    "proc.exepath": "process.executable",
    "proc.cmdline": "process.command_line",
    "proc.pid": "process.pid",
    "proc.cwd": "process.working_directory",
    "proc.pname": "process.parent.name",
    "proc.ppid": "process.parent.pid",
    "proc.pcmdline": "process.parent.command_line",
    "user.name": "user.name",
    "user.uid": "user.id",
    "group.name": "user.group.name",
    "group.gid": "user.group.id",
    "container.id": "container.id",
    "container.name": "container.name",
    "container.image.repository": "container.image.name",
    "container.image.tag": "container.image.tag",
    "k8s.ns.name": "orchestrator.namespace",
    "k8s.pod.name": "orchestrator.resource.name",
    "fd.filename": "file.name",
    "fd.directory": "file.directory",
    "fd.l4proto": "network.transport",
    "ka.verb": "event.action",
    "ka.user.name": "user.name",
    "ka.target.resource": "orchestrator.resource.type",
    "ka.target.name": "orchestrator.resource.name",
    "ka.target.namespace": "orchestrator.namespace",
    "ka.uri": "url.original",
    "ka.useragent": "user_agent.original",
    "ka.response.code": "http.response.status_code",
}
"""Falco output field -> ECS field, for the fields Falco's default rules print (syscall and k8saudit sources).
``fd.name`` is handled apart: it names a file or a connection."""

_INTEGERS = frozenset({"process.pid", "process.parent.pid", "http.response.status_code"})
_KEYWORDS = frozenset({"user.id", "user.group.id"})

_TAG_CATEGORIES = {"filesystem": "file", "process": "process", "network": "network"}

_INTERNAL = "Falco internal:"
"""Rules Falco reports its own health with (metrics snapshots, dropped syscall events): not detections."""
_METRICS_RULE = f"{_INTERNAL} metrics snapshot"

_MISSING = "<NA>"
"""How Falco renders a field it could not resolve."""


class FalcoAdapter(Adapter):
    """Falco JSON alerts, one per line (Falco itself) or one per request (Falcosidekick's webhook)."""

    name: ClassVar[str] = "falco"
    dataset: ClassVar[str] = "falco.alerts"

    def normalise(self, line: Line) -> list[dict[str, Any]]:
        alert = line.value
        if not isinstance(alert, dict):
            raise Rejected(f"a Falco alert is a JSON object, not a JSON {type(alert).__name__}")
        rule, time, priority = alert.get("rule"), alert.get("time"), alert.get("priority")
        if not isinstance(rule, str) or not rule:
            raise Rejected("Falco alert without a rule")
        if not isinstance(time, str):
            raise Rejected(f"Falco alert of rule {rule!r} without a time")
        try:
            moment = rfc3339(parse_rfc3339(time))
        except ValueError:
            raise Rejected(f"Falco time {time!r} is not an RFC 3339 time") from None
        if not isinstance(priority, str) or priority.lower() not in SEVERITY:
            raise Rejected(f"Falco alert of rule {rule!r} with an unknown priority {priority!r}")

        doc: dict[str, Any] = {"@timestamp": moment}
        if rule.startswith(_INTERNAL):
            put(doc, "event.kind", "metric" if rule == _METRICS_RULE else "event")
        else:
            put(doc, "event.kind", "alert")
            put(doc, "event.category", _categories(alert))
        put(doc, "event.type", ["info"])
        put(doc, "event.severity", SEVERITY[priority.lower()])
        put(doc, "event.module", "falco")
        put(doc, "event.id", alert.get("uuid"))  # Falcosidekick's id; Falco itself has none
        put(doc, "event.original", line.text)
        put(doc, "message", alert.get("output"))
        put(doc, "rule.name", rule)
        put(doc, "host.name", alert.get("hostname"))
        fields = alert.get("output_fields")
        if isinstance(fields, dict):
            _map_output_fields(doc, fields)
        put(doc, "falco", alert)
        return [doc]


def _categories(alert: dict[str, Any]) -> list[str]:
    """A detection, plus what its rule's tags and its event source say it is about."""
    tags = alert.get("tags")
    tags = tags if isinstance(tags, list) else []
    categories = [
        "intrusion_detection",
        *sorted({_TAG_CATEGORIES[tag] for tag in tags if tag in _TAG_CATEGORIES}),
    ]
    if alert.get("source") == "k8s_audit":
        categories.append("api")
    return categories


def _map_output_fields(doc: dict[str, Any], fields: dict[str, Any]) -> None:
    for falco_field, ecs_field in OUTPUT_FIELDS.items():
        value = fields.get(falco_field)
        if value is None or value == _MISSING:
            continue
        if ecs_field in _INTEGERS:
            try:
                value = int(value)
            except (TypeError, ValueError):
                continue
        elif ecs_field in _KEYWORDS:
            value = str(value)
        put(doc, ecs_field, value)
    if "k8s.pod.name" in fields and "ka.target.resource" not in fields:
        put(doc, "orchestrator.resource.type", "pod")
    if any(key.startswith(("k8s.", "ka.")) for key in fields):
        put(doc, "orchestrator.type", "kubernetes")
    fd_name = fields.get("fd.name")
    if isinstance(fd_name, str) and fd_name != _MISSING:
        _map_fd_name(doc, fd_name)


def _map_fd_name(doc: dict[str, Any], fd_name: str) -> None:
    """``fd.name`` is ``client:port->server:port`` for a connection, a path for a file."""
    if "->" in fd_name:
        client, _, server = fd_name.partition("->")
        _endpoint(doc, "source", client)
        _endpoint(doc, "destination", server)
    elif fd_name.startswith("/"):
        put(doc, "file.path", fd_name)


def _endpoint(doc: dict[str, Any], side: str, address: str) -> None:
    host, _, port = address.rpartition(":")  # IPv6 addresses hold colons too: the port is after the last one
    ip = ecs_ip(host.strip("[]"))
    if ip is None:
        return
    put(doc, f"{side}.ip", ip)
    if port.isdigit():
        put(doc, f"{side}.port", int(port))
