"""Wazuh alerts (``alerts.json`` lines, or the same alert as the Wazuh indexer returns it) to ECS.

A line is one alert as ``wazuh-analysisd`` writes it to ``/var/ossec/logs/alerts/alerts.json``: ``timestamp``
(``2022-05-11T12:29:19.905+0000``), ``rule`` (``id``, ``level``, ``description``, ``groups``, ``mitre``, the
``pci_dss`` / ``gdpr`` / ``hipaa`` / ``nist_800_53`` / ``tsc`` compliance mappings, ``firedtimes``), ``agent``
(``id``, ``name``, ``ip``), ``manager``, ``decoder``, ``predecoder``, ``location``, ``full_log``, ``data.*`` and
``id``. An OpenSearch hit from the Wazuh indexer (``{"_index": "wazuh-alerts-...", "_source": {alert}}``) is
unwrapped first, so an export from the indexer ingests like the file it was indexed from.

The whole alert is kept under ``wazuh.*``; ECS gets what detection rules and dashboards need: ``rule.*``,
``event.severity`` (the rule level, 0-15), ``host.*`` from the agent, ``source.*`` / ``destination.*`` /
``user.*`` from the decoded ``data``, ``threat.*`` from the MITRE mapping, and ``event.category`` / ``type`` /
``outcome`` from the rule groups where the group says it plainly (table ``_GROUPS``).

Identity: an alert id (``1652272159.1549653``: epoch seconds and the alert's byte offset in ``alerts.json``) is
unique on one manager only: two managers, or two nodes of a cluster, each number their own file. ``event.id`` is
therefore ``<manager.name>:<id>``, and the bare id when an alert names no manager. Re-ingesting the same alert
gives the same id; the same alert id from another manager stays a different event.

References: the samples under ``../shared/data/wazuh-ruleset-tests`` (wazuh/wazuh v4.14.7 integratord cases) and
``../shared/data/wazuh-indexer`` (an indexed alert), and the Wazuh rule groups in ``ruleset/rules/*.xml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from control_plane.core import clock
from security.ecs import get, put
from security.ecs import ip as ecs_ip
from security.sources.base import Adapter, Line, Rejected

_GroupMapping = tuple[tuple[str, ...], tuple[str, ...], str | None]

_GROUPS: dict[str, _GroupMapping] = {
    # rule group: (event.category, event.type, event.outcome)
    "authentication_success": (("authentication",), ("start",), "success"),
    "authentication_failed": (("authentication",), ("start",), "failure"),
    "authentication_failures": (("authentication",), ("start",), "failure"),
    "invalid_login": (("authentication",), ("start",), "failure"),
    "win_authentication_failed": (("authentication",), ("start",), "failure"),
    "adduser": (("iam",), ("user", "creation"), None),
    "addgroup": (("iam",), ("group", "creation"), None),
    "account_changed": (("iam",), ("user", "change"), None),
    "syscheck": (("file",), ("change",), None),
    "attack": (("intrusion_detection",), ("info",), None),
    "ids": (("intrusion_detection",), ("info",), None),
    "web": (("web",), ("access",), None),
    "firewall": (("network",), ("connection",), None),
    "vulnerability-detector": (("vulnerability",), ("info",), None),
    "sca": (("configuration",), ("info",), None),
}
"""Rule groups whose meaning is unambiguous; other groups add nothing (the alert still has ``event.kind``)."""

_SYSCHECK_EVENTS = {"added": "creation", "modified": "change", "deleted": "deletion"}
_ALERT_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f%z"


class WazuhAdapter(Adapter):
    name: ClassVar[str] = "wazuh"
    dataset: ClassVar[str] = "wazuh.alerts"
    framing: ClassVar[Literal["json", "text"]] = "json"

    def normalise(self, line: Line) -> list[dict[str, Any]]:
        alert = _unwrap(line.value)
        rule = alert.get("rule")
        if not isinstance(rule, Mapping) or not rule:
            raise Rejected("Wazuh alert without a rule object")
        if _is_blank(alert.get("timestamp")):
            raise Rejected("Wazuh alert without a timestamp")
        moment = _parse_alert_time(alert["timestamp"])

        doc: dict[str, Any] = {"@timestamp": clock.rfc3339(moment)}
        put(doc, "event.kind", "alert")
        put(doc, "event.module", "wazuh")
        put(doc, "event.original", line.text)
        put(doc, "event.id", _alert_event_id(alert))
        _put_rule(doc, rule)
        _put_groups(doc, alert, rule)
        _put_host(doc, alert)
        _put_data(doc, alert)
        put(doc, "message", alert.get("full_log"))
        location = alert.get("location")
        if isinstance(location, str) and location.startswith("/"):
            put(doc, "log.file.path", location)
        doc["wazuh"] = dict(alert)
        return [doc]


def _unwrap(value: Any) -> Mapping[str, Any]:
    """The alert itself: the value, or the ``_source`` of an indexer hit."""
    if isinstance(value, Mapping) and isinstance(value.get("_source"), Mapping) and "_index" in value:
        value = value["_source"]
    if not isinstance(value, Mapping):
        raise Rejected("a Wazuh alert must be a JSON object")
    return value


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _parse_alert_time(text: Any) -> datetime:
    """Wazuh writes ``2022-05-11T12:29:19.905+0000``; exporters may have rewritten it as RFC 3339."""
    if not isinstance(text, str):
        raise Rejected(f"Wazuh alert timestamp is not a string: {text!r}")
    try:
        return datetime.strptime(text, _ALERT_TIME_FORMAT).astimezone(UTC)
    except ValueError:
        pass
    try:
        return clock.parse_rfc3339(text)
    except ValueError:
        raise Rejected(f"unreadable Wazuh alert timestamp {text!r}") from None


def _alert_event_id(alert: Mapping[str, Any]) -> str | None:
    """``<manager.name>:<alert id>``: alert ids are only unique per manager (see the module docstring)."""
    alert_id = alert.get("id")
    if _is_blank(alert_id):
        return None
    manager = get(alert, "manager.name")
    return f"{manager}:{alert_id}" if isinstance(manager, str) and manager else str(alert_id)


def _put_rule(doc: dict[str, Any], rule: Mapping[str, Any]) -> None:
    put(doc, "rule.id", None if rule.get("id") is None else str(rule["id"]))
    put(doc, "rule.name", rule.get("description"))
    put(doc, "rule.description", rule.get("description"))
    put(doc, "rule.ruleset", "wazuh")
    put(doc, "event.severity", _as_int(rule.get("level")))
    mitre = rule.get("mitre")
    if isinstance(mitre, Mapping):
        put(doc, "threat.framework", "MITRE ATT&CK")
        put(doc, "threat.technique.id", _as_list(mitre.get("id")))
        put(doc, "threat.technique.name", _as_list(mitre.get("technique")))
        put(doc, "threat.tactic.name", _as_list(mitre.get("tactic")))


def _put_groups(doc: dict[str, Any], alert: Mapping[str, Any], rule: Mapping[str, Any]) -> None:
    categories: list[str] = []
    types: list[str] = []
    outcome: str | None = None
    for group in _as_list(rule.get("groups")):
        category, kinds, group_outcome = _GROUPS.get(str(group), ((), (), None))
        categories += [value for value in category if value not in categories]
        types += [value for value in kinds if value not in types]
        outcome = outcome or group_outcome
    syscheck_event = get(alert, "syscheck.event")
    if isinstance(syscheck_event, str) and syscheck_event in _SYSCHECK_EVENTS:
        types = [_SYSCHECK_EVENTS[syscheck_event] if kind == "change" else kind for kind in types]
        put(doc, "event.action", syscheck_event)
    else:
        action = get(alert, "data.action")
        put(doc, "event.action", action if isinstance(action, str) else None)
    put(doc, "event.category", categories)
    put(doc, "event.type", types)
    put(doc, "event.outcome", outcome)


def _put_host(doc: dict[str, Any], alert: Mapping[str, Any]) -> None:
    put(doc, "host.name", get(alert, "agent.name"))
    agent_ip = ecs_ip(get(alert, "agent.ip"))
    put(doc, "host.ip", [agent_ip] if agent_ip else None)


def _put_data(doc: dict[str, Any], alert: Mapping[str, Any]) -> None:
    """ECS fields from the decoder's ``data``; malformed values stay native only (``wazuh.data.*``)."""
    data = alert.get("data")
    if not isinstance(data, Mapping):
        return
    put(doc, "source.ip", ecs_ip(data.get("srcip")))
    put(doc, "source.port", _port(data.get("srcport")))
    put(doc, "destination.ip", ecs_ip(data.get("dstip")))
    put(doc, "destination.port", _port(data.get("dstport")))
    put(doc, "url.original", data.get("url"))
    source_user, target_user = data.get("srcuser"), data.get("dstuser")
    # sshd and PAM decode the account that logs in as dstuser; sudo and su decode "srcuser ran as dstuser".
    put(doc, "user.name", source_user or target_user)
    if source_user and target_user and source_user != target_user:
        put(doc, "user.effective.name", target_user)


def _port(value: Any) -> int | None:
    number = _as_int(value)
    return number if number is not None and 0 <= number <= 65535 else None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
